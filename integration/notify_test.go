//go:build linux

package integration

import (
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// notifySocket listens where a test's uloopd is told NOTIFY_SOCKET is.
func notifySocket(t *testing.T) (string, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	t.Cleanup(func() { sock.Close() })
	return path, sock
}

// TestSystemdNotify: started as a Type=notify unit would start it (with
// NOTIFY_SOCKET set), uloopd sends READY=1 once it is ready. The socket is a
// filesystem one: unlike abstract sockets, those are reachable from any
// network namespace, as systemd's is.
func TestSystemdNotify(t *testing.T) {
	requireRoot(t)
	path, sock := notifySocket(t)
	ns := newNS(t)
	d := launchDaemon(t, []string{"env", "NOTIFY_SOCKET=" + path, "ip", "netns", "exec", ns.name, uloopd(t)})
	d.waitReady(t)
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := sock.Read(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v; want READY=1", err)
	}
	if got := string(buf[:n]); got != "READY=1" {
		t.Errorf("notify message %q, want %q", got, "READY=1")
	}
	d.Stop(t)
}

// TestSystemdWatchdog: under a unit with WatchdogSec= (WATCHDOG_USEC set),
// uloopd sends WATCHDOG=1 while its data path answers the probe, and stops
// when it does not: with its routing rule removed (connections then go
// around the stack, so the probe fails) and while the process is stopped.
// It starts again once the path answers again. systemd, which kills and
// restarts a unit whose watchdog goes quiet, is not in the test: the
// notify socket is.
func TestSystemdWatchdog(t *testing.T) {
	requireRoot(t)
	path, sock := notifySocket(t)
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	// count returns how many WATCHDOG=1 arrived in the next d, after
	// dropping what arrived before.
	count := func(d time.Duration) int {
		for len(msgs) > 0 {
			<-msgs
		}
		n := 0
		deadline := time.After(d)
		for {
			select {
			case m := <-msgs:
				if m == "WATCHDOG=1" {
					n++
				}
			case <-deadline:
				return n
			}
		}
	}
	ns := newNS(t)
	// A probe every 300 ms, each given up to 300 ms.
	d := launchDaemon(t, []string{"env", "NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=600000", "ip", "netns", "exec", ns.name, uloopd(t)})
	d.waitReady(t)
	const window = 2 * time.Second
	settle := func() { time.Sleep(700 * time.Millisecond) } // a probe in flight may still report
	if n := count(window); n < 3 {
		t.Fatalf("healthy: %d WATCHDOG=1 in %v, want a probe's every 300 ms", n, window)
	}

	rule := []string{"iif", "lo", "to", "127.0.0.0/8", "lookup", "127", "pref", "1"}
	ns.mustRun(t, append([]string{"ip", "rule", "del"}, rule...)...)
	settle()
	if n := count(window); n != 0 {
		t.Errorf("with the data path's rule gone: %d WATCHDOG=1 in %v, want none", n, window)
	}
	ns.mustRun(t, append([]string{"ip", "rule", "add"}, rule...)...)
	settle()
	if n := count(window); n < 3 {
		t.Errorf("rule back: %d WATCHDOG=1 in %v, want them again", n, window)
	}

	if err := d.p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	settle()
	n := count(window)
	d.p.Signal(syscall.SIGCONT)
	if n != 0 {
		t.Errorf("uloopd stopped: %d WATCHDOG=1 in %v, want none", n, window)
	}
	settle()
	if n := count(window); n < 3 {
		t.Errorf("uloopd resumed: %d WATCHDOG=1 in %v, want them again", n, window)
	}
	d.Stop(t)
}
