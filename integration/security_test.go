//go:build linux

package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestNeighbourCannotReachLoopback guards against CVE-2020-8558: a packet to
// 127.0.0.1 that arrives on another interface must be dropped as martian, also
// while uloopd runs (it may enable route_localnet only on its own device).
//
//	e.ns (daemon's)                         peer
//	  listener 127.0.0.1:P
//	  va 10.99.0.1/24  <------ veth ------>  vb 10.99.0.2/24
//	                                         route 127.0.0.1/32 via 10.99.0.1
//
// The probe is validated afterwards: with route_localnet turned on for va
// and vb (the CVE's condition) the same ping and connect do get through.
func TestNeighbourCannotReachLoopback(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		peer := newNS(t)
		e.ns.mustRun(t, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", peer.name)
		e.ns.mustRun(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "va")
		e.ns.mustRun(t, "ip", "link", "set", "va", "up")
		peer.mustRun(t, "ip", "addr", "add", "10.99.0.2/24", "dev", "vb")
		peer.mustRun(t, "ip", "link", "set", "vb", "up")
		peer.mustRun(t, "ip", "route", "add", "127.0.0.1/32", "via", "10.99.0.1")
		// The veth itself works, so a failure below is the 127/8 filter.
		ping(t, peer, "10.99.0.1", "-c", "1", "-W", "5")

		l := e.ns.listen(t, "tcp", "127.0.0.1:0")
		var accepted atomic.Int64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				c.Close()
			}
		}()
		t.Cleanup(func() { l.Close(); wg.Wait() })
		target := net.JoinHostPort("127.0.0.1", strconv.Itoa(portOf(l.Addr())))

		before := e.snapshot(t)
		if r := peer.run(t, "ping", "-c", "2", "-W", "1", "127.0.0.1"); strings.Contains(r.stdout, " 0% packet loss") || !strings.Contains(r.stdout, " 0 received") {
			t.Errorf("ping 127.0.0.1 from the peer namespace: got replies, want none\n%s", r)
		}
		if c, err := peer.dial("tcp", target, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("connect to %s from the peer namespace: got a connection, want none", target)
		}
		if n := accepted.Load(); n != 0 {
			t.Errorf("listener on %s accepted %d connections from the peer, want 0", target, n)
		}
		if e.uloop() {
			after := metrics(t, e.ns)
			for _, name := range []string{"uloop_icmp_echo_replies_total", "uloop_tcp_connections_total"} {
				if a, b := metricValue(t, after, name), metricValue(t, before.m, name); a != b {
					t.Errorf("%s: got %v, want unchanged %v (probes from the peer must not reach the daemon)", name, a, b)
				}
			}
			if got := sysctl(t, e.ns, "net.ipv4.conf.all.route_localnet"); got != "0" {
				t.Errorf("net.ipv4.conf.all.route_localnet: got %s, want 0", got)
			}
		}

		t.Run("probe-control", func(t *testing.T) {
			e.ns.mustRun(t, "sysctl", "-qw", "net.ipv4.conf.va.route_localnet=1")
			peer.mustRun(t, "sysctl", "-qw", "net.ipv4.conf.vb.route_localnet=1")
			ping(t, peer, "127.0.0.1", "-c", "1", "-W", "2")
			c, err := peer.dial("tcp", target, 2*time.Second)
			if err != nil {
				t.Fatalf("with route_localnet on va and vb: connect to %s from the peer: %v, want success (else the probe proves nothing)", target, err)
			}
			c.Close()
			pollUntil(t, 5*time.Second, "the listener to accept the peer's connection", func() (bool, string) {
				return accepted.Load() == 1, strconv.FormatInt(accepted.Load(), 10) + " accepted"
			})
		})
	})
}

// TestControlSocketRootOnly: the metrics socket answers root but not other
// users.
func TestControlSocketRootOnly(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		curl := []string{"curl", "--silent", "--show-error", "--max-time", "5", "--abstract-unix-socket", "uloopd", "http://uloopd/metrics"}
		if out := e.ns.mustRun(t, curl...); !strings.Contains(out, "uloop_tun_rx_packets_total") {
			t.Fatalf("GET /metrics as root: got %q, want the metrics", out)
		}
		r := e.ns.run(t, append(asNobody, curl...)...)
		if strings.Contains(r.stdout, "uloop_") {
			t.Errorf("GET /metrics as nobody: got the metrics, want refusal\n%s", r)
		}
	})
}

// TestCapabilitiesDropped: once ready, uloopd keeps CAP_NET_ADMIN (which
// undoing its routing needs) and nothing else, in every set of every thread,
// and still restores the namespace on SIGTERM with only that.
func TestCapabilitiesDropped(t *testing.T) {
	requireRoot(t)
	ns := newNS(t)
	s0 := readHostState(t, ns)
	d := startDaemon(t, ns)
	const netAdminOnly = "0000000000001000" // 1 << CAP_NET_ADMIN (12)
	want := map[string]string{"CapInh": "0000000000000000", "CapPrm": netAdminOnly, "CapEff": netAdminOnly, "CapBnd": netAdminOnly, "CapAmb": "0000000000000000"}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", d.p.Pid()))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("listing uloopd's threads: %v (%d found)", err, len(tasks))
	}
	for _, status := range tasks {
		b, err := os.ReadFile(status)
		if err != nil {
			t.Fatalf("reading %s: %v", status, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":\t")
			if w, checked := want[k]; ok && checked && v != w {
				t.Errorf("%s: %s %s, want %s", status, k, v, w)
			}
		}
	}
	ping(t, ns, "127.0.0.1", "-c", "1", "-W", "2")
	d.Stop(t)
	requireState(t, "after SIGTERM with CAP_NET_ADMIN only", readHostState(t, ns), s0)
}
