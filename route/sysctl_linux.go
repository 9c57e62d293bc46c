package route

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
)

// deviceSysctls are the settings the TUN needs, keyed by path under
// /proc/sys with %s for the device name. They are per device only.
//
// rp_filter is left alone, on measurement (Linux 6.18, scratch namespace, a
// TUN that writes every packet straight back, ping): with rp_filter=1 or 2 on
// all, on default, on the device, or on all three, ping worked for
// 127.0.0.0/8 and for 127.77.0.0/16 with a source inside it. The reverse-path check of a packet from the TUN
// looks its source up as output traffic (iif lo), which takes our rule and
// resolves to the TUN itself, the device the packet came in on. Only a
// source outside the prefix (127.0.0.1 for a 127.77.0.0/16 takeover) is
// dropped (IPReversePathFilter counts it), whatever the device's own value,
// since the kernel uses max(all, device); Config.source avoids that case.
var deviceSysctls = []struct{ key, val string }{
	// Turn IPv6 off first, before the device goes up: we carry no IPv6 over
	// the TUN (the kernel drops ::1 from non-loopback devices), and an IPv6
	// device sends router solicitations and MLD reports into the stack.
	{"net/ipv6/conf/%s/disable_ipv6", "1"},
	// Without it ip_route_input_slow treats 127/8 on a non-lo device as
	// martian, source or destination.
	{"net/ipv4/conf/%s/route_localnet", "1"},
	// fib_validate_source drops packets from outside whose source is a local
	// address unless accept_local is set or, with policy rules present, the
	// reverse lookup gives a unicast route through the arriving device. Ours
	// does for sources inside the prefix (measured: ping works without it),
	// so this covers sources outside it, e.g. a client bound to 127.0.0.1
	// talking to 127.77.0.0/16.
	{"net/ipv4/conf/%s/accept_local", "1"},
}

// snapshotSysctls are the global and lo settings a takeover must not change.
var snapshotSysctls = func() []string {
	var keys []string
	for _, dev := range []string{"all", "default", "lo"} {
		for _, name := range []string{"route_localnet", "accept_local", "rp_filter"} {
			keys = append(keys, path.Join("net/ipv4/conf", dev, name))
		}
	}
	return keys
}()

// readSysctl reads /proc/sys/<key> in the calling thread's network
// namespace. Equivalent to: sysctl -n <key>
func readSysctl(key string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		return "", fmt.Errorf("reading sysctl: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writeSysctl refuses conf/all: the kernel ORs all with the device's value
// for route_localnet, and route_localnet on all let neighbours reach
// 127.0.0.1 services (CVE-2020-8558, kube-proxy).
func writeSysctl(key, val string) error {
	if strings.Contains(key, "/conf/all/") {
		return fmt.Errorf("writing sysctl %s: refusing to change conf/all", key)
	}
	f, err := os.OpenFile("/proc/sys/"+key, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("writing sysctl: %w", err)
	}
	_, err = f.WriteString(val)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing sysctl %s=%s: %w", key, val, err)
	}
	return nil
}

// setSysctl sets key to val if it differs, and returns how to put the old
// value back (nil if nothing changed). Equivalent to: sysctl -w <key>=<val>
func setSysctl(key, val string) (undo func() error, err error) {
	old, err := readSysctl(key)
	if err != nil || old == val {
		return nil, err
	}
	if err := writeSysctl(key, val); err != nil {
		return nil, err
	}
	return func() error {
		err := writeSysctl(key, old)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // the device is gone, and its settings with it
		}
		return err
	}, nil
}
