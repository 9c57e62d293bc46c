package stack

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpRcvBuf is the receive buffer of each UDP endpoint of a relayed flow.
// gVisor's default (about 200 KiB) drops bursts of large datagrams that the
// kernel's lo would still have room for at its wider defaults.
const udpRcvBuf = 1 << 20

// relay terminates the flows the kernel sends into the stack and carries
// each to the local program it was meant for.
//
// A flow from a client at C to a server at S is accepted in the stack as
// endpoint A (local S, remote C) and relayed over endpoint B, which the
// stack dials from C to S through the same TUN device (the mirrored tuple).
// The kernel sees only the client's socket and the server's, as on lo.
//
// A UDP socket that sends to its own address and port is a flow whose client
// and server are the same socket, so its mirrored tuple is the flow's own:
// there is no second endpoint to dial. The stack still terminates it as A
// and sends back on A what A receives, so the socket reads what it wrote, as
// on lo. (A TCP socket connected to itself never reaches the relay: see
// classify.)
type relay struct {
	gv      *stack.Stack
	cfg     Config
	metrics *Metrics
	log     *slog.Logger
	bufs    sync.Pool
	// udpGSO is told when a UDP pump drains, so that it can write the
	// datagrams of one drain together; nil if the device cannot.
	udpGSO *udpGSO

	// wg counts the relay's goroutines.
	wg sync.WaitGroup
	// flowCount is the number of flows relayed or being set up, held
	// under cfg.MaxFlows by admit and release.
	flowCount atomic.Int64

	mu sync.Mutex
	// flows are the live flows, so close can end them.
	// +checklocks:mu
	flows map[flow]struct{}
	// closed is set by close; no flow is tracked after it.
	// +checklocks:mu
	closed bool
	// closing is closed by close, to stop connects being dialed.
	closing chan struct{}
}

// flow is a relayed TCP connection or UDP flow.
type flow interface {
	// abort ends the flow at once (a RST to both peers for TCP).
	abort()
	// info describes the flow now.
	info() Flow
}

// flowStats is what every flow counts: when it started and the bytes
// relayed each way, [0] from the client to the server, [1] back. One atomic
// add per copy (up to relayBufferSize bytes), not per packet.
type flowStats struct {
	start time.Time
	bytes [2]atomic.Uint64
}

// count adds n bytes read from src, one end of the flow whose client-facing
// end is a.
func (s *flowStats) count(a, src conn, n int) {
	dir := 1
	if src == a {
		dir = 0
	}
	s.bytes[dir].Add(uint64(n)) // n < 0 takes back, in two's complement
}

func (s *flowStats) info(proto string, client, server tcpip.FullAddress) Flow {
	return Flow{
		Proto:  proto,
		Client: addrPort(client), Server: addrPort(server),
		Start:          s.start,
		ClientToServer: s.bytes[0].Load(),
		ServerToClient: s.bytes[1].Load(),
	}
}

func newRelay(gv *stack.Stack, cfg Config) *relay {
	r := &relay{gv: gv, cfg: cfg, metrics: cfg.Metrics, log: cfg.Logger, flows: make(map[flow]struct{}), closing: make(chan struct{})}
	r.bufs.New = func() any { b := make([]byte, relayBufferSize); return &b }
	if cfg.Impair != nil {
		cfg.Impair.Watch(r.rearmResets)
	}
	return r
}

// track registers f; it returns false once the relay is closing.
func (r *relay) track(f flow) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.flows[f] = struct{}{}
	return true
}

// enter counts a forwarder handler in wg so that close waits for it; false
// means the relay is closing and the handler must refuse its flow.
func (r *relay) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

// admit reserves room for one more flow; false means the limit is reached
// and the caller must refuse the flow.
func (r *relay) admit() bool {
	if r.flowCount.Add(1) > int64(r.cfg.MaxFlows) {
		r.flowCount.Add(-1)
		r.metrics.FlowsRejected.Add(1)
		return false
	}
	return true
}

// release gives back what admit reserved.
func (r *relay) release() { r.flowCount.Add(-1) }

func (r *relay) untrack(f flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.flows, f)
}

// list describes every live flow.
func (r *relay) list() []Flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	flows := make([]Flow, 0, len(r.flows))
	for f := range r.flows {
		flows = append(flows, f.info())
	}
	return flows
}

func addrPort(a tcpip.FullAddress) netip.AddrPort {
	addr, _ := netip.AddrFromSlice(a.Addr.AsSlice())
	return netip.AddrPortFrom(addr, a.Port)
}

// close aborts every flow and waits for the relay's goroutines.
func (r *relay) close() {
	r.mu.Lock()
	r.closed = true
	close(r.closing)
	flows := make([]flow, 0, len(r.flows))
	for f := range r.flows {
		flows = append(flows, f)
	}
	r.mu.Unlock()
	for _, f := range flows {
		f.abort()
	}
	r.wg.Wait()
}

// conn is one end of a relayed flow: an endpoint and its event queue.
type conn struct {
	ep tcpip.Endpoint
	wq *waiter.Queue
}

// ends returns a flow's distinct endpoints: one when the flow is
// self-addressed (a == b).
func ends(a, b conn) []conn {
	if a == b {
		return []conn{a}
	}
	return []conn{a, b}
}

// pipes returns the copies that carry a flow, as (src, dst) pairs: both
// directions, or for a self-addressed flow the one loop from a back to a.
func pipes(a, b conn) [][2]conn {
	if a == b {
		return [][2]conn{{a, a}}
	}
	return [][2]conn{{a, b}, {b, a}}
}

// notify registers for mask events on c's queue; the returned func
// unregisters.
func (c conn) notify(mask waiter.EventMask) (<-chan struct{}, func()) {
	entry, ch := waiter.NewChannelEntry(mask)
	c.wq.EventRegister(&entry)
	return ch, func() { c.wq.EventUnregister(&entry) }
}

// read reads what src has received into a copy buffer from the pool, which
// the caller puts back; on error the buffer is already back. Taking it only
// when there is data to move means an idle flow holds none.
func (r *relay) read(src conn) (*[]byte, int, tcpip.Error) {
	bp := r.bufs.Get().(*[]byte)
	w := tcpip.SliceWriter(*bp)
	res, err := src.ep.Read(&w, tcpip.ReadOptions{})
	if err != nil {
		r.bufs.Put(bp)
		return nil, 0, err
	}
	return bp, res.Count, nil
}

// newMirrorEndpoint creates the endpoint that dials the kernel's server on
// behalf of the client: bound to from, the client's own address and port for
// IPv4 (see mirror), which the NIC's spoofing allows. Reuse flags let a
// client port that the kernel shares between destinations (Linux does for
// connect) be bound once per destination.
func (r *relay) newMirrorEndpoint(proto tcpip.TransportProtocolNumber, from tcpip.FullAddress) (conn, tcpip.Error) {
	wq := new(waiter.Queue)
	ep, err := r.gv.NewEndpoint(proto, netProto(from.Addr), wq)
	if err != nil {
		return conn{}, err
	}
	ep.SocketOptions().SetReuseAddress(true)
	ep.SocketOptions().SetReusePort(true)
	if err := ep.Bind(from); err != nil {
		ep.Close()
		return conn{}, err
	}
	return conn{ep: ep, wq: wq}, nil
}

// --- TCP ---

// tcpFlow is a relayed TCP connection.
type tcpFlow struct {
	a, b           conn // a faces the client, b the server
	client, server tcpip.FullAddress
	stats          flowStats
	// reset is set once an impairment rule has reset the flow.
	reset atomic.Bool
	// pipes copy a to b and b to a; open counts those still running.
	pipes [2]tcpPipe
	open  atomic.Int32
}

func (f *tcpFlow) info() Flow {
	fl := f.stats.info("tcp", f.client, f.server)
	fl.State = tcp.EndpointState(f.a.ep.State()).String()
	return fl
}

func (f *tcpFlow) abort() {
	f.a.ep.Abort()
	f.b.ep.Abort()
}

// handleTCP is the TCP forwarder's handler, called on its own goroutine for
// each new SYN. It dials the server first so that a refused connect reaches
// the client as a RST (ECONNREFUSED at once, as on lo), and only then
// completes the client's handshake.
func (r *relay) handleTCP(req *tcp.ForwarderRequest) {
	id := req.ID()
	client := tcpip.FullAddress{Addr: id.RemoteAddress, Port: id.RemotePort}
	server := tcpip.FullAddress{Addr: id.LocalAddress, Port: id.LocalPort}
	if !r.enter() {
		req.Complete(true)
		return
	}
	defer r.wg.Done()
	if !r.admit() {
		req.Complete(true)
		return
	}
	admitted := true
	defer func() {
		if admitted {
			r.release()
		}
	}()

	b, err := r.dialTCP(client, server)
	if err != nil {
		r.metrics.TCPRefused.Add(1)
		r.log.Debug("tcp connect refused", "client", fmtAddr(client), "server", fmtAddr(server), "err", err)
		req.Complete(true)
		return
	}
	aq := new(waiter.Queue)
	aep, err := req.CreateEndpoint(aq)
	if err != nil {
		// The client gave up (or reset) while we dialed.
		req.Complete(true)
		b.ep.Abort()
		b.ep.Close()
		return
	}
	req.Complete(false)
	f := &tcpFlow{a: conn{ep: aep, wq: aq}, b: b, client: client, server: server, stats: flowStats{start: time.Now()}}
	// The kernel peers already decided how to batch their writes; the
	// relay forwards whatever it has at once.
	f.a.ep.SocketOptions().SetDelayOption(false)
	f.b.ep.SocketOptions().SetDelayOption(false)
	if !r.track(f) {
		f.abort()
		f.a.ep.Close()
		f.b.ep.Close()
		return
	}
	admitted = false // released by done
	if rules := r.cfg.Impair.Active(); rules != nil {
		r.armReset(f, rules)
	}
	r.metrics.TCPConnections.Add(1)
	r.metrics.TCPConnectionsActive.Add(1)
	r.wg.Add(2)
	f.open.Store(2)
	f.pipes[0] = tcpPipe{r: r, f: f, dst: f.b, rd: new(bytes.Reader)}
	f.pipes[1] = tcpPipe{r: r, f: f, dst: f.a, rd: new(bytes.Reader)}
	f.pipes[0].start(f.a, &f.pipes[0])
	f.pipes[1].start(f.b, &f.pipes[1])
}

// dialTCP connects the mirrored tuple of a flow from client to server
// through the TUN device and waits for the kernel to answer.
func (r *relay) dialTCP(client, server tcpip.FullAddress) (conn, tcpip.Error) {
	from, to := mirror(client, server)
	r.retireTimeWait(from, to)
	c, err := r.newMirrorEndpoint(tcp.ProtocolNumber, from)
	if err != nil {
		return conn{}, err
	}
	ready, stop := c.notify(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	defer stop()
	err = c.ep.Connect(to)
	if _, ok := err.(*tcpip.ErrConnectStarted); ok {
		timer := time.NewTimer(r.cfg.dialTimeout)
		select {
		case <-ready:
			err = c.ep.LastError()
		case <-timer.C:
			err = &tcpip.ErrTimeout{}
		case <-r.closing:
			err = &tcpip.ErrAborted{}
		}
		timer.Stop()
	}
	if err != nil {
		c.ep.Abort()
		c.ep.Close()
		return conn{}, err
	}
	return c, nil
}

// retireTimeWait ends the stack's endpoint that still holds the tuple from
// -> to in TIME-WAIT from an earlier relayed connection. The kernel
// keeps TIME-WAIT for its own sockets and reuses a loopback port once that
// is safe (tcp_tw_reuse); when it does, the SYN it sends is proof that the
// old connection is over, and the stack's copy of the tuple would otherwise
// make the mirrored connect fail, turning the client's connect into
// ECONNREFUSED. (gVisor's own TIME-WAIT reuse only applies to ephemeral
// ports, and this one is bound explicitly.)
func (r *relay) retireTimeWait(from, to tcpip.FullAddress) {
	id := stack.TransportEndpointID{
		LocalAddress: from.Addr, LocalPort: from.Port,
		RemoteAddress: to.Addr, RemotePort: to.Port,
	}
	ep, ok := r.gv.FindTransportEndpoint(netProto(from.Addr), tcp.ProtocolNumber, id, from.NIC).(*tcp.Endpoint)
	if ok && ep.EndpointState() == tcp.StateTimeWait {
		// The RST this sends finds no kernel socket, or one in TIME-WAIT
		// that the new connection replaces anyway.
		ep.Abort()
	}
}

// tcpPipe copies one direction of a TCP flow, from its pump's src to dst,
// until src's peer closes its write side (then it shuts dst's write side,
// carrying the half-close) or either side fails (then it aborts the flow, so
// a RST on one side becomes a RST on the other).
type tcpPipe struct {
	pump
	r   *relay
	f   *tcpFlow
	dst conn
	// rd hands the data to dst's Write. gVisor's TCP endpoint keeps the
	// last reader it was given (its reusable io.LimitedReader points at
	// it) for as long as the endpoint lives, TIME-WAIT included, so rd is
	// an object of its own, not a field of the flow (which it then kept
	// alive, both endpoints and all, for the second of TIME-WAIT after
	// the flow had closed), and writeAll empties it after writing (or it
	// would pin the relay's copy buffer it last pointed into).
	rd *bytes.Reader
}

func (p *tcpPipe) drain() bool {
	r, f, src, dst := p.r, p.f, p.src, p.dst
	for {
		bp, n, err := r.read(src)
		switch err.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			return false
		case *tcpip.ErrClosedForReceive:
			dst.ep.Shutdown(tcpip.ShutdownWrite)
			return true
		default:
			f.abort()
			return true
		}
		f.stats.count(f.a, src, n)
		if rules := r.cfg.Impair.Active(); rules != nil {
			if keep, rule := f.resetAfterBytes(rules, src, n); rule != nil {
				f.stats.count(f.a, src, keep-n) // what is not relayed is not counted
				writeAll(dst, (*bp)[:keep], p.rd)
				r.bufs.Put(bp)
				r.resetFlow(f, rule, resetSettle)
				return true
			}
		}
		ok := writeAll(dst, (*bp)[:n], p.rd)
		r.bufs.Put(bp)
		if !ok {
			f.abort()
			return true
		}
	}
}

// finish closes the flow once both directions are finished: after a
// half-close the other direction goes on.
func (p *tcpPipe) finish() {
	r, f := p.r, p.f
	if f.open.Add(-1) == 0 {
		f.a.ep.Close()
		f.b.ep.Close()
		r.untrack(f)
		r.release()
		r.metrics.TCPConnectionsActive.Add(-1)
	}
	r.wg.Done()
}

// writeAll writes data into dst's send buffer through rd, waiting for room
// as needed; false means dst failed. It registers for dst's events only once
// dst is full, so that an idle flow holds no waiter entry and channel for
// it, and tries once more after registering: room made in between would
// otherwise wake nobody. rd is empty again when it returns (see tcpPipe).
func writeAll(dst conn, data []byte, rd *bytes.Reader) bool {
	defer rd.Reset(nil)
	var writable <-chan struct{}
	for len(data) > 0 {
		rd.Reset(data)
		n, err := dst.ep.Write(rd, tcpip.WriteOptions{})
		data = data[n:]
		switch err.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			if writable == nil {
				var stop func()
				writable, stop = dst.notify(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
				defer stop()
				continue
			}
			<-writable
		default:
			return false
		}
	}
	return true
}

// --- UDP ---

// udpFlow is a relayed UDP flow; it ends after cfg.UDPIdleTimeout without a
// datagram in either direction.
type udpFlow struct {
	a, b           conn
	client, server tcpip.FullAddress
	timer          *time.Timer
	stats          flowStats

	mu sync.Mutex
	// lastSeen is when a datagram last crossed, either way.
	// +checklocks:mu
	lastSeen time.Time
	// ended is set by the first end.
	// +checklocks:mu
	ended bool
}

func (f *udpFlow) touch() {
	f.mu.Lock()
	f.lastSeen = time.Now()
	f.mu.Unlock()
}

// end closes both endpoints once; it reports whether this call did.
func (f *udpFlow) end() bool {
	f.mu.Lock()
	if f.ended {
		f.mu.Unlock()
		return false
	}
	f.ended = true
	f.mu.Unlock()
	f.timer.Stop()
	for _, c := range ends(f.a, f.b) {
		c.ep.Close()
	}
	return true
}

func (f *udpFlow) abort() { f.end() }

func (f *udpFlow) info() Flow { return f.stats.info("udp", f.client, f.server) }

// handleUDPPacket is the stack's handler for UDP packets that match no
// endpoint: the first datagram of each new flow. It does what
// udp.Forwarder.HandlePacket does minus its extra Clone of the packet, which
// nothing ever releases (CreateEndpoint clones it again for the receive
// queue), and which gVisor's leak checker reports once per flow.
func (r *relay) handleUDPPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	if !r.admit() {
		if pkt.NetworkProtocolNumber == header.IPv6ProtocolNumber {
			r.sendPortUnreachable6(pkt)
		} else {
			r.sendPortUnreachable(pkt)
		}
		return true
	}
	return r.handleUDP(udp.NewForwarderRequest(r.gv, id, pkt))
}

// handleUDP is the UDP forwarder's handler, called inline for the first
// datagram of each flow once admit has reserved room for it; it must not
// block. Returning true keeps the stack
// from answering with an ICMP error of its own: if the kernel has no
// listener, it answers the relayed datagram itself, and that ICMP error
// passes back to the client unchanged. A datagram that a socket sends to its
// own address starts a flow that A loops back to the socket.
func (r *relay) handleUDP(req *udp.ForwarderRequest) bool {
	id := req.ID()
	client := tcpip.FullAddress{Addr: id.RemoteAddress, Port: id.RemotePort}
	server := tcpip.FullAddress{Addr: id.LocalAddress, Port: id.LocalPort}
	self := selfAddressed(client, server)

	var b conn
	if !self {
		var err tcpip.Error
		from, to := mirror(client, server)
		b, err = r.newMirrorEndpoint(udp.ProtocolNumber, from)
		if err == nil {
			if err = b.ep.Connect(to); err != nil {
				b.ep.Close()
			}
		}
		if err != nil {
			r.release()
			r.metrics.DroppedPackets.Add(1)
			r.log.Debug("udp flow not relayed", "client", fmtAddr(client), "server", fmtAddr(server), "err", err)
			return true
		}
	}
	// Register the pipes before CreateEndpoint delivers the first datagram.
	aq := new(waiter.Queue)
	aep, err := req.CreateEndpoint(aq)
	if err != nil {
		if !self {
			b.ep.Close()
		}
		r.release()
		r.metrics.DroppedPackets.Add(1)
		r.log.Debug("udp flow not accepted", "client", fmtAddr(client), "server", fmtAddr(server), "err", err)
		return true
	}
	a := conn{ep: aep, wq: aq}
	if self {
		b = a
	}
	now := time.Now()
	f := &udpFlow{a: a, b: b, client: client, server: server, lastSeen: now, stats: flowStats{start: now}}
	for _, c := range ends(f.a, f.b) {
		c.ep.SocketOptions().SetReceiveBufferSize(udpRcvBuf, true)
	}
	f.timer = time.AfterFunc(r.cfg.UDPIdleTimeout, func() { r.expireUDP(f) })
	if !r.track(f) {
		f.end()
		r.release()
		return true
	}
	r.metrics.UDPFlows.Add(1)
	r.metrics.UDPFlowsActive.Add(1)
	ps := pipes(f.a, f.b)
	r.wg.Add(len(ps))
	var once sync.Once
	done := func() {
		// Either pipe stops only when the flow ended (idle timeout or
		// relay close); the first to stop does the bookkeeping.
		once.Do(func() {
			f.end()
			r.untrack(f)
			r.release()
			r.metrics.UDPFlowsActive.Add(-1)
		})
		r.wg.Done()
	}
	for _, p := range ps {
		up := &udpPipe{r: r, f: f, dst: p[1], done: done}
		up.start(p[0], up)
	}
	return true
}

// expireUDP ends f if it has been idle for the timeout, or re-arms the
// timer for the rest of it.
func (r *relay) expireUDP(f *udpFlow) {
	f.mu.Lock()
	idle := time.Since(f.lastSeen)
	f.mu.Unlock()
	if left := r.cfg.UDPIdleTimeout - idle; left > 0 {
		f.timer.Reset(left)
		return
	}
	if f.end() {
		r.metrics.UDPFlowsExpired.Add(1)
	}
}

// udpPipe copies datagrams from its pump's src to dst, one Write per
// datagram so that boundaries are kept, until the flow ends; done runs when
// it has.
type udpPipe struct {
	pump
	r    *relay
	f    *udpFlow
	dst  conn
	rd   bytes.Reader
	done func()
}

func (p *udpPipe) drain() bool {
	r, f, src, dst := p.r, p.f, p.src, p.dst
	if r.udpGSO != nil {
		r.udpGSO.begin()
		defer r.udpGSO.end()
	}
	for {
		bp, n, err := r.read(src)
		switch err.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			return false
		case *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState:
			return true
		case *tcpip.ErrConnectionRefused:
			// An ICMP error that reached the endpoint does not end
			// the flow, as it does not end a connected kernel socket.
			continue
		default:
			r.log.Debug("udp relay read failed", "err", err)
			f.end()
			return true
		}
		f.touch()
		f.stats.count(f.a, src, n)
		p.rd.Reset((*bp)[:n])
		// Like any UDP sender, drop the datagram if it does not fit
		// now.
		if _, err := dst.ep.Write(&p.rd, tcpip.WriteOptions{}); err != nil {
			r.metrics.DroppedPackets.Add(1)
		}
		p.rd.Reset(nil) // an idle flow pins no copy buffer
		r.bufs.Put(bp)
	}
}

func (p *udpPipe) finish() { p.done() }

func fmtAddr(a tcpip.FullAddress) string {
	return net.JoinHostPort(a.Addr.String(), strconv.Itoa(int(a.Port)))
}
