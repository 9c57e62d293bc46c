//go:build linux

package integration

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestGoNetConformance runs the Go toolchain's own network tests (net,
// net/http, net/rpc with -short: thousands of loopback cases nobody here
// wrote) in a namespace on kernel lo and in one whose loopback is uloop's,
// and fails on any test whose outcome differs, except the differences
// documented in docs/semantics.md. `make conformance` runs only this.
func TestGoNetConformance(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("builds and runs the Go standard library's network tests (about 2 minutes)")
	}
	here := &netNS{} // the test's own namespace
	goroot := strings.TrimSpace(here.mustRun(t, goTool(), "env", "GOROOT"))
	bins := t.TempDir()
	kernel, uloop := kernelEnv(t), uloopEnv(t)
	for _, pkg := range []string{"net", "net/http", "net/rpc"} {
		t.Run(pkg, func(t *testing.T) {
			bin := filepath.Join(bins, strings.ReplaceAll(pkg, "/", "_")+".test")
			// Minutes with a cold build cache.
			if r := here.runIn(t, 5*time.Minute, "", goTool(), "test", "-c", "-o", bin, pkg); r.code != 0 {
				t.Fatalf("building the %s tests: %s", pkg, r)
			}
			dir := filepath.Join(goroot, "src", pkg) // the tests read their testdata
			onLo := runGoTests(t, kernel, dir, bin)
			before := uloop.snapshot(t)
			onUloop := runGoTests(t, uloop, dir, bin)
			uloop.requireCrossed(t, before)
			uloop.requireGrew(t, before, "uloop_tcp_connections_total", 1)
			compareOutcomes(t, pkg, onLo, onUloop)
		})
	}
}

// knownDifferences are the tests whose outcome on uloop differs from lo's,
// each with the reason (docs/semantics.md has the details).
var knownDifferences = map[string]string{
	"net.TestMultiPathTCP": "MPTCP: gVisor does not implement it, so a connection relayed by uloop is plain TCP on both sides",
}

// goTestLine is a test's outcome line in `go test -v` output; subtests are
// indented.
var goTestLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(`)

// runGoTests runs a compiled test binary in e's namespace from dir and
// returns each test's outcome by name.
func runGoTests(t *testing.T, e *env, dir, bin string) map[string]string {
	t.Helper()
	start := time.Now()
	r := e.ns.runIn(t, 8*time.Minute, dir, bin, "-test.short", "-test.v", "-test.count=1", "-test.timeout=6m")
	outcomes := map[string]string{}
	for _, line := range strings.Split(r.stdout, "\n") {
		if m := goTestLine.FindStringSubmatch(line); m != nil {
			outcomes[m[2]] = m[1]
		}
	}
	if len(outcomes) == 0 {
		t.Fatalf("%s in %s reported no test outcome%s\n%s", filepath.Base(bin), e.mode, e.diagnostics(t), tail(r.stdout+r.stderr, 40))
	}
	t.Logf("%s on %s: %d outcomes, exit %d, %.1fs", filepath.Base(bin), e.mode, len(outcomes), r.code, time.Since(start).Seconds())
	failed := false
	for _, o := range outcomes {
		failed = failed || o == "FAIL"
	}
	if r.code != 0 && (!failed || strings.Contains(r.stdout+r.stderr, "panic: ")) {
		// A test that hung (the binary's timeout ends it with a panic)
		// or crashed has no outcome line: record the binary's own.
		outcomes["(exit)"] = fmt.Sprintf("exit %d", r.code)
		t.Logf("%s on %s, last lines:\n%s", filepath.Base(bin), e.mode, tail(r.stdout+r.stderr, 30))
	}
	return outcomes
}

// compareOutcomes fails for each test whose outcome differs between lo and
// uloop and is not a known difference.
func compareOutcomes(t *testing.T, pkg string, onLo, onUloop map[string]string) {
	t.Helper()
	names := map[string]bool{}
	for n := range onLo {
		names[n] = true
	}
	for n := range onUloop {
		names[n] = true
	}
	var sorted []string
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	differ := 0
	for _, n := range sorted {
		lo, ul := outcome(onLo, n), outcome(onUloop, n)
		if lo == ul {
			continue
		}
		differ++
		if why, ok := knownDifferences[pkg+"."+n]; ok {
			t.Logf("%s %s: lo %s, uloop %s (documented: %s)", pkg, n, lo, ul, why)
			continue
		}
		t.Errorf("%s %s: lo %s, uloop %s", pkg, n, lo, ul)
	}
	t.Logf("%s: %d tests, %d differ", pkg, len(sorted), differ)
}

func outcome(m map[string]string, name string) string {
	if o, ok := m[name]; ok {
		return o
	}
	return "no outcome"
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
