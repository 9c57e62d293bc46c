//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/uloop/uloop/netns"
	"golang.org/x/sys/unix"
)

// TestWatchdog: with uloop's data path stopped (SIGSTOP to the process that
// holds it), a program in the run still connects to a server on 127.0.0.1
// and gets its bytes back, because the watchdog handed 127/8 back to the
// kernel's lo and said so; CMD keeps running and its exit status still
// comes back once uloop is resumed. With --watchdog=0 the same connect
// hangs, which is what the watchdog is for.
func TestWatchdog(t *testing.T) {
	for _, tc := range []struct {
		name     string
		watchdog string
		wantEcho bool
	}{
		{"on", "3s", true},
		{"off", "0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := runtimeDir(t)
			// The client's timeout is past the watchdog's 3 s plus the
			// SYN retransmissions at 1 and 3 s, and short enough that
			// "off" fails fast.
			script := `socat TCP-LISTEN:7000,bind=127.0.0.1,fork,reuseaddr EXEC:cat & srv=$!
for i in $(seq 100); do socat -u OPEN:/dev/null TCP:127.0.0.1:7000 2>/dev/null && break; sleep 0.1; done
echo ready
read go
echo "echo:$(echo ping | timeout 12 socat -T 5 - TCP:127.0.0.1:7000)"
echo "uloop rules: $(ip rule | grep -c 'lookup 127')"
read end
kill $srv`
			cmd := uloop(t, rt, "run", "--watchdog", tc.watchdog, "--", "sh", "-c", script)
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			s := start(t, cmd)
			inner := childrenOf(t, s.cmd.Process.Pid)[0]
			if err := unix.Kill(inner, unix.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer unix.Kill(inner, unix.SIGCONT)
			io.WriteString(stdin, "go\n")
			err = netns.Poll(context.Background(), 30*time.Second, func() (bool, error) {
				return strings.Contains(s.out.String(), "uloop rules:"), nil
			})
			if err != nil {
				t.Fatalf("CMD did not finish its connect: stdout %q", s.out)
			}
			out := s.out.String()
			gotEcho := strings.Contains(out, "echo:ping")
			handedBack := strings.Contains(out, "uloop rules: 0")
			said := strings.Contains(s.stderr.String(), "handed back to the kernel's lo")
			if gotEcho != tc.wantEcho || handedBack != tc.wantEcho || said != tc.wantEcho {
				t.Errorf("with --watchdog %s and uloop stopped: echo %v, rule gone %v, said so on stderr %v; want %v for each\nstdout:\n%s\nstderr:\n%s",
					tc.watchdog, gotEcho, handedBack, said, tc.wantEcho, out, s.stderr)
			}
			unix.Kill(inner, unix.SIGCONT)
			io.WriteString(stdin, "end\n")
			stdin.Close()
			if code := s.wait(t); code != 0 {
				t.Errorf("exit status %d after uloop resumed, want CMD's 0", code)
			}
		})
	}
}

// TestInnerKilled: SIGKILL to the process that holds the data path (not to
// uloop run) leaves nothing either: CMD dies with it, and the watchdog
// kills what CMD started in the background, which would otherwise go on
// in a namespace nobody watches; uloop run exits with 128+9.
func TestInnerKilled(t *testing.T) {
	rt := runtimeDir(t)
	s := start(t, uloop(t, rt, "run", "--", "sh", "-c", `sleep 1000 & echo "bg $!"; echo "cmd $$"; echo ready; wait`))
	var bg, sh int
	fmt.Sscanf(s.out.String(), "bg %d\ncmd %d", &bg, &sh)
	nsLink, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", sh))
	if err != nil || bg == 0 {
		t.Fatalf("CMD's namespace: %v (output %q)", err, s.out)
	}
	inner := childrenOf(t, s.cmd.Process.Pid)[0]
	unix.Kill(inner, unix.SIGKILL)
	if code := s.wait(t); code != 128+9 {
		t.Errorf("uloop run exited with %d, want 137 (its inner process was killed)", code)
	}
	err = netns.Poll(context.Background(), 10*time.Second, func() (bool, error) {
		return len(processesIn(nsLink)) == 0 && !alive(bg) && !alive(sh), nil
	})
	if err != nil {
		t.Errorf("after SIGKILL of the inner process: processes in %s: %v, CMD %d alive %v, its child %d alive %v",
			nsLink, processesIn(nsLink), sh, alive(sh), bg, alive(bg))
	}
}
