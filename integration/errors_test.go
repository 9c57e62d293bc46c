//go:build linux

package integration

import (
	"regexp"
	"strings"
	"testing"
)

// asNobody is how the tests drop root: setpriv(1) from util-linux changes
// uid/gid to nobody, which also clears every capability.
var asNobody = []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}

// TestErrors: uloopd refuses what it cannot do with a non-zero exit and a
// message that says why, and leaves nothing behind.
func TestErrors(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		t.Run("second-instance", func(t *testing.T) {
			e := uloopEnv(t)
			during := readHostState(t, e.ns)
			code, logs := runDaemonToExit(t, []string{"ip", "netns", "exec", e.ns.name, uloopd(t)})
			if code == 0 {
				t.Errorf("second uloopd in the same namespace: got exit 0, want non-zero\n%s", logs)
			}
			if !regexp.MustCompile(`(?i)already|running|in use|lock`).MatchString(logs) {
				t.Errorf("second uloopd: got message %q, want one saying another uloopd runs", logs)
			}
			// The first one is untouched and still carries traffic.
			e.d.requireRunning(t)
			requireState(t, "after the second uloopd failed", readHostState(t, e.ns), during)
			before := e.snapshot(t)
			ping(t, e.ns, "127.0.0.1", "-c", "1", "-W", "2")
			l := e.ns.listen(t, "tcp", "127.0.0.1:0")
			tcpEcho(t, l)
			tcpRoundTrip(t, e.ns, "tcp", l.Addr().String(), []byte("first still works"))
			e.requireGrew(t, before, "uloop_icmp_echo_replies_total", 1)
			e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
			e.requireCrossed(t, before)
		})

		// Another device already owns the name. Kernels without the dummy
		// module get a bridge instead; a persistent TUN device is the sharper
		// case, since opening /dev/net/tun with its name would silently
		// attach to it instead of failing.
		for _, kind := range []string{"plain", "tun"} {
			t.Run("device-exists-"+kind, func(t *testing.T) {
				ns := newNS(t)
				if kind == "tun" {
					ns.mustRun(t, "ip", "tuntap", "add", "dev", tunDev, "mode", "tun")
				} else if r := ns.run(t, "ip", "link", "add", tunDev, "type", "dummy"); r.code != 0 {
					ns.mustRun(t, "ip", "link", "add", tunDev, "type", "bridge")
				}
				s0 := readHostState(t, ns)
				code, logs := runDaemonToExit(t, []string{"ip", "netns", "exec", ns.name, uloopd(t)})
				if code == 0 {
					t.Errorf("uloopd with %s already present: got exit 0, want non-zero\n%s", tunDev, logs)
				}
				if !strings.Contains(logs, tunDev) {
					t.Errorf("uloopd with %s already present: got message %q, want it to name %s", tunDev, logs, tunDev)
				}
				requireState(t, "after the failed start", readHostState(t, ns), s0)
			})
		}

		t.Run("not-root", func(t *testing.T) {
			ns := newNS(t)
			bin := uloopd(t)
			// Otherwise "permission denied" could come from exec itself.
			if r := ns.run(t, append(asNobody, "test", "-x", bin)...); r.code != 0 {
				t.Fatalf("test setup: nobody cannot execute %s (a parent directory not searchable?)", bin)
			}
			s0 := readHostState(t, ns)
			code, logs := runDaemonToExit(t, append(append([]string{"ip", "netns", "exec", ns.name}, asNobody...), bin))
			if code == 0 {
				t.Errorf("uloopd as nobody: got exit 0, want non-zero\n%s", logs)
			}
			if strings.Contains(logs, "setpriv:") {
				t.Fatalf("setpriv itself failed, uloopd did not run: %s", logs)
			}
			if !regexp.MustCompile(`(?i)root|permission|not permitted|CAP_NET_ADMIN`).MatchString(logs) {
				t.Errorf("uloopd as nobody: got message %q, want one mentioning root or permission", logs)
			}
			requireState(t, "after the failed start", readHostState(t, ns), s0)
		})
	})
}
