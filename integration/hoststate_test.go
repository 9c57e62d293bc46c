package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// hostState is the namespace configuration uloopd changes while it runs and
// must give back: policy rules, all routing tables, links' up/down flags, and
// the loopback-related sysctls. Each section is the text of one command.
type hostState struct {
	names []string
	text  map[string]string
}

var stateSysctls = func() []string {
	var keys []string
	for _, dev := range []string{"all", "default", "lo"} {
		for _, k := range []string{"route_localnet", "accept_local", "rp_filter"} {
			keys = append(keys, "net.ipv4.conf."+dev+"."+k)
		}
	}
	return keys
}()

var linkLineRE = regexp.MustCompile(`^\d+: ([^:]+): <([^>]*)>`)

func readHostState(t *testing.T, ns *netNS) hostState {
	t.Helper()
	s := hostState{text: map[string]string{}}
	add := func(name string, argv ...string) string {
		r := ns.run(t, argv...)
		text := r.stdout
		if r.code != 0 { // recorded, not fatal: e.g. no IPv6 in the namespace
			text = fmt.Sprintf("exit %d: %s%s", r.code, r.stdout, r.stderr)
		}
		s.names = append(s.names, name)
		s.text[name] = text
		return r.stdout
	}
	add("ip rule", "ip", "-4", "rule", "show")
	add("ip -6 rule", "ip", "-6", "rule", "show")
	add("ip route", "ip", "-4", "route", "show", "table", "all")
	add("ip -6 route", "ip", "-6", "route", "show", "table", "all")
	links := add("ip link", "ip", "-o", "link", "show")
	var flags []string
	for _, line := range strings.Split(links, "\n") {
		if m := linkLineRE.FindStringSubmatch(line); m != nil {
			flags = append(flags, m[1]+" <"+m[2]+">")
		}
	}
	s.text["ip link"] = strings.Join(flags, "\n")
	add("sysctl", append([]string{"sysctl"}, stateSysctls...)...)
	return s
}

// ignoringLoUp drops what bringing lo up adds by itself: lo's flags and the
// kernel's routes on lo (table local, proto kernel). uloopd may leave lo up
// after a crash and --cleanup.
func (s hostState) ignoringLoUp() hostState {
	out := hostState{names: s.names, text: map[string]string{}}
	loRoute := regexp.MustCompile(`\bdev lo\b.*(\btable local\b|\bproto kernel\b)`)
	for name, text := range s.text {
		var keep []string
		for _, line := range strings.Split(text, "\n") {
			switch {
			case strings.HasSuffix(name, "route") && loRoute.MatchString(line):
				continue
			case name == "ip link" && strings.HasPrefix(line, "lo <"):
				line = "lo <flags ignored>"
			}
			keep = append(keep, line)
		}
		out.text[name] = strings.Join(keep, "\n")
	}
	return out
}

// diff describes how got differs from want, line by line; "" if equal.
func (s hostState) diff(want hostState) string {
	var b strings.Builder
	for _, name := range want.names {
		g, w := s.text[name], want.text[name]
		if g == w {
			continue
		}
		fmt.Fprintf(&b, "%s: got\n%s\nwant\n%s\n", name, indent(g), indent(w))
		gl, wl := lineSet(g), lineSet(w)
		for l := range gl {
			if !wl[l] {
				fmt.Fprintf(&b, "  + %s\n", l)
			}
		}
		for l := range wl {
			if !gl[l] {
				fmt.Fprintf(&b, "  - %s\n", l)
			}
		}
	}
	return b.String()
}

func lineSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			m[l] = true
		}
	}
	return m
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func requireState(t *testing.T, what string, got, want hostState) {
	t.Helper()
	if d := got.diff(want); d != "" {
		t.Errorf("%s: host state differs:\n%s", what, d)
	}
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
		if up.diff(s0) == "" {
			t.Fatalf("snapshot did not change when lo went up:\n%v", up.text)
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
			outside := &netNS{h: -1} // the test's own namespace, read only
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
