//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestImpairCommand: a rule given with --impair delays connects in the run,
// and uloop impair, from outside, lists it, adds a blackhole that makes the
// next connect time out, deletes it again, and rejects a bad rule; uloop
// status shows the rules and their counters.
func TestImpairCommand(t *testing.T) {
	rt := runtimeDir(t)
	// For each line on stdin: connect to the run's own server and say how
	// long it took, or that it timed out.
	script := `import socket, sys, time
ln = socket.create_server(("127.0.0.1", 8000))
print("ready", flush=True)
for line in sys.stdin:
    start = time.monotonic()
    try:
        c = socket.create_connection(("127.0.0.1", 8000), timeout=1)
        s, _ = ln.accept(); s.close(); c.close()
        print("ok %.1f" % ((time.monotonic() - start) * 1000), flush=True)
    except OSError:
        print("timeout", flush=True)`
	cmd := uloop(t, rt, "run", "--impair", "tcp:8000 delay=30ms", "--", "python3", "-c", script)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		<-done
	})
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(20 * time.Second):
			t.Fatal("no output from the run")
			return ""
		}
	}
	if l := next(); l != "ready" {
		t.Fatalf("run said %q, want ready", l)
	}
	connect := func() string {
		t.Helper()
		stdin.Write([]byte("go\n"))
		return next()
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	impair := func(args ...string) (string, int) {
		t.Helper()
		return run(t, uloop(t, rt, append([]string{"impair", "--pid", pid}, args...)...))
	}

	// The SYN waits 30 ms on its way in, the server's SYN-ACK 30 ms on
	// its way back: the connect takes 60 ms.
	if l := connect(); !strings.HasPrefix(l, "ok ") {
		t.Errorf("connect with delay=30ms: %q, want ok", l)
	} else if ms, _ := strconv.ParseFloat(strings.TrimPrefix(l, "ok "), 64); ms < 60 {
		t.Errorf("connect took %.1f ms, want at least 2 x 30 ms", ms)
	}
	if out, code := impair("list"); code != 0 || !strings.Contains(out, "tcp:8000 delay=30ms") {
		t.Errorf("uloop impair list: %d\n%s\nwant the --impair rule", code, out)
	}
	out, code := impair("add", "tcp:8000 blackhole")
	id, _, _ := strings.Cut(out, "\t")
	if code != 0 || id != "2" {
		t.Fatalf("uloop impair add: %d %q, want the new rule's ID, 2", code, out)
	}
	if l := connect(); l != "timeout" {
		t.Errorf("connect to a blackholed port: %q, want a timeout", l)
	}
	if out, code := impair("del", id); code != 0 {
		t.Errorf("uloop impair del %s: %d %q", id, code, out)
	}
	if l := connect(); !strings.HasPrefix(l, "ok ") {
		t.Errorf("connect after del: %q, want ok", l)
	}
	if _, code := impair("add", "tcp:8000 delay=fast"); code != 1 {
		t.Errorf("uloop impair add with a bad rule: status %d, want 1", code)
	}
	if _, code := impair("del", "99"); code != 1 {
		t.Errorf("uloop impair del of no rule: status %d, want 1", code)
	}

	out, _ = run(t, uloop(t, rt, "status", "--json", "--pid", pid))
	var st []status
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
		t.Fatalf("uloop status --json: %v\n%s", err, out)
	}
	if r := st[0].Impairments; len(r) != 1 || r[0].Rule != "tcp:8000 delay=30ms" || r[0].Delayed == 0 {
		t.Errorf("status impairments %+v, want the delay rule having delayed packets", r)
	}
	if text, _ := run(t, uloop(t, rt, "status", "--pid", pid)); !strings.Contains(text, "impairments") || !strings.Contains(text, "tcp:8000 delay=30ms") {
		t.Errorf("uloop status:\n%s\nwant the impairments", text)
	}
	stdin.Close()
}
