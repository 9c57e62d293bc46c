//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"github.com/vishvananda/netlink"
)

// helperEnv makes the test binary a helper process instead of running the
// tests: "listen tcp PORT" or "listen udp PORT" binds and then blocks.
const helperEnv = "NETNS_TEST_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		f := strings.Fields(h)
		var err error
		switch f[1] {
		case "tcp":
			_, err = net.Listen("tcp", "127.0.0.1:"+f[2])
		case "udp":
			_, err = net.ListenPacket("udp", "127.0.0.1:"+f[2])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

func helper(args ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(args, " "))
	return cmd
}

// newNS creates a namespace for one test; Cleanup deletes it. Register
// processes after it, so that their Cleanup (which stops them) runs first.
func newNS(t *testing.T) *Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	n, err := Create("ulo-nstest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.KillAll(5 * time.Second); err != nil {
			t.Error(err)
		}
		if err := n.Delete(); err != nil {
			t.Error(err)
		}
	})
	return n
}

func startT(t *testing.T, n *Namespace, cmd *exec.Cmd) *Process {
	t.Helper()
	p, err := n.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func TestCreateDelete(t *testing.T) {
	a, b := newNS(t), newNS(t)
	if a.Name() == b.Name() || !strings.HasPrefix(a.Name(), fmt.Sprintf("ulo-nstest-%d-", os.Getpid())) {
		t.Errorf("names %q and %q: want two different ones, prefix-PID-N", a.Name(), b.Name())
	}
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if a.ino == b.ino || a.ino == cur.ino {
		t.Errorf("inodes: a %d, b %d, current %d; want three namespaces", a.ino, b.ino, cur.ino)
	}
	if _, err := CreateNamed(a.Name()); err == nil || !errors.Is(err, os.ErrExist) {
		t.Errorf("CreateNamed(%q) again: got %v, want it to fail as taken", a.Name(), err)
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err == nil && !strings.Contains(string(out), a.Name()) {
		t.Errorf("ip netns list does not show %s:\n%s", a.Name(), out)
	}
	// Fresh: only lo, and down.
	h, err := netlink.NewHandleAt(a.Handle())
	if err != nil {
		t.Fatal(err)
	}
	links, err := h.LinkList()
	h.Close()
	if err != nil || len(links) != 1 || links[0].Attrs().Name != "lo" || links[0].Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("links in a new namespace: got %v (%v), want lo alone, down", links, err)
	}

	c, err := Create("ulo-nstest")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(Dir, c.Name())
	for i := range 2 { // the second Delete finds nothing to do
		if err := c.Delete(); err != nil {
			t.Errorf("Delete %d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Delete: got %v, want it gone", path, err)
	}
	if err := c.Do(func() error { return nil }); err == nil {
		t.Error("Do on a deleted namespace: got no error")
	}
}

func TestDo(t *testing.T) {
	n := newNS(t)
	runtime.LockOSThread() // so that "this thread" below means one thread
	defer runtime.UnlockOSThread()
	before, _ := os.Readlink("/proc/thread-self/ns/net")
	var l net.Listener
	var inside string
	var confs []os.DirEntry
	err := n.Do(func() (err error) {
		inside, _ = os.Readlink("/proc/thread-self/ns/net")
		// Network sysctls follow the thread too.
		confs, _ = os.ReadDir("/proc/sys/net/ipv4/conf")
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if want := fmt.Sprintf("net:[%d]", n.ino); inside != want {
		t.Errorf("fn ran in %s, want %s", inside, want)
	}
	if len(confs) != 3 || confs[0].Name() != "all" || confs[1].Name() != "default" || confs[2].Name() != "lo" {
		t.Errorf("/proc/sys/net/ipv4/conf in Do: got %v, want all, default and lo", confs)
	}
	if after, _ := os.Readlink("/proc/thread-self/ns/net"); after != before {
		t.Errorf("caller's thread: in %s before Do, %s after", before, after)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if ok, err := n.Listening("tcp", port); !ok || err != nil {
		t.Errorf("Listening(tcp, %d) in %s: got %v, %v; want true", port, n, ok, err)
	}
	if ok, err := listening("tcp", port); ok || err != nil {
		t.Errorf("listening(tcp, %d) in the test's namespace: got %v, %v; want false", port, ok, err)
	}
	if err := n.Do(func() error { return errors.New("from fn") }); err == nil || err.Error() != "from fn" {
		t.Errorf("Do: got %v, want fn's error", err)
	}
}

func TestStart(t *testing.T) {
	n := newNS(t)
	var out Output
	cmd := exec.Command("sh", "-c", `readlink /proc/self/ns/net; echo pid $$; exit 3`)
	cmd.Stdout = &out
	p := startT(t, n, cmd)
	if err := p.Wait(); p.ExitCode() != 3 {
		t.Errorf("exit: got %v (code %d), want status 3", err, p.ExitCode())
	}
	want := fmt.Sprintf("net:[%d]\npid %d\n", n.ino, p.Pid())
	if got := out.String(); got != want {
		t.Errorf("output: got %q, want %q (in the namespace, with its own PID)", got, want)
	}

	// A process is in the namespace as soon as Start returns.
	p = startT(t, n, exec.Command("sleep", "60"))
	if !n.Contains(p.Pid()) {
		t.Errorf("%s is not in %s right after Start", p, n)
	}
	if pids, err := n.Pids(); err != nil || len(pids) != 1 || pids[0] != p.Pid() {
		t.Errorf("Pids: got %v, %v; want [%d]", pids, err, p.Pid())
	}
	p.Kill()
	if st := p.State(); st == nil || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("after Kill: got %v, want killed by SIGKILL", st)
	}

	// The caller's own namespace.
	cmd = exec.Command("readlink", "/proc/self/ns/net")
	out = Output{}
	cmd.Stdout = &out
	p, err := StartHere(cmd)
	if err != nil {
		t.Fatal(err)
	}
	p.Wait()
	if here, _ := os.Readlink("/proc/self/ns/net"); out.String() != here+"\n" {
		t.Errorf("StartHere: ran in %q, want %q", out.String(), here)
	}
}

// requireGone fails the test unless pid exits (a zombie counts: it runs
// nothing) within 5 s: a SIGKILL is delivered soon after kill(2) returns,
// not at once.
func requireGone(t *testing.T, pid int, what string) {
	t.Helper()
	err := Poll(context.Background(), 5*time.Second, func() (bool, error) {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return true, nil
		}
		st, err := p.Stat()
		return err != nil || st.State == "Z", nil
	})
	if err != nil {
		t.Errorf("%s (pid %d) survived: %v", what, pid, err)
	}
}

// children starts sh in n with two sleeping children and returns their PIDs.
func children(t *testing.T, n *Namespace, script string) (*Process, []int) {
	t.Helper()
	got := make(chan string, 1)
	out := &Output{OnLine: func(l string) { got <- l }}
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdout = out
	p := startT(t, n, cmd)
	var pids []int
	select {
	case line := <-got:
		for _, f := range strings.Fields(line) {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no PIDs from %q", script)
	}
	return p, pids
}

func TestStop(t *testing.T) {
	n := newNS(t)
	t.Run("group", func(t *testing.T) {
		p, kids := children(t, n, `sleep 60 & a=$!; sleep 60 & echo $a $!; wait`)
		start := time.Now()
		if err := p.Stop(5 * time.Second); err == nil || errors.Is(err, ErrKilled) {
			t.Errorf("Stop: got %v, want the shell's SIGTERM exit", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Errorf("Stop took %v for processes that die on SIGTERM", time.Since(start))
		}
		for _, pid := range kids {
			requireGone(t, pid, "a child after Stop")
		}
	})
	t.Run("ignores-sigterm", func(t *testing.T) {
		p, kids := children(t, n, `trap "" TERM; sleep 60 & echo $!; wait`)
		start := time.Now()
		if err := p.Stop(300 * time.Millisecond); !errors.Is(err, ErrKilled) {
			t.Errorf("Stop: got %v, want ErrKilled", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
			t.Errorf("Stop took %v, want the 300ms grace and little more", d)
		}
		requireGone(t, kids[0], "a child that ignores SIGTERM, after Stop")
	})
	t.Run("leader-exits", func(t *testing.T) {
		// What the leader leaves behind in its group goes with it.
		p, kids := children(t, n, `sleep 60 & echo $!`)
		p.Wait()
		requireGone(t, kids[0], "the child of an exited leader")
	})
	t.Run("kill-all", func(t *testing.T) {
		// setsid: a process that left the group Stop reaches.
		p, kids := children(t, n, `setsid sleep 60 & echo $!; wait`)
		p.Stop(5 * time.Second)
		if err := n.KillAll(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		if pids, _ := n.Pids(); len(pids) != 0 {
			t.Errorf("after KillAll: processes %v in %s", pids, n)
		}
		requireGone(t, kids[0], "a process outside the group, after KillAll")
	})
}

func TestWaitListening(t *testing.T) {
	n := newNS(t)
	ctx := context.Background()
	for i, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			port := 5400 + i
			p := startT(t, n, helper("listen", network, strconv.Itoa(port)))
			if err := p.WaitListening(ctx, network, port, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			other := map[string]string{"tcp": "udp", "udp": "tcp"}[network]
			if ok, _ := n.Listening(other, port); ok {
				t.Errorf("Listening(%s, %d): got true for a %s socket", other, port, network)
			}
		})
	}
	t.Run("exits-first", func(t *testing.T) {
		p := startT(t, n, exec.Command("true"))
		start := time.Now()
		err := p.WaitListening(ctx, "tcp", 5410, 10*time.Second)
		if err == nil || errors.Is(err, ErrTimeout) || time.Since(start) > 5*time.Second {
			t.Errorf("got %v after %v, want an early error saying it exited", err, time.Since(start))
		}
	})
	t.Run("never", func(t *testing.T) {
		p := startT(t, n, exec.Command("sleep", "60"))
		if err := p.WaitListening(ctx, "tcp", 5411, 200*time.Millisecond); !errors.Is(err, ErrTimeout) {
			t.Errorf("got %v, want ErrTimeout", err)
		}
	})
}

func TestPoll(t *testing.T) {
	calls := 0
	err := Poll(context.Background(), time.Second, func() (bool, error) { calls++; return calls == 3, nil })
	if err != nil || calls != 3 {
		t.Errorf("got %v after %d calls, want nil after 3", err, calls)
	}
	stop := errors.New("stop")
	if err := Poll(context.Background(), time.Second, func() (bool, error) { return false, stop }); err != stop {
		t.Errorf("got %v, want cond's error", err)
	}
	start := time.Now()
	if err := Poll(context.Background(), 100*time.Millisecond, func() (bool, error) { return false, nil }); !errors.Is(err, ErrTimeout) || time.Since(start) > time.Second {
		t.Errorf("got %v after %v, want ErrTimeout after 100ms", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Poll(ctx, time.Minute, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

func TestOutput(t *testing.T) {
	var seen []string
	o := Output{Max: 2, OnLine: func(l string) { seen = append(seen, l) }}
	o.Write([]byte("one\ntw"))
	o.Write([]byte("o\nthree\nfou"))
	if got, want := o.String(), "two\nthree\nfou\n"; got != want {
		t.Errorf("String: got %q, want %q", got, want)
	}
	if got, want := o.Tail(1), "fou\n"; got != want {
		t.Errorf("Tail(1): got %q, want %q", got, want)
	}
	if got := strings.Join(seen, ","); got != "one,two,three" {
		t.Errorf("OnLine saw %q, want the complete lines", got)
	}
}
