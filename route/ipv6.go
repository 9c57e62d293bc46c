package route

import "net/netip"

// DefaultIPv6 is the prefix that carries ::1 through the device: a ULA /64
// ("fd" followed by "uloop" in ASCII, 75 6c 6f 6f 70). The socket hooks
// rewrite ::1 into it and show every address of it as ::1, so it must serve
// nothing else.
var DefaultIPv6 = netip.MustParsePrefix("fd75:6c6f:6f70::/64")

// IPv6Kernel is the kernel's address on the device, the first of c.IPv6:
// the source of every steered connection, and where the stack reaches the
// kernel's servers (listeners on [::] accept there).
func (c Config) IPv6Kernel() netip.Addr { return c.IPv6.Addr().Next() }

// IPv6Stack is the address the socket hooks send ::1 traffic to, the
// second of c.IPv6. The kernel routes it to the device (it is not local),
// where the stack accepts it.
func (c Config) IPv6Stack() netip.Addr { return c.IPv6Kernel().Next() }

// sysctls are the device's settings for c: DeviceSysctls, with IPv6 left
// on and no link-local address generated when c carries IPv6 (the device
// needs only IPv6Kernel, and a link-local address would send router
// solicitations into the stack).
func (c Config) sysctls() []Sysctl {
	out := DeviceSysctls(c.Device)
	if !c.IPv6.IsValid() {
		return out
	}
	for i, s := range out {
		if s.Key == "net/ipv6/conf/"+c.Device+"/disable_ipv6" {
			out[i].Value = "0"
		}
	}
	return append([]Sysctl{{"net/ipv6/conf/" + c.Device + "/addr_gen_mode", "1"}}, out...)
}
