package sockhook

import (
	"encoding/binary"
	"net/netip"

	"github.com/cilium/ebpf/asm"
)

// Offsets in the kernel's context structures (include/uapi/linux/bpf.h),
// which are part of its ABI.
const (
	// struct bpf_sock_addr
	addrUserIP6   = 8  // __u32 user_ip6[4], network byte order
	addrUserPort  = 24 // __u32 user_port, network byte order in its first two bytes
	addrProtocol  = 36 // __u32 protocol
	addrMsgSrcIP6 = 44 // __u32 msg_src_ip6[4] (sendmsg: the source a control message asks for)
	addrSk        = 64 // struct bpf_sock *sk

	// struct bpf_sock
	sockMark   = 16 // __u32 mark
	sockSrcIP6 = 28 // __u32 src_ip6[4]

	// struct bpf_sock_ops
	opsOp        = 0  // __u32 op
	opsLocalIP6  = 48 // __u32 local_ip6[4]
	opsLocalPort = 68 // __u32 local_port, host byte order
	opTCPListen  = 11 // BPF_SOCK_OPS_TCP_LISTEN_CB

	// struct bpf_sk_lookup
	lookupProtocol  = 12 // __u32 protocol
	lookupLocalIP6  = 44 // __u32 local_ip6[4]
	lookupRemoteIP6 = 20 // __u32 remote_ip6[4]
	lookupLocalPort = 60 // __u32 local_port, host byte order
	lookupIfindex   = 64 // __u32 ingress_ifindex

	// struct bpf_sock_tuple, its ipv6 member: saddr[4], daddr[4], sport, dport
	tupleSize = 36
)

const (
	ipprotoTCP = 6
	ipprotoUDP = 17
	// loopbackIfindex is lo's ifindex in every network namespace.
	loopbackIfindex = 1
)

// offMap is the symbol of the one-entry ARRAY whose value, once not 0,
// stops steering (see HandBack).
const offMap = "off"

// listenersMap is the symbol of the SOCKHASH of TCP listeners bound to
// exactly [::1] in the namespace, keyed by port (host byte order): the
// listen hook fills it, the kernel drops a socket from it when it closes.
const listenersMap = "listeners"

// words returns a's 16 bytes as the four 32-bit words a program loads from
// a __u32[4] holding them in network byte order (little-endian loads here).
func words(a netip.Addr) [4]int32 {
	b := a.As16()
	var w [4]int32
	for i := range w {
		w[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return w
}

var loopbackWords = words(netip.IPv6Loopback())

// params are the constants the programs are built with.
type params struct {
	cookie uint64     // the namespace served: its SO_NETNS_COOKIE
	mark   uint32     // sockets carrying this SO_MARK are never steered
	prefix [2]int32   // the /64 hidden as ::1: its first two words
	target netip.Addr // where ::1 is steered: the stack's address
	kernel netip.Addr // the kernel's address on the device
	device int        // the device's ifindex
}

// inNamespace starts a program: R6 = ctx, then to "out" unless the socket
// belongs to the namespace served.
func inNamespace(p params) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetNetnsCookie.Call(),
		asm.LoadImm(asm.R1, int64(p.cookie), asm.DWord),
		asm.JNE.Reg(asm.R0, asm.R1, "out"),
	}
}

// isLoopback jumps to notLoopback unless the four words at R off are ::1.
func isLoopback(r asm.Register, off int16, notLoopback string) asm.Instructions {
	var ins asm.Instructions
	for i, w := range loopbackWords {
		ins = append(ins,
			asm.LoadMem(asm.R1, r, off+int16(4*i), asm.Word),
			asm.JNE.Imm32(asm.R1, w, notLoopback),
		)
	}
	return ins
}

// exit is the common end: R0 = 1 (carry on with the call) and exit.
func exit() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
		asm.Return(),
	}
}

// steer is the connect6 and (sendmsg true) sendmsg6 program: it rewrites a
// destination of ::1 to p.target, unless
//   - steering was handed back (the off map, see HandBack),
//   - the socket carries p.mark (uloop's own),
//   - it is bound to ::1 (its packets could not leave lo: the kernel drops
//     ::1 arriving on any other device),
//   - for sendmsg, a control message asks for source ::1 (the same),
//   - a socket bound to exactly [::1] takes the destination port (the
//     stack reaches servers at the kernel's address on the device, where a
//     socket bound to ::1 does not listen; those keep lo), unless it is a
//     TCP listener the listen hook recorded (see listen and lookup).
//
// The last test is a socket lookup as for a packet from ::1 to [::1]:P: it
// finds a listener (TCP) or bound socket (UDP) on [::1]:P or on [::]:P, and
// only the first keeps lo.
func steer(p params, sendmsg bool) asm.Instructions {
	ins := inNamespace(p)
	ins = append(ins,
		// Handed back (a stopped or wedged uloop): steer nothing more.
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(offMap),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.JNE.Imm32(asm.R1, 0, "out"),
	)
	ins = append(ins, isLoopback(asm.R6, addrUserIP6, "out")...)
	ins = append(ins,
		asm.LoadMem(asm.R7, asm.R6, addrSk, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, sockMark, asm.Word),
		asm.JEq.Imm32(asm.R1, int32(p.mark), "out"),
	)
	ins = append(ins, isLoopback(asm.R7, sockSrcIP6, "not_bound")...)
	ins = append(ins, asm.Ja.Label("out"))
	next := "not_bound"
	if sendmsg {
		ins = append(ins, asm.Mov.Reg(asm.R7, asm.R6).WithSymbol(next))
		ins = append(ins, isLoopback(asm.R7, addrMsgSrcIP6, "no_src")...)
		ins = append(ins, asm.Ja.Label("out"))
		next = "no_src"
	}
	// The tuple on the stack at R10-40: saddr ::1, daddr ::1, sport 0,
	// dport the destination's port.
	ins = append(ins, asm.Mov.Imm(asm.R1, 0).WithSymbol(next))
	for i, w := range loopbackWords {
		ins = append(ins,
			asm.Mov.Imm32(asm.R1, w),
			asm.StoreMem(asm.RFP, int16(-40+4*i), asm.R1, asm.Word),
			asm.StoreMem(asm.RFP, int16(-24+4*i), asm.R1, asm.Word),
		)
	}
	ins = append(ins,
		// user_port's first two bytes are the port; sport (0) and dport
		// share the tuple's last word.
		asm.LoadMem(asm.R1, asm.R6, addrUserPort, asm.Word),
		asm.LSh.Imm(asm.R1, 16),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.Word),
		asm.LoadMem(asm.R7, asm.R6, addrProtocol, asm.Word),
		// A TCP listener on [::1]:P that the listen hook recorded is
		// reached through the device all the same: the lookup hook hands
		// it the stack's connections to the kernel's address.
		asm.JEq.Imm32(asm.R7, ipprotoUDP, "lookup"),
		asm.LoadMem(asm.R1, asm.R6, addrUserPort, asm.Word),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, -44, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(listenersMap),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -44),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "lookup"),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.FnSkRelease.Call(),
		asm.Ja.Label("rewrite"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("lookup"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -40),
		asm.Mov.Imm(asm.R3, tupleSize),
		asm.Mov.Imm(asm.R4, -1), // BPF_F_CURRENT_NETNS
		asm.Mov.Imm(asm.R5, 0),
		asm.JEq.Imm32(asm.R7, ipprotoUDP, "udp"),
		asm.FnSkLookupTcp.Call(),
		asm.Ja.Label("found"),
		asm.FnSkLookupUdp.Call().WithSymbol("udp"),
		asm.JEq.Imm(asm.R0, 0, "rewrite").WithSymbol("found"),
		// Keep what decides in R7, R8 across the release.
		asm.LoadMem(asm.R7, asm.R0, sockSrcIP6, asm.Word),
		asm.LoadMem(asm.R8, asm.R0, sockSrcIP6+12, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.FnSkRelease.Call(),
		asm.JNE.Imm32(asm.R7, loopbackWords[0], "rewrite"),
		asm.JEq.Imm32(asm.R8, loopbackWords[3], "out"),
	)
	for i, w := range words(p.target) {
		sym := ""
		if i == 0 {
			sym = "rewrite"
		}
		mov := asm.Mov.Imm32(asm.R1, w)
		if sym != "" {
			mov = mov.WithSymbol(sym)
		}
		ins = append(ins, mov, asm.StoreMem(asm.R6, int16(addrUserIP6+4*i), asm.R1, asm.Word))
	}
	return append(ins, exit()...)
}

// unhide is the getpeername6, getsockname6 and recvmsg6 program: it shows
// every address of the prefix as ::1, so that both programs see on their
// sockets what they would see on lo.
func unhide(p params) asm.Instructions {
	ins := inNamespace(p)
	ins = append(ins,
		asm.LoadMem(asm.R1, asm.R6, addrUserIP6, asm.Word),
		asm.JNE.Imm32(asm.R1, p.prefix[0], "out"),
		asm.LoadMem(asm.R1, asm.R6, addrUserIP6+4, asm.Word),
		asm.JNE.Imm32(asm.R1, p.prefix[1], "out"),
	)
	for i, w := range loopbackWords {
		ins = append(ins,
			asm.Mov.Imm32(asm.R1, w),
			asm.StoreMem(asm.R6, int16(addrUserIP6+4*i), asm.R1, asm.Word),
		)
	}
	return append(ins, exit()...)
}

// listen is the sock_ops program: when a TCP socket of the namespace bound
// to exactly [::1] starts listening, it records it in the listeners map
// under its port. The kernel refuses sockets it cannot hold there (MPTCP
// listeners, whose subflow carries a ULP); those are not recorded and keep
// lo (see steer).
func listen(p params) asm.Instructions {
	ins := inNamespace(p)
	ins = append(ins,
		asm.LoadMem(asm.R1, asm.R6, opsOp, asm.Word),
		asm.JNE.Imm32(asm.R1, opTCPListen, "out"),
	)
	ins = append(ins, isLoopback(asm.R6, opsLocalIP6, "out")...)
	ins = append(ins,
		asm.LoadMem(asm.R1, asm.R6, opsLocalPort, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(listenersMap),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -4),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnSockHashUpdate.Call(),
	)
	return append(ins, exit()...)
}

// lookup is the sk_lookup program of the namespace: a TCP segment that
// arrives on the device for the kernel's address there, port P, goes to the
// listener on [::1]:P the listen hook recorded, if any; otherwise the kernel
// looks up its sockets as usual. So the stack's connection for a client of
// [::1]:P reaches a server bound to ::1, which it could not otherwise. Only
// segments from the device: only uloop writes there, whereas a neighbour
// that routes the address here over another interface must not reach what
// is bound to ::1 (the IPv6 form of CVE-2020-8558).
//
// It also drops what arrives from elsewhere (neither the device nor lo,
// which carries only the namespace's own packets) from or to an address
// of the /64: the hooks show every such address as ::1, so a datagram from
// a neighbour claiming one would look to a server as if from ::1.
func lookup(p params) asm.Instructions {
	ins := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R1, asm.R6, lookupIfindex, asm.Word),
		asm.JEq.Imm32(asm.R1, int32(p.device), "from_device"),
		asm.JEq.Imm32(asm.R1, loopbackIfindex, "out"),
		asm.LoadMem(asm.R1, asm.R6, lookupRemoteIP6, asm.Word),
		asm.JNE.Imm32(asm.R1, p.prefix[0], "to_prefix"),
		asm.LoadMem(asm.R1, asm.R6, lookupRemoteIP6+4, asm.Word),
		asm.JEq.Imm32(asm.R1, p.prefix[1], "drop"),
		asm.LoadMem(asm.R1, asm.R6, lookupLocalIP6, asm.Word).WithSymbol("to_prefix"),
		asm.JNE.Imm32(asm.R1, p.prefix[0], "out"),
		asm.LoadMem(asm.R1, asm.R6, lookupLocalIP6+4, asm.Word),
		asm.JNE.Imm32(asm.R1, p.prefix[1], "out"),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("drop"), // SK_DROP
		asm.Return(),
		asm.LoadMem(asm.R1, asm.R6, lookupProtocol, asm.Word).WithSymbol("from_device"),
		asm.JNE.Imm32(asm.R1, ipprotoTCP, "out"),
	}
	for i, w := range words(p.kernel) {
		ins = append(ins,
			asm.LoadMem(asm.R1, asm.R6, int16(lookupLocalIP6+4*i), asm.Word),
			asm.JNE.Imm32(asm.R1, w, "out"),
		)
	}
	ins = append(ins,
		asm.LoadMem(asm.R1, asm.R6, lookupLocalPort, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(listenersMap),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkAssign.Call(),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.FnSkRelease.Call(),
	)
	return append(ins, exit()...) // SK_PASS
}
