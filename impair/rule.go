// Package impair holds uloop's impairments: rules that make chosen ports or
// addresses of the loopback slow, lossy, rate-limited, reset or dead, and
// the per-packet decisions they make. The link endpoint asks it what to do
// with each packet it reads from the kernel; the relay asks it when to
// reset a connection. It knows nothing of gVisor or the TUN device.
package impair

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proto is the transport protocol a rule matches.
type Proto uint8

const (
	AnyProto Proto = iota // "all": TCP, UDP and ICMP echo
	TCP
	UDP
	ICMP // echo requests and their replies
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMP:
		return "icmp"
	}
	return "all"
}

// Dir is the direction of a packet relative to the server: the side that
// listens (TCP, UDP) or is pinged (ICMP).
type Dir uint8

const (
	Both     Dir = iota // a rule's direction only
	ToServer            // from the client to the server
	ToClient            // from the server back
)

func (d Dir) String() string {
	switch d {
	case ToServer:
		return "to-server"
	case ToClient:
		return "to-client"
	}
	return "both"
}

// Rule is one impairment: which packets it matches and what it does to
// them. The fields are fixed once parsed; the counters and the state of
// the delay and rate actions change as packets pass.
type Rule struct {
	ID   int    // given by the Table, for deleting
	Spec string // the text it was parsed from, normalised

	Proto Proto
	// Ports is the server port range; zero: any port (and ICMP).
	PortLo, PortHi uint16
	// Addrs is the server address range; invalid: any.
	AddrLo, AddrHi netip.Addr
	Dir            Dir

	Delay, Jitter time.Duration
	// Correlation of each jitter draw with the previous one, 0 to 1, as
	// netem's delay correlation.
	Correlation float64
	Loss        float64 // probability, 0 to 1
	// Rate is in bytes per second; 0: unlimited. Burst bytes may pass at
	// once after an idle spell; a packet that would wait longer than Queue
	// for its turn is dropped, as a full queue drops it.
	Rate  float64
	Burst int64
	Queue time.Duration
	// Blackhole drops every packet: connects time out, pings go
	// unanswered.
	Blackhole bool
	// ResetBytes and ResetAfter reset a TCP connection (both programs get
	// ECONNRESET) once it has relayed that many bytes in the rule's
	// direction(s), or has lived that long.
	ResetBytes int64
	ResetAfter time.Duration

	Counters Counters

	state [2]dirState // per direction: [0] to the server, [1] to the client
}

// Counters are what a rule did; safe for concurrent use.
type Counters struct {
	Packets     atomic.Uint64 // packets the rule matched
	Bytes       atomic.Uint64
	Delayed     atomic.Uint64 // packets held back (delay, jitter or rate)
	Lost        atomic.Uint64 // dropped by loss=
	RateDropped atomic.Uint64 // dropped by rate= because the queue was full
	Blackholed  atomic.Uint64
	// Overflow counts delayed packets dropped because the delay line
	// was full (it holds at most a fixed number of bytes for all rules).
	Overflow atomic.Uint64
	Resets   atomic.Uint64 // TCP connections reset
}

// dirState is what the delay and rate actions remember between packets of
// one direction.
type dirState struct {
	mu sync.Mutex
	// lastJitter is the previous jitter draw, in units of Jitter (-1..1),
	// for Correlation.
	lastJitter float64
	// tat is the rate limiter's theoretical arrival time (GCRA): when
	// every byte accepted so far has been paid for at Rate.
	tat time.Time
	rnd *rand.Rand
}

// DefaultBurst is the rate limiter's burst when a rule gives none: one
// 64 KiB segment, the largest the loopback carries.
const DefaultBurst = 64 << 10

// DefaultQueue is the longest a packet may wait for its turn under a rate
// limit when a rule gives no queue=. Long enough that TCP fills the limit
// instead of losing bursts of 64 KiB segments that it then recovers by
// timeout, leaving the link idle: a transfer limited to 8 Mbit/s moved
// 0.75 to 1.0 MB/s with 500 ms, 0.98 with 1 s (TestImpairLive).
const DefaultQueue = time.Second

// Parse parses a rule:
//
//	PROTO[:PORT[-PORT]] [addr=A[-B]|addr=PREFIX] [dir=to-server|to-client|both]
//	    [delay=D] [jitter=D] [corr=P%] [loss=P%] [rate=R] [burst=SIZE]
//	    [queue=D] [blackhole] [reset-after=SIZE|D]
//
// PROTO is tcp, udp, icmp or all. Ports and addresses are the server's:
// the port it listens on, the address it listens on or is pinged at.
// Rates take bit/s units (kbit, mbit, gbit) or bytes/s (B, KB, MB, KiB,
// MiB, ... with or without /s); sizes take the byte units.
func Parse(spec string) (*Rule, error) {
	fields := strings.Fields(spec)
	if len(fields) == 0 {
		return nil, errors.New("empty rule")
	}
	r := &Rule{Queue: DefaultQueue, Burst: DefaultBurst}
	proto, ports, hasPorts := strings.Cut(fields[0], ":")
	switch strings.ToLower(proto) {
	case "tcp":
		r.Proto = TCP
	case "udp":
		r.Proto = UDP
	case "icmp":
		r.Proto = ICMP
	case "all", "any", "ip":
		r.Proto = AnyProto
	default:
		return nil, fmt.Errorf("rule %q: protocol %q: want tcp, udp, icmp or all", spec, proto)
	}
	if hasPorts {
		if r.Proto == ICMP {
			return nil, fmt.Errorf("rule %q: icmp has no ports", spec)
		}
		lo, hi, err := parseRange(ports, func(s string) (uint16, error) {
			n, err := strconv.ParseUint(s, 10, 16)
			if err == nil && n == 0 {
				err = errors.New("port 0")
			}
			return uint16(n), err
		})
		if err != nil {
			return nil, fmt.Errorf("rule %q: ports %q: %v", spec, ports, err)
		}
		r.PortLo, r.PortHi = lo, hi
	}
	for _, f := range fields[1:] {
		key, val, _ := strings.Cut(f, "=")
		var err error
		switch strings.ToLower(key) {
		case "addr":
			err = r.parseAddrs(val)
		case "dir":
			switch val {
			case "to-server":
				r.Dir = ToServer
			case "to-client":
				r.Dir = ToClient
			case "both":
				r.Dir = Both
			default:
				err = errors.New("want to-server, to-client or both")
			}
		case "delay":
			r.Delay, err = parseDuration(val)
		case "jitter":
			r.Jitter, err = parseDuration(val)
		case "corr", "correlation":
			r.Correlation, err = parseFraction(val)
		case "loss":
			r.Loss, err = parseFraction(val)
		case "rate":
			r.Rate, err = parseRate(val)
		case "burst":
			r.Burst, err = parseSize(val)
		case "queue":
			r.Queue, err = parseDuration(val)
		case "blackhole":
			if val != "" {
				err = errors.New("takes no value")
			}
			r.Blackhole = true
		case "reset-after":
			if d, derr := time.ParseDuration(val); derr == nil && d > 0 {
				r.ResetAfter = d
			} else {
				r.ResetBytes, err = parseSize(val)
				if err == nil && r.ResetBytes == 0 {
					err = errors.New("must be more than 0")
				}
			}
		default:
			err = errors.New("unknown setting")
		}
		if err != nil {
			return nil, fmt.Errorf("rule %q: %s: %v", spec, f, err)
		}
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("rule %q: %v", spec, err)
	}
	r.Spec = r.String()
	for i := range r.state {
		r.state[i].rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return r, nil
}

func (r *Rule) check() error {
	if r.Dir != Both && r.PortLo == 0 && !r.AddrLo.IsValid() {
		return errors.New("dir= needs a port or an address: they say which side is the server")
	}
	if r.Jitter > r.Delay {
		return errors.New("jitter must not exceed delay (a packet cannot leave before it arrived)")
	}
	if (r.ResetBytes > 0 || r.ResetAfter > 0) && r.Proto != TCP {
		return errors.New("reset-after applies to tcp only")
	}
	if r.Delay == 0 && r.Loss == 0 && r.Rate == 0 && !r.Blackhole && r.ResetBytes == 0 && r.ResetAfter == 0 {
		return errors.New("no action: give delay=, loss=, rate=, blackhole or reset-after=")
	}
	return nil
}

func (r *Rule) parseAddrs(val string) error {
	if p, err := netip.ParsePrefix(val); err == nil {
		if !p.Addr().Is4() {
			return errors.New("IPv4 only")
		}
		p = p.Masked()
		r.AddrLo = p.Addr()
		r.AddrHi = lastAddr(p)
		return nil
	}
	lo, hi, err := parseRange(val, netip.ParseAddr)
	if err != nil {
		return err
	}
	if !lo.Is4() || !hi.Is4() {
		return errors.New("IPv4 only")
	}
	if hi.Less(lo) {
		return errors.New("range ends before it starts")
	}
	r.AddrLo, r.AddrHi = lo, hi
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= uint32(1<<(32-p.Bits())) - 1
	if p.Bits() == 0 {
		v = math.MaxUint32
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func parseRange[T interface{ comparable }](s string, parse func(string) (T, error)) (lo, hi T, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = parse(a); err != nil {
		return lo, hi, err
	}
	if !isRange {
		return lo, lo, nil
	}
	hi, err = parse(b)
	return lo, hi, err
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil && d < 0 {
		err = errors.New("negative")
	}
	return d, err
}

// parseFraction reads "1%", "0.5%" or "0.01".
func parseFraction(s string) (float64, error) {
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil {
		return 0, err
	}
	if pct {
		v /= 100
	}
	if v < 0 || v > 1 || math.IsNaN(v) {
		return 0, errors.New("want 0% to 100%")
	}
	return v, nil
}

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"kB", 1e3}, {"B", 1},
}

// parseSize reads a byte count: "1MB", "64KiB", "1500".
func parseSize(s string) (int64, error) {
	v, err := parseUnits(s, sizeUnits)
	if err != nil {
		return 0, err
	}
	return int64(v), nil
}

var rateBitUnits = []struct {
	suffix string
	mult   float64
}{
	{"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8}, {"bit", 1.0 / 8},
}

// parseRate reads bytes per second: "10mbit" (bits/s), "1MB/s", "64KiB".
func parseRate(s string) (float64, error) {
	for _, u := range rateBitUnits {
		if n, ok := strings.CutSuffix(strings.ToLower(s), u.suffix); ok {
			v, err := strconv.ParseFloat(n, 64)
			if err != nil || v <= 0 || math.IsInf(v, 0) {
				return 0, errors.New("want a positive rate such as 10mbit or 1MB/s")
			}
			return v * u.mult, nil
		}
	}
	v, err := parseUnits(strings.TrimSuffix(s, "/s"), sizeUnits)
	if err == nil && v <= 0 {
		err = errors.New("want a positive rate such as 10mbit or 1MB/s")
	}
	return v, err
}

func parseUnits(s string, units []struct {
	suffix string
	mult   float64
}) (float64, error) {
	mult := 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

// String is the rule in Parse's syntax, every setting it has.
func (r *Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Proto.String())
	if r.PortLo != 0 {
		fmt.Fprintf(&b, ":%d", r.PortLo)
		if r.PortHi != r.PortLo {
			fmt.Fprintf(&b, "-%d", r.PortHi)
		}
	}
	if r.AddrLo.IsValid() {
		if r.AddrLo == r.AddrHi {
			fmt.Fprintf(&b, " addr=%s", r.AddrLo)
		} else {
			fmt.Fprintf(&b, " addr=%s-%s", r.AddrLo, r.AddrHi)
		}
	}
	if r.Dir != Both {
		fmt.Fprintf(&b, " dir=%s", r.Dir)
	}
	if r.Delay > 0 {
		fmt.Fprintf(&b, " delay=%s", r.Delay)
	}
	if r.Jitter > 0 {
		fmt.Fprintf(&b, " jitter=%s", r.Jitter)
	}
	if r.Correlation > 0 {
		fmt.Fprintf(&b, " corr=%s%%", strconv.FormatFloat(r.Correlation*100, 'g', -1, 64))
	}
	if r.Loss > 0 {
		fmt.Fprintf(&b, " loss=%s%%", strconv.FormatFloat(r.Loss*100, 'g', -1, 64))
	}
	if r.Rate > 0 {
		fmt.Fprintf(&b, " rate=%s", rateString(r.Rate))
		if r.Burst != DefaultBurst {
			fmt.Fprintf(&b, " burst=%d", r.Burst)
		}
		if r.Queue != DefaultQueue {
			fmt.Fprintf(&b, " queue=%s", r.Queue)
		}
	}
	if r.Blackhole {
		b.WriteString(" blackhole")
	}
	if r.ResetBytes > 0 {
		fmt.Fprintf(&b, " reset-after=%dB", r.ResetBytes)
	}
	if r.ResetAfter > 0 {
		fmt.Fprintf(&b, " reset-after=%s", r.ResetAfter)
	}
	return b.String()
}

// rateString is bytes/s r in the largest bit unit that keeps it whole.
func rateString(r float64) string {
	bits := r * 8
	for _, u := range []struct {
		name string
		mult float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if v := bits / u.mult; v >= 1 && v == math.Trunc(v) {
			return strconv.FormatFloat(v, 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatFloat(bits, 'f', -1, 64) + "bit"
}

// PacketActions says whether the rule acts on packets (delay, loss, rate,
// blackhole) and not only on connections (reset).
func (r *Rule) PacketActions() bool {
	return r.Delay > 0 || r.Loss > 0 || r.Rate > 0 || r.Blackhole
}
