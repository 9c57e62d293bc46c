//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMTUOffload: TCP (iperf3) and UDP work through uloopd at the smallest
// Ethernet MTU, a jumbo one and the largest, with the TUN offloads (TSO,
// checksum offload, GSO writes) on and off: six daemons, one after another.
// The throughput each reaches is logged, not judged.
func TestMTUOffload(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		var table []string
		defer func() { t.Logf("iperf3 TCP, 2 s, received:\n%s", strings.Join(table, "\n")) }()
		for _, mtu := range []int{1500, 9000, 65535} {
			for _, offload := range []bool{true, false} {
				name := fmt.Sprintf("mtu-%d-offload-%t", mtu, offload)
				t.Run(name, func(t *testing.T) {
					e := uloopEnv(t, "--mtu", strconv.Itoa(mtu), "--offload="+strconv.FormatBool(offload))
					if got := link(t, e.ns, tunDev).Attrs().MTU; got != mtu {
						t.Fatalf("%s mtu: got %d, want %d", tunDev, got, mtu)
					}
					t.Run("iperf3", func(t *testing.T) {
						bps := iperf3TCP(t, e)
						table = append(table, fmt.Sprintf("  %-26s %6.2f Gbit/s", name, bps/1e9))
					})
					t.Run("udp-1400", func(t *testing.T) { testUDPEchoSize(t, e, 1400, 200) })
					// Larger than the 1500 and 9000 MTUs: the kernel
					// fragments it into ulo0, the stack reassembles it,
					// and the relay's datagram is fragmented again.
					t.Run("udp-32768", func(t *testing.T) { testUDPEchoSize(t, e, 32768, 20) })
					e.d.requireRunning(t)
				})
			}
		}
	})
}

// iperf3TCP runs iperf3 over 127.0.0.1 for 2 s and returns the received
// throughput (bit/s); it requires success and bytes received.
func iperf3TCP(t *testing.T, e *env) float64 {
	t.Helper()
	const port = 5201
	srv := e.ns.start(t, "iperf3", "--server", "--bind", "127.0.0.1", "--port", strconv.Itoa(port))
	waitListening(t, srv, port)
	before := e.snapshot(t)
	r := e.ns.run(t, "iperf3", "--client", "127.0.0.1", "--port", strconv.Itoa(port), "--time", "2", "--json")
	var report struct {
		End struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &report); err != nil {
		t.Fatalf("iperf3 JSON: %v\n%s", err, r)
	}
	if r.code != 0 || report.Error != "" {
		t.Fatalf("iperf3 client: exit %d, error %q, want success\n%s%s", r.code, report.Error, r.stderr, e.diagnostics(t))
	}
	if report.End.SumReceived.Bytes <= 0 {
		t.Fatalf("iperf3 received bytes: got %v, want > 0", report.End.SumReceived.Bytes)
	}
	t.Logf("%.2f Gbit/s received (%.0f MiB)", report.End.SumReceived.BitsPerSecond/1e9, report.End.SumReceived.Bytes/(1<<20))
	e.requireGrew(t, before, "uloop_tcp_connections_total", 2) // control and data
	e.requireCrossed(t, before)
	return report.End.SumReceived.BitsPerSecond
}

// testUDPEchoSize sends count datagrams of size bytes, each different, to an
// echo server, one at a time, and requires each back intact.
func testUDPEchoSize(t *testing.T, e *env, size, count int) {
	before := e.snapshot(t)
	srv := e.ns.listenUDP(t, "127.0.0.1:0")
	udpEcho(t, srv)
	c := dialUDP(t, e.ns, "udp", srv.LocalAddr().(*net.UDPAddr))
	for i := range count {
		msg := datagram(byte(i), size)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("datagram %d: write %d bytes: %v", i, size, err)
		}
		readDatagram(t, c, srv.LocalAddr().String(), msg)
	}
	e.requireGrew(t, before, "uloop_udp_flows_total", 1)
	e.requireCrossed(t, before)
}

// TestNoTCPPort: uloopd opens no kernel TCP or UDP socket, listening or
// not: its only way in is the control socket @uloopd, a unix socket of its
// namespace (the data path is a TUN device). ss(8) must see @uloopd, and
// also the test's own listener with its owner, or the check proves nothing.
func TestNoTCPPort(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		l := e.ns.listen(t, "tcp", "127.0.0.1:0")
		tcpEcho(t, l)
		// Traffic through the relay, so that the check below runs while
		// uloopd carries a connection.
		c := e.ns.mustDial(t, "tcp", l.Addr().String())
		c.SetDeadline(time.Now().Add(10 * time.Second))
		exchange(t, c, c, []byte("relayed"))

		pid := e.d.p.Pid()
		owned := regexp.MustCompile(`\bpid=` + strconv.Itoa(pid) + `\b`)
		ours := regexp.MustCompile(`\bpid=` + strconv.Itoa(os.Getpid()) + `\b`)
		for _, argv := range [][]string{
			{"ss", "-Hltnup"}, // listening TCP and UDP, with owners
			{"ss", "-Hatnup"}, // every TCP and UDP socket, any state
		} {
			out := e.ns.mustRun(t, argv...)
			for _, line := range strings.Split(out, "\n") {
				if owned.MatchString(line) {
					t.Errorf("`%s`: uloopd (pid %d) owns a socket: %s", strings.Join(argv, " "), pid, line)
				}
			}
			if !ours.MatchString(out) || !strings.Contains(out, l.Addr().String()) {
				t.Errorf("`%s`: got\n%s\nwant the test's listener %s with its owner (pid %d): else the check above proves nothing", strings.Join(argv, " "), out, l.Addr(), os.Getpid())
			}
		}
		out := e.ns.mustRun(t, "ss", "-Hxlp")
		found := false
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "@uloopd ") && owned.MatchString(line) {
				found = true
			}
		}
		if !found {
			t.Errorf("`ss -Hxlp`: no listening @uloopd owned by uloopd (pid %d); got\n%s", pid, out)
		}
	})
}
