//go:build linux

package integration

import (
	"fmt"
	"strings"
	"testing"

	"github.com/uloop/uloop/route/routetest"
)

// hostState is the namespace configuration uloopd changes while it runs and
// must give back: policy rules, all routing tables, links' up/down state, and
// the loopback-related sysctls, as route's own tests read it
// (route/routetest).
type hostState struct{ routetest.Snapshot }

// readHostState reads ns's state from inside it; the zero-named namespace is
// the test binary's own.
func readHostState(t *testing.T, ns *netNS) hostState {
	t.Helper()
	var s routetest.Snapshot
	take := func() (err error) { s, err = routetest.Take(); return err }
	var err error
	if ns.name == "" {
		err = take()
	} else {
		err = ns.do(take)
	}
	if err != nil {
		t.Fatalf("reading host state of %s: %v", ns, err)
	}
	return hostState{s}
}

// ignoringLoUp drops what bringing lo up adds by itself: lo's state and the
// kernel's routes on lo. uloopd may leave lo up after a crash and --cleanup.
func (s hostState) ignoringLoUp() hostState { return hostState{s.WithoutLo()} }

func requireState(t *testing.T, what string, got, want hostState) {
	t.Helper()
	routetest.Require(t, what, got.Snapshot, want.Snapshot)
}

// sysctl reads one sysctl inside ns.
func sysctl(t *testing.T, ns *netNS, key string) string {
	t.Helper()
	return strings.TrimSpace(ns.mustRun(t, "sysctl", "-n", key))
}

// TestHostState: uloopd gives back every change it made to the namespace, on
// SIGTERM by itself and after SIGKILL through --cleanup; --netns runs it in a
// namespace from outside without touching the outside.
func TestHostState(t *testing.T) {
	requireRoot(t)
	// The snapshot itself: it sees lo going up, and what it takes to return a
	// fresh namespace to its first state: lo up gives lo 127.0.0.1/8 and
	// table-local routes that stay after lo goes down again, until the address
	// is deleted.
	t.Run("kernel", func(t *testing.T) {
		ns := newNS(t)
		s0 := readHostState(t, ns)
		requireState(t, "read twice", readHostState(t, ns), s0)
		ns.mustRun(t, "ip", "link", "set", "lo", "up")
		up := readHostState(t, ns)
		if up.Diff(s0.Snapshot) == "" {
			t.Fatalf("snapshot did not change when lo went up:\n%v", up)
		}
		requireState(t, "lo up, ignoring lo", up.ignoringLoUp(), s0.ignoringLoUp())
		ns.mustRun(t, "ip", "link", "set", "lo", "down")
		ns.mustRun(t, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
		requireState(t, "lo down and its address deleted", readHostState(t, ns), s0)
	})

	t.Run("uloop", func(t *testing.T) {
		t.Run("sigterm", func(t *testing.T) {
			ns := newNS(t)
			s0 := readHostState(t, ns)
			d := startDaemon(t, ns)
			ping(t, ns, "127.0.0.1", "-c", "1", "-W", "2")
			// CVE-2020-8558: route_localnet on conf/all lets neighbours reach
			// 127.0.0.1 services; uloopd may set it only on its own device.
			if got := sysctl(t, ns, "net.ipv4.conf.all.route_localnet"); got != "0" {
				t.Errorf("net.ipv4.conf.all.route_localnet while running: got %s, want 0", got)
			}
			d.Stop(t)
			requireState(t, "after SIGTERM", readHostState(t, ns), s0)
		})

		t.Run("sigkill-cleanup", func(t *testing.T) {
			ns := newNS(t)
			s0 := readHostState(t, ns)
			d := startDaemon(t, ns)
			d.Kill(t)
			// The TUN device (and the routes through it) died with the
			// process, so lookups fall through to the local table: the kernel
			// path works, with uloopd's rules still in place.
			l := ns.listen(t, "tcp", "127.0.0.1:0")
			tcpEcho(t, l)
			tcpRoundTrip(t, ns, "tcp", l.Addr().String(), []byte("after SIGKILL"))
			ping(t, ns, "127.0.0.1", "-c", "1", "-W", "2")

			for i := 1; i <= 2; i++ {
				r := ns.run(t, uloopd(t), "--cleanup")
				if r.code != 0 {
					t.Fatalf("--cleanup run %d: got %s, want exit 0", i, r)
				}
				requireState(t, fmt.Sprintf("after --cleanup run %d (lo may stay up)", i),
					readHostState(t, ns).ignoringLoUp(), s0.ignoringLoUp())
			}
		})

		t.Run("sigkill-restart", func(t *testing.T) {
			// The next start after a SIGKILL clears the leftovers itself,
			// so its SIGTERM leaves the namespace as it was first found.
			ns := newNS(t)
			s0 := readHostState(t, ns)
			startDaemon(t, ns).Kill(t)
			d := startDaemon(t, ns)
			ping(t, ns, "127.0.0.1", "-c", "1", "-W", "2")
			d.Stop(t)
			requireState(t, "after SIGKILL, restart and SIGTERM (lo may stay up)",
				readHostState(t, ns).ignoringLoUp(), s0.ignoringLoUp())
		})

		t.Run("netns-flag", func(t *testing.T) {
			outside := &netNS{} // the test's own namespace, read only
			out0 := readHostState(t, outside)
			ns := newNS(t)
			s0 := readHostState(t, ns)
			d := launchDaemon(t, []string{uloopd(t), "--netns", ns.name})
			d.waitReady(t)
			e := &env{mode: "uloop", ns: ns, d: d}
			before := e.snapshot(t)
			ping(t, ns, "127.0.0.1", "-c", "2", "-W", "2")
			e.requireGrew(t, before, "uloop_icmp_echo_replies_total", 2)
			e.requireCrossed(t, before)
			requireState(t, "outside namespace while uloopd --netns runs", readHostState(t, outside), out0)
			d.Stop(t)
			requireState(t, "after SIGTERM", readHostState(t, ns), s0)
			requireState(t, "outside namespace after uloopd --netns", readHostState(t, outside), out0)
		})
	})
}
