package impair

import (
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"tcp:5432 delay=80ms jitter=5ms loss=1%", "tcp:5432 delay=80ms jitter=5ms loss=1%"},
		{"tcp:8000-8099 loss=0.5", "tcp:8000-8099 loss=50%"},
		{"udp:53 addr=127.0.0.0/24 dir=to-client delay=1ms", "udp:53 addr=127.0.0.0-127.0.0.255 dir=to-client delay=1ms"},
		{"icmp addr=127.0.0.2 delay=10ms", "icmp addr=127.0.0.2 delay=10ms"},
		{"all addr=127.0.0.2-127.0.0.9 blackhole", "all addr=127.0.0.2-127.0.0.9 blackhole"},
		{"tcp:5201 rate=10mbit", "tcp:5201 rate=10mbit"},
		{"tcp:5201 rate=1500kbit", "tcp:5201 rate=1500kbit"},
		{"tcp:5201 rate=3bit", "tcp:5201 rate=3bit"},
		{"tcp:5201 rate=1MB/s burst=16KiB queue=2s", "tcp:5201 rate=8mbit burst=16384 queue=2s"},
		{"tcp:6379 reset-after=1MB", "tcp:6379 reset-after=1000000B"},
		{"tcp:6379 reset-after=30s", "tcp:6379 reset-after=30s"},
		{"tcp:80 delay=20ms jitter=10ms corr=25%", "tcp:80 delay=20ms jitter=10ms corr=25%"},
	} {
		r, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if r.Spec != tc.want {
			t.Errorf("Parse(%q) = %q, want %q", tc.in, r.Spec, tc.want)
		}
		// What String prints parses to the same rule.
		if r2, err := Parse(r.Spec); err != nil || r2.Spec != r.Spec {
			t.Errorf("Parse(%q) = %v, %v; want the same rule", r.Spec, r2, err)
		}
	}
	r, _ := Parse("tcp:5201 rate=10mbit")
	if r.Rate != 1.25e6 {
		t.Errorf("rate=10mbit is %v bytes/s, want 1.25e6", r.Rate)
	}
	r, _ = Parse("tcp:1 reset-after=64KiB")
	if r.ResetBytes != 65536 {
		t.Errorf("reset-after=64KiB is %d bytes, want 65536", r.ResetBytes)
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		"", "sctp:1 delay=1ms", "tcp:0 delay=1ms", "tcp:70000 delay=1ms", "tcp:x delay=1ms",
		"icmp:1 delay=1ms", "tcp:1", "tcp:1 delay=-1ms", "tcp:1 loss=101%", "tcp:1 loss=x",
		"tcp:1 delay=1ms jitter=2ms", "udp:1 reset-after=1MB", "tcp:1 reset-after=0",
		"tcp delay=1ms dir=to-server", "tcp:1 dir=up delay=1ms", "tcp:1 rate=0 delay=1ms",
		"tcp:1 addr=::1 delay=1ms", "tcp:1 addr=127.0.0.9-127.0.0.1 delay=1ms", "tcp:1 frob=1",
		"tcp:1 blackhole=yes",
	} {
		if r, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %q, want an error", in, r.Spec)
		}
	}
}

func mustParse(t *testing.T, s string) *Rule {
	t.Helper()
	r, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pkt(proto Proto, src string, sport uint16, dst string, dport uint16) *Packet {
	return &Packet{Proto: proto, Src: netip.MustParseAddr(src), SrcPort: sport, Dst: netip.MustParseAddr(dst), DstPort: dport, Len: 100}
}

func TestMatch(t *testing.T) {
	db := mustParse(t, "tcp:5432 delay=80ms")
	up := mustParse(t, "tcp:8000-8099 addr=127.0.0.2 dir=to-server loss=1%")
	ping := mustParse(t, "icmp addr=127.0.0.3 delay=1ms")
	reset := mustParse(t, "tcp:6379 reset-after=1MB") // no packet action
	rules := []*Rule{reset, db, up, ping}
	for _, tc := range []struct {
		p    *Packet
		rule *Rule
		dir  Dir
	}{
		{pkt(TCP, "127.0.0.1", 40000, "127.0.0.1", 5432), db, ToServer},
		{pkt(TCP, "127.0.0.1", 5432, "127.0.0.1", 40000), db, ToClient},
		{pkt(UDP, "127.0.0.1", 40000, "127.0.0.1", 5432), nil, Both},
		{pkt(TCP, "127.0.0.1", 40000, "127.0.0.1", 5433), nil, Both},
		{pkt(TCP, "127.0.0.1", 40000, "127.0.0.2", 8050), up, ToServer},
		{pkt(TCP, "127.0.0.2", 8050, "127.0.0.1", 40000), nil, Both}, // dir=to-server only
		{pkt(TCP, "127.0.0.1", 40000, "127.0.0.3", 8050), nil, Both}, // other address
		{pkt(TCP, "127.0.0.1", 40000, "127.0.0.1", 6379), nil, Both}, // reset acts on flows, not packets
		{pkt(ICMP, "127.0.0.1", 0, "127.0.0.3", 0), ping, ToServer},
		{&Packet{Proto: ICMP, Src: netip.MustParseAddr("127.0.0.3"), Dst: netip.MustParseAddr("127.0.0.1"), EchoReply: true}, ping, ToClient},
		{pkt(ICMP, "127.0.0.3", 0, "127.0.0.1", 0), nil, Both}, // a request from the pinged address
	} {
		r, d := Match(rules, tc.p)
		if r != tc.rule || d != tc.dir {
			t.Errorf("Match(%+v) = %v %v, want %v %v", *tc.p, r, d, tc.rule, tc.dir)
		}
	}
	if r := MatchFlow(rules, netip.MustParseAddrPort("127.0.0.1:6379")); len(r) != 1 || r[0] != reset {
		t.Errorf("MatchFlow = %v, want the reset rule", r)
	}
	if r := MatchFlow(rules, netip.MustParseAddrPort("127.0.0.1:5432")); r != nil {
		t.Errorf("MatchFlow = %v, want none", r)
	}
}

// TestApply: every matching rule acts; a later rule is not hidden by an
// earlier one for the same port.
func TestApply(t *testing.T) {
	delay := mustParse(t, "tcp:5432 delay=10ms")
	more := mustParse(t, "tcp:5432 delay=5ms")
	other := mustParse(t, "tcp:80 delay=1s")
	hole := mustParse(t, "tcp:5432 blackhole")
	p := pkt(TCP, "127.0.0.1", 40000, "127.0.0.1", 5432)
	now := time.Now()
	if v, w, by := Apply([]*Rule{delay, other, more}, p, now); v != Pass || w != 15*time.Millisecond || by != more {
		t.Errorf("Apply = %v %v %v, want Pass after 15ms by the second delay", v, w, by)
	}
	if v, _, by := Apply([]*Rule{delay, hole}, p, now); v != Blackholed || by != hole {
		t.Errorf("Apply = %v by %v, want Blackholed by the later rule", v, by)
	}
	if v, w, by := Apply([]*Rule{other}, p, now); v != Pass || w != 0 || by != nil {
		t.Errorf("Apply with no match = %v %v %v", v, w, by)
	}
}

func TestParseIPv4(t *testing.T) {
	b := make([]byte, 28)
	b[0] = 0x45
	b[9] = 17
	copy(b[12:], []byte{127, 0, 0, 1, 127, 0, 0, 2})
	b[20], b[21], b[22], b[23] = 0x9c, 0x40, 0x00, 0x35 // 40000 -> 53
	p, ok := ParseIPv4(b)
	if !ok || p.Proto != UDP || p.SrcPort != 40000 || p.DstPort != 53 || p.Dst != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("ParseIPv4 = %+v, %v", p, ok)
	}
	b[6] = 0x00
	b[7] = 0x10 // a later fragment: no ports
	if p, _ := ParseIPv4(b); p.SrcPort != 0 || p.DstPort != 0 {
		t.Errorf("fragment: ports %d %d, want none", p.SrcPort, p.DstPort)
	}
	b[6], b[7] = 0, 0
	b[9] = 1
	b[20] = 3 // ICMP port unreachable: no rule's business
	if _, ok := ParseIPv4(b); ok {
		t.Error("ICMP error parsed as matchable")
	}
}

// binomialOK reports whether k successes in n trials fit probability p
// within z standard deviations.
func binomialOK(k, n int, p, z float64) bool {
	mean := float64(n) * p
	sd := math.Sqrt(float64(n) * p * (1 - p))
	return math.Abs(float64(k)-mean) <= z*sd
}

func TestDecideLoss(t *testing.T) {
	r := mustParse(t, "udp:1 loss=10%")
	const n = 20000
	lost := 0
	now := time.Now()
	for range n {
		if v, _ := r.Decide(ToServer, 100, now); v == Lost {
			lost++
		}
	}
	// 4.5 sd: a false failure about once in 150,000 runs.
	if !binomialOK(lost, n, 0.1, 4.5) {
		t.Errorf("lost %d of %d, want about %d", lost, n, n/10)
	}
	if got := r.Counters.Lost.Load(); got != uint64(lost) {
		t.Errorf("counter Lost = %d, want %d", got, lost)
	}
}

func TestDecideDelayJitter(t *testing.T) {
	r := mustParse(t, "tcp:1 delay=80ms jitter=5ms")
	now := time.Now()
	var waits []time.Duration
	for range 1000 {
		v, w := r.Decide(ToServer, 100, now)
		if v != Pass {
			t.Fatalf("verdict %v", v)
		}
		if w < 75*time.Millisecond || w > 85*time.Millisecond {
			t.Fatalf("wait %v outside 80ms +- 5ms", w)
		}
		waits = append(waits, w)
	}
	slices.Sort(waits)
	if med := waits[len(waits)/2]; med < 79*time.Millisecond || med > 81*time.Millisecond {
		t.Errorf("median wait %v, want about 80ms", med)
	}
	if waits[0] == waits[len(waits)-1] {
		t.Error("no jitter")
	}
}

func TestDecideCorrelation(t *testing.T) {
	// Correlated draws change less from one packet to the next.
	step := func(spec string) float64 {
		r := mustParse(t, spec)
		now := time.Now()
		var sum float64
		_, prev := r.Decide(ToServer, 1, now)
		for range 5000 {
			_, w := r.Decide(ToServer, 1, now)
			sum += math.Abs(float64(w - prev))
			prev = w
		}
		return sum / 5000
	}
	free, corr := step("tcp:1 delay=50ms jitter=10ms"), step("tcp:1 delay=50ms jitter=10ms corr=75%")
	if corr > free/2 {
		t.Errorf("mean step %v with corr=75%%, %v without: want correlated steps much smaller", time.Duration(corr), time.Duration(free))
	}
}

func TestDecideRate(t *testing.T) {
	// 1 MB/s, burst 10 kB: 1000-byte packets offered all at once leave
	// 10 at once, then one per ms; past queue=50ms they are dropped.
	r := mustParse(t, "tcp:1 rate=1MB/s burst=10kB queue=50ms")
	now := time.Now()
	var last time.Duration
	passed, dropped := 0, 0
	for i := range 100 {
		v, w := r.Decide(ToServer, 1000, now)
		switch v {
		case Pass:
			passed++
			last = w
			if i < 10 && w != 0 {
				t.Errorf("packet %d within the burst waits %v", i, w)
			}
		case RateDrop:
			dropped++
		}
	}
	if passed != 61 || dropped != 39 {
		t.Errorf("passed %d, dropped %d; want 61 (10 burst + 51 in 50 ms) and 39", passed, dropped)
	}
	if last != 50*time.Millisecond {
		t.Errorf("last wait %v, want 50ms", last)
	}
	// The other direction has a bucket of its own.
	if v, w := r.Decide(ToClient, 1000, now); v != Pass || w != 0 {
		t.Errorf("to-client: %v after %v, want passed at once", v, w)
	}
	// Sustained: offered at twice the rate for 2 s, it passes the rate.
	r = mustParse(t, "tcp:1 rate=1MB/s")
	bytes := 0
	for i := range 4000 {
		at := now.Add(time.Duration(i) * 500 * time.Microsecond)
		if v, w := r.Decide(ToServer, 1000, at); v == Pass && at.Add(w).Before(now.Add(2*time.Second)) {
			bytes += 1000
		}
	}
	if want := 2e6 + DefaultBurst; math.Abs(float64(bytes)-want) > 2000 {
		t.Errorf("%d bytes left in 2 s at 1 MB/s, want %v", bytes, want)
	}
}

func TestBlackhole(t *testing.T) {
	r := mustParse(t, "all addr=127.0.0.5 blackhole")
	if v, _ := r.Decide(ToServer, 60, time.Now()); v != Blackholed {
		t.Errorf("verdict %v, want Blackholed", v)
	}
	if r.Counters.Blackholed.Load() != 1 || r.Counters.Packets.Load() != 1 {
		t.Error("counters did not move")
	}
}

func TestTable(t *testing.T) {
	var tab Table
	if tab.Active() != nil {
		t.Fatal("empty table is active")
	}
	changes := 0
	tab.Watch(func() { changes++ })
	a, err := tab.Add("tcp:1 delay=1ms")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := tab.Add("tcp:2 delay=1ms")
	if _, err := tab.Add("tcp:3"); err == nil {
		t.Error("a rule without action was added")
	}
	before := tab.Active()
	if len(before) != 2 || before[0] != a || before[1] != b || a.ID == b.ID {
		t.Fatalf("active %v", before)
	}
	if !tab.Delete(a.ID) || tab.Delete(a.ID) {
		t.Error("Delete")
	}
	if got := tab.Active(); len(got) != 1 || got[0] != b {
		t.Errorf("after delete: %v", got)
	}
	if len(before) != 2 || before[0] != a {
		t.Error("a reader's slice changed under it")
	}
	tab.Delete(b.ID)
	if tab.Active() != nil {
		t.Error("table with no rules still active")
	}
	if changes != 4 {
		t.Errorf("%d changes seen, want 4", changes)
	}
}

func TestLineOrderAndTiming(t *testing.T) {
	l := NewLine(1 << 20)
	defer l.Close()
	var mu sync.Mutex
	var got []int
	var at []time.Duration
	start := time.Now()
	done := make(chan struct{})
	add := func(key uint32, i int, wait time.Duration) {
		ok := l.Schedule(key, wait, 10, func() {
			mu.Lock()
			got = append(got, i)
			at = append(at, time.Since(start))
			if len(got) == 4 {
				close(done)
			}
			mu.Unlock()
		}, func() {})
		if !ok {
			t.Fatal("Schedule refused")
		}
	}
	add(1, 0, 40*time.Millisecond)
	add(1, 1, 10*time.Millisecond) // same flow: not before 0
	add(2, 2, 20*time.Millisecond) // other flow: not held up by 0
	add(3, 3, 0)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("line did not run")
	}
	if want := []int{3, 2, 0, 1}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if at[1] < 20*time.Millisecond || at[2] < 40*time.Millisecond {
		t.Errorf("ran at %v, before their due times", at)
	}
}

func TestLineLimitAndClose(t *testing.T) {
	l := NewLine(100)
	released := 0
	for i := range 3 {
		ok := l.Schedule(uint32(i), time.Hour, 40, func() { t.Error("ran") }, func() { released++ })
		if ok != (i < 2) {
			t.Errorf("Schedule %d = %v", i, ok)
		}
	}
	l.Close()
	if released != 2 {
		t.Errorf("released %d, want 2", released)
	}
	if l.Schedule(0, 0, 1, func() {}, func() {}) {
		t.Error("Schedule after Close")
	}
}

// TestParsePacketIPv6: a TCP or UDP segment over IPv6 (::1 steered into
// the device) is matched by port as over IPv4; other IPv6 packets are not
// taken; IPv4 still parses through ParsePacket.
func TestParsePacketIPv6(t *testing.T) {
	pkt6 := func(next byte, sport, dport uint16) []byte {
		b := make([]byte, 40+20)
		b[0] = 6 << 4
		binary.BigEndian.PutUint16(b[4:6], 20)
		b[6] = next
		copy(b[8:24], netip.MustParseAddr("fd75:6c6f:6f70::1").AsSlice())
		copy(b[24:40], netip.MustParseAddr("fd75:6c6f:6f70::2").AsSlice())
		binary.BigEndian.PutUint16(b[40:42], sport)
		binary.BigEndian.PutUint16(b[42:44], dport)
		return b
	}
	r, err := Parse("tcp:5432 delay=10ms")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := ParsePacket(pkt6(6, 40000, 5432))
	if !ok || p.Proto != TCP || p.DstPort != 5432 || p.Dst != netip.MustParseAddr("fd75:6c6f:6f70::2") {
		t.Fatalf("ParsePacket(TCPv6 to :5432) = %+v, %v", p, ok)
	}
	if _, d := Match([]*Rule{r}, &p); d != ToServer {
		t.Errorf("tcp:5432 on a TCPv6 segment to :5432: direction %v, want to-server", d)
	}
	back, _ := ParsePacket(pkt6(6, 5432, 40000))
	if _, d := Match([]*Rule{r}, &back); d != ToClient {
		t.Errorf("tcp:5432 on a TCPv6 segment from :5432: direction %v, want to-client", d)
	}
	if back.FlowKey() == p.FlowKey() {
		t.Errorf("the two directions share a flow key")
	}
	for _, next := range []byte{58, 44, 0} { // ICMPv6, fragment, hop-by-hop
		if p, ok := ParsePacket(pkt6(next, 1, 5432)); ok {
			t.Errorf("next header %d: taken as %+v, want not taken", next, p)
		}
	}
	v4 := make([]byte, 40)
	v4[0], v4[9] = 0x45, 6
	binary.BigEndian.PutUint16(v4[22:24], 5432)
	if p, ok := ParsePacket(v4); !ok || p.Proto != TCP || p.DstPort != 5432 {
		t.Errorf("ParsePacket(TCPv4 to :5432) = %+v, %v", p, ok)
	}
}
