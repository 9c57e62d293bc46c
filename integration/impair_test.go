//go:build linux

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/control"
)

// Impairments: each test runs real programs (ping, curl, python3's
// http.server, iperf3) or kernel sockets through impaired ports of a uloopd
// started with --impair, and measures what they see.

func impairments(t *testing.T, e *env) []control.Impairment {
	t.Helper()
	rules, err := control.New(e.ns.ns, 5*time.Second).Impairments(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

var pingTimeRE = regexp.MustCompile(`time=([0-9.]+) ms`)

// pingRTTs pings addr count times and returns the round trips of the
// replies, and how many were sent.
func pingRTTs(t *testing.T, e *env, addr string, count int, interval string) []time.Duration {
	t.Helper()
	r := e.ns.run(t, "ping", "-n", "-c", strconv.Itoa(count), "-i", interval, "-W", "2", addr)
	var rtts []time.Duration
	for _, m := range pingTimeRE.FindAllStringSubmatch(r.stdout, -1) {
		ms, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, time.Duration(ms*float64(time.Millisecond)))
	}
	return rtts
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// requireWithin fails unless got is within frac of want.
func requireWithin(t *testing.T, what string, got, want time.Duration, frac float64) {
	t.Helper()
	if math.Abs(float64(got-want)) > frac*float64(want) {
		t.Errorf("%s: %v, want %v within %.0f%%", what, got, want, frac*100)
	} else {
		t.Logf("%s: %v (set: %v)", what, got, want)
	}
}

// tcpRTTs makes count 1-byte request/response round trips on one
// connection to an echo server at addr.
func tcpRTTs(t *testing.T, e *env, addr string, count int) []time.Duration {
	t.Helper()
	c := e.ns.mustDial(t, "tcp", addr)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	b := []byte{0}
	var rtts []time.Duration
	for i := range count {
		b[0] = byte(i)
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("round trip %d: %v, got %d", i, err, b[0])
		}
		rtts = append(rtts, time.Since(start))
	}
	return rtts
}

// TestImpairDelay: ping and a TCP request/response through a delayed
// address and port see the set delay, each way (netem's meaning: the round
// trip grows by twice the delay), above the base round trip measured in the
// same run, while another address and port in the same run are not
// delayed. A port rule acts on the port over ::1 too.
func TestImpairDelay(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		const pingDelay, tcpDelay = 40 * time.Millisecond, 20 * time.Millisecond
		e := uloopEnv(t, "--impair", "icmp addr=127.0.0.2 delay=40ms jitter=2ms", "--impair", "tcp:7001 delay=20ms")
		slow, fast := e.ns.listen(t, "tcp", "127.0.0.1:7001"), e.ns.listen(t, "tcp", "127.0.0.1:7002")
		tcpEcho(t, slow)
		tcpEcho(t, fast)

		base := median(pingRTTs(t, e, "127.0.0.3", 20, "0.05"))
		delayed := pingRTTs(t, e, "127.0.0.2", 20, "0.05")
		if len(delayed) != 20 {
			t.Fatalf("%d of 20 pings answered", len(delayed))
		}
		requireWithin(t, "ping 127.0.0.2: median round trip above the base "+base.String(), median(delayed)-base, 2*pingDelay, 0.10)
		if base > pingDelay/10 {
			t.Errorf("ping 127.0.0.3 (no rule): median %v, want it unaffected (under %v)", base, pingDelay/10)
		}

		tcpBase := median(tcpRTTs(t, e, fast.Addr().String(), 20))
		tcpSlow := median(tcpRTTs(t, e, slow.Addr().String(), 20))
		requireWithin(t, "tcp :7001 request/response: median above the base "+tcpBase.String(), tcpSlow-tcpBase, 2*tcpDelay, 0.10)
		if tcpBase > tcpDelay/10 {
			t.Errorf("tcp :7002 (no rule): median %v, want it unaffected (under %v)", tcpBase, tcpDelay/10)
		}

		// localhost is often ::1: the same port rule delays it too (a
		// tcp6 listener on [::], which the hooks steer ::1 to).
		slow6 := e.ns.listen(t, "tcp6", "[::]:7001")
		tcpEcho(t, slow6)
		tcpSlow6 := median(tcpRTTs(t, e, "[::1]:7001", 20))
		requireWithin(t, "tcp [::1]:7001 request/response: median above the base "+tcpBase.String(), tcpSlow6-tcpBase, 2*tcpDelay, 0.10)

		rules := impairments(t, e)
		if rules[0].Delayed < 40 || rules[1].Delayed < 40 {
			t.Errorf("counters: %+v; want at least 40 packets delayed by each rule", rules)
		}
		m := metrics(t, e.ns)
		if v := metricValue(t, m, "uloop_impair_actions_total", "id", "2", "action", "delayed"); v != float64(rules[1].Delayed) && v < 40 {
			t.Errorf("uloop_impair_actions_total{id=2,action=delayed} = %v, want at least 40", v)
		}
	})
}

// binomialBounds is the range of a count of n trials of probability p
// outside which a result is a failure: 4.5 standard deviations, a false
// failure about once in 150,000 runs.
func binomialBounds(n int, p float64) (lo, hi float64) {
	mean, sd := float64(n)*p, math.Sqrt(float64(n)*p*(1-p))
	return mean - 4.5*sd, mean + 4.5*sd
}

var pingStatsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestImpairLoss: pings lost at the set rate (both ways: a round trip
// survives with (1-p)^2), within binomial bounds, and the rule counted
// each loss; TCP through a lossy port still delivers every byte intact.
func TestImpairLoss(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		const p = 0.10
		e := uloopEnv(t, "--impair", "icmp addr=127.0.0.4 loss=10%", "--impair", "tcp:8000 loss=5%")
		t.Run("ping", func(t *testing.T) {
			const n = 500
			r := e.ns.run(t, "ping", "-n", "-q", "-c", strconv.Itoa(n), "-i", "0.005", "-W", "1", "127.0.0.4")
			m := pingStatsRE.FindStringSubmatch(r.stdout)
			if m == nil {
				t.Fatalf("no ping statistics\n%s", r)
			}
			sent, _ := strconv.Atoi(m[1])
			got, _ := strconv.Atoi(m[2])
			lost := sent - got
			pRound := 1 - (1-p)*(1-p)
			lo, hi := binomialBounds(sent, pRound)
			if float64(lost) < lo || float64(lost) > hi {
				t.Errorf("lost %d of %d round trips, want %.0f to %.0f (loss=10%% each way)", lost, sent, lo, hi)
			} else {
				t.Logf("lost %d of %d round trips (expected %.1f)", lost, sent, float64(sent)*pRound)
			}
			if c := impairments(t, e)[0].Lost; c != uint64(lost) {
				t.Errorf("rule counted %d lost, ping saw %d", c, lost)
			}
		})
		t.Run("tcp-intact", func(t *testing.T) {
			dir := t.TempDir()
			blob := make([]byte, 8<<20+4321)
			rand.NewChaCha8([32]byte{'l', 'o', 's', 's'}).Read(blob)
			if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
				t.Fatal(err)
			}
			srv := e.ns.start(t, "python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, "8000")
			waitListening(t, srv, 8000)
			out := filepath.Join(t.TempDir(), "got")
			e.ns.mustRun(t, "curl", "--silent", "--show-error", "--fail", "--max-time", "50", "--output", out, "http://127.0.0.1:8000/blob")
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != sha256.Sum256(blob) {
				t.Fatalf("curl fetched %d bytes that differ from the %d-byte file", len(got), len(blob))
			}
			if r := impairments(t, e)[1]; r.Lost == 0 {
				t.Errorf("rule lost no packet: %+v", r)
			} else {
				t.Logf("%d of %d packets lost, every byte delivered", r.Lost, r.Packets)
			}
		})
	})
}

// TestImpairRate: iperf3 through a rate-limited port reports the limit
// within 10%.
func TestImpairRate(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		const limit = 20e6 // bit/s
		e := uloopEnv(t, "--impair", "tcp:5201 rate=20mbit")
		srv := e.ns.start(t, "iperf3", "--server", "--bind", "127.0.0.1", "--port", "5201")
		waitListening(t, srv, 5201)
		for _, reverse := range []bool{false, true} {
			argv := []string{"iperf3", "--client", "127.0.0.1", "--port", "5201", "--time", "5", "--json"}
			if reverse {
				argv = append(argv, "--reverse")
			}
			var report struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
				Error string `json:"error"`
			}
			// The server takes a moment after a test before it takes
			// the next; until then it answers "busy" (seen once in CI,
			// right after the first run).
			for attempt := 0; ; attempt++ {
				r := e.ns.run(t, argv...)
				report.Error = ""
				err := json.Unmarshal([]byte(r.stdout), &report)
				if err == nil && strings.Contains(report.Error, "busy") && attempt < 20 {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if err != nil || r.code != 0 || report.Error != "" {
					t.Fatalf("iperf3: %v %q\n%s", err, report.Error, r)
				}
				break
			}
			got := report.End.SumReceived.BitsPerSecond
			if math.Abs(got-limit) > 0.1*limit {
				t.Errorf("iperf3 (reverse %v) received %.2f Mbit/s, want %.0f within 10%%", reverse, got/1e6, limit/1e6)
			} else {
				t.Logf("iperf3 (reverse %v) received %.2f Mbit/s (limit %.0f)", reverse, got/1e6, limit/1e6)
			}
		}
	})
}

// isErrno reports whether err is, or wraps, errno.
func isErrno(err error, errno syscall.Errno) bool { return errors.Is(err, errno) }

// TestImpairReset: a rule that resets after 1 MB gives ECONNRESET to both
// programs once the server has read exactly that much; one that resets
// after a duration does so on an idle connection.
func TestImpairReset(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		const limit = 1000000
		e := uloopEnv(t, "--impair", "tcp:7004 reset-after=1MB dir=to-server", "--impair", "tcp:7005 reset-after=300ms")
		t.Run("bytes", func(t *testing.T) {
			l := e.ns.listen(t, "tcp", "127.0.0.1:7004")
			type result struct {
				n   int64
				err error
			}
			srv := make(chan result, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					srv <- result{err: err}
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				n, err := io.Copy(io.Discard, c)
				srv <- result{n, err}
			}()
			c := e.ns.mustDial(t, "tcp", "127.0.0.1:7004")
			c.SetDeadline(time.Now().Add(20 * time.Second))
			buf := make([]byte, 64<<10)
			var werr error
			for range 64 { // 4 MiB, four times the limit
				if _, werr = c.Write(buf); werr != nil {
					break
				}
			}
			_, rerr := c.Read(buf)
			r := <-srv
			if r.n != limit || !isErrno(r.err, syscall.ECONNRESET) {
				t.Errorf("server read %d bytes, then %v; want %d, then ECONNRESET", r.n, r.err, limit)
			}
			if !isErrno(werr, syscall.ECONNRESET) && !isErrno(rerr, syscall.ECONNRESET) {
				t.Errorf("client: write %v, read %v; want ECONNRESET", werr, rerr)
			}
		})
		t.Run("duration", func(t *testing.T) {
			l := e.ns.listen(t, "tcp", "127.0.0.1:7005")
			accepted := acceptOne(t, l)
			start := time.Now()
			c := e.ns.mustDial(t, "tcp", "127.0.0.1:7005")
			sc, ok := <-accepted
			if !ok {
				t.Fatal("accept failed")
			}
			defer sc.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			sc.SetDeadline(time.Now().Add(10 * time.Second))
			_, cerr := c.Read(make([]byte, 1))
			took := time.Since(start)
			_, serr := sc.Read(make([]byte, 1))
			if !isErrno(cerr, syscall.ECONNRESET) || !isErrno(serr, syscall.ECONNRESET) {
				t.Errorf("client read %v, server read %v; want ECONNRESET on both", cerr, serr)
			}
			if took < 300*time.Millisecond || took > 3*time.Second {
				t.Errorf("reset after %v, want soon after 300ms", took)
			}
		})
		rules := impairments(t, e)
		if rules[0].Resets != 1 || rules[1].Resets != 1 {
			t.Errorf("counters %+v, want one reset each", rules)
		}
	})
}

// TestImpairBlackhole: connects to a blackholed port time out (no RST, no
// refusal), while its neighbour answers.
func TestImpairBlackhole(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t, "--impair", "tcp:7006 blackhole")
		e.ns.listen(t, "tcp", "127.0.0.1:7006")
		tcpEcho(t, e.ns.listen(t, "tcp", "127.0.0.1:7007"))
		start := time.Now()
		c, err := e.ns.dial("tcp", "127.0.0.1:7006", time.Second)
		if err == nil {
			c.Close()
			t.Fatal("connect to a blackholed port succeeded")
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || time.Since(start) < 900*time.Millisecond {
			t.Errorf("connect: %v after %v, want a timeout after 1s", err, time.Since(start))
		}
		tcpRoundTrip(t, e.ns, "tcp", "127.0.0.1:7007", []byte("still here"))
		if r := impairments(t, e)[0]; r.Blackholed == 0 {
			t.Errorf("rule blackholed nothing: %+v", r)
		}
	})
}

// TestImpairLive: a rule added through the control socket while a transfer
// runs limits that same connection, and deleting it lifts the limit.
func TestImpairLive(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		l := e.ns.listen(t, "tcp", "127.0.0.1:7008")
		var wg sync.WaitGroup
		accepted := make(chan net.Conn, 1)
		wg.Go(func() {
			c, err := l.Accept()
			accepted <- c
			if err != nil {
				return
			}
			buf := make([]byte, 64<<10)
			c.SetDeadline(time.Now().Add(30 * time.Second))
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		})
		c := e.ns.mustDial(t, "tcp", "127.0.0.1:7008")
		c.SetDeadline(time.Now().Add(30 * time.Second))
		var got atomic.Int64
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				got.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
		sc := <-accepted
		if sc == nil {
			t.Fatal("accept failed")
		}
		defer func() {
			c.Close()
			sc.Close()
			wg.Wait()
		}()
		rate := func(d time.Duration) float64 { // bytes/s over the next d
			before := got.Load()
			time.Sleep(d)
			return float64(got.Load()-before) / d.Seconds()
		}
		free := rate(time.Second)
		ctl := control.New(e.ns.ns, 5*time.Second)
		rule, err := ctl.AddImpairment(context.Background(), "tcp:7008 rate=8mbit")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // what was already past the limit drains
		limited := rate(2 * time.Second)
		if err := ctl.DeleteImpairment(context.Background(), rule.ID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		after := rate(time.Second)
		t.Logf("same connection: %.1f MB/s free, %.3f MB/s under rate=8mbit, %.1f MB/s after delete", free/1e6, limited/1e6, after/1e6)
		if math.Abs(limited-1e6) > 0.1e6 {
			t.Errorf("under rate=8mbit the running transfer moved %.3f MB/s, want 1 MB/s within 10%%", limited/1e6)
		}
		if free < 10e6 || after < 10e6 {
			t.Errorf("without the rule: %.1f MB/s before, %.1f MB/s after; want both far above the limit", free/1e6, after/1e6)
		}
		if rules := impairments(t, e); len(rules) != 0 {
			t.Errorf("rules left after delete: %+v", rules)
		}
	})
}
