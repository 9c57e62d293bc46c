//go:build linux

package integration

// The harness: namespaces, commands and sockets inside them, the daemon under
// test, its metrics, and the two modes (kernel lo, uloop) most tests run in.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/netns"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
)

const (
	tunDev         = "ulo0"           // uloopd's default device name
	readyTimeout   = 10 * time.Second // from start to the `ready` log line
	stopTimeout    = 15 * time.Second // from SIGTERM to exit
	commandTimeout = 60 * time.Second // any single command a test runs
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	// Every goroutine a test starts (servers, relays, pollers) must be gone
	// once its Cleanup has run.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "leaked goroutines: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, TUN devices)")
	}
}

// ---------------------------------------------------------------------------
// The binary under test.

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildDir  string // removed by TestMain
)

// uloopd returns the path of the daemon binary: $ULOOPD if set, else
// ./cmd/uloopd built once per test binary into a temporary directory. Building
// here keeps the tests independent of a stale bin/uloopd.
func uloopd(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("ULOOPD"); p != "" {
			buildPath, buildErr = filepath.Abs(p)
			return
		}
		root, err := repoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "uloopd-it-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		// World-searchable: TestErrors runs the binary as nobody.
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		out := filepath.Join(dir, "uloopd")
		cmd := exec.Command(goTool(), "build", "-o", out, "./cmd/uloopd")
		cmd.Dir = root
		// As make build does: without cgo uloopd can drop capabilities
		// on all its threads.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/uloopd: %v\n%s", err, b)
			return
		}
		buildPath = out
	})
	if buildErr != nil {
		t.Fatalf("no uloopd binary: %v", buildErr)
	}
	return buildPath
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the test directory")
		}
		dir = parent
	}
}

func goTool() string {
	// go test puts $GOROOT/bin first in PATH.
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// ---------------------------------------------------------------------------
// Network namespaces, and commands in them.

// netNS is a network namespace made for one test. A netNS without a
// Namespace (&netNS{}) stands for the test binary's own namespace, used only
// to read its state.
type netNS struct {
	name string
	ns   *netns.Namespace
}

// newNS creates a fresh namespace (lo down, nothing else) named
// ulo-it-<pid>-<n>; Cleanup kills whatever still runs in it and deletes it.
// Register daemons and processes after calling newNS so that their Cleanup
// (which stops them) runs first.
func newNS(t *testing.T) *netNS {
	t.Helper()
	requireRoot(t)
	ns, err := netns.Create("ulo-it")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := errors.Join(ns.KillAll(5*time.Second), ns.Delete()); err != nil {
			t.Error(err)
		}
	})
	return &netNS{name: ns.Name(), ns: ns}
}

// do runs fn on an OS thread in the namespace (see netns.Namespace.Do):
// create every socket in fn itself.
func (n *netNS) do(fn func() error) error {
	if n.ns == nil {
		return fn()
	}
	return n.ns.Do(fn)
}

func (n *netNS) String() string {
	if n.ns == nil {
		return "(test namespace)"
	}
	return n.name
}

// startCmd starts cmd in the namespace.
func (n *netNS) startCmd(cmd *exec.Cmd) (*netns.Process, error) {
	if n.ns == nil {
		return netns.StartHere(cmd)
	}
	return n.ns.Start(cmd)
}

// result is a finished command.
type result struct {
	argv           []string
	stdout, stderr string
	code           int // exit status; -1 if killed by a signal
}

func (r result) String() string {
	return fmt.Sprintf("`%s`: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.argv, " "), r.code, r.stdout, r.stderr)
}

// run runs argv in the namespace to completion (at most commandTimeout).
func (n *netNS) run(t *testing.T, argv ...string) result {
	t.Helper()
	return n.runIn(t, commandTimeout, "", argv...)
}

// runIn runs argv in the namespace, in directory dir ("" for the test's),
// for at most timeout.
func (n *netNS) runIn(t *testing.T, timeout time.Duration, dir string, argv ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	p, err := n.startCmd(cmd)
	if err != nil {
		t.Fatalf("in %s: %v", n, err)
	}
	p.Wait()
	r := result{argv: argv, stdout: stdout.String(), stderr: stderr.String(), code: p.ExitCode()}
	if ctx.Err() != nil {
		t.Fatalf("%q in %s did not finish within %v\n%s", argv, n, timeout, r)
	}
	return r
}

// mustRun runs argv in the namespace and fails the test unless it exits 0.
func (n *netNS) mustRun(t *testing.T, argv ...string) string {
	t.Helper()
	r := n.run(t, argv...)
	if r.code != 0 {
		t.Fatalf("in %s: %s", n, r)
	}
	return r.stdout
}

// proc is a background process in a namespace, with its output.
type proc struct {
	*netns.Process
	out *netns.Output
}

// start runs argv in the background; Cleanup kills its process group.
func (n *netNS) start(t *testing.T, argv ...string) *proc {
	t.Helper()
	p := &proc{out: &netns.Output{}}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	var err error
	if p.Process, err = n.startCmd(cmd); err != nil {
		t.Fatalf("in %s: %v", n, err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("output of %s:\n%s", p, p.out)
		}
	})
	return p
}

// waitListening waits until the process's namespace has a TCP socket
// listening on port (see netns.Process.WaitListening).
func waitListening(t *testing.T, p *proc, port int) {
	t.Helper()
	if err := p.WaitListening(context.Background(), "tcp", port, readyTimeout); err != nil {
		t.Fatalf("%v\n%s", err, p.out)
	}
}

// pollUntil calls cond until it reports true or timeout passes, then fails the
// test with what, and the last detail cond gave.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if err := waitFor(timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// waitFor is pollUntil that returns the failure instead.
func waitFor(timeout time.Duration, cond func() (bool, string)) error {
	var last string
	err := netns.Poll(context.Background(), timeout, func() (ok bool, _ error) {
		ok, last = cond()
		return ok, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Sockets inside a namespace.

func (n *netNS) listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := n.do(func() (err error) { l, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, n, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func (n *netNS) listenUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	return n.listenUDPNet(t, "udp", addr)
}

// listenUDPNet is listenUDP on network "udp", "udp4" or "udp6" ("udp6" on
// "[::]:0": an IPv6-only socket).
func (n *netNS) listenUDPNet(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := n.do(func() error {
		a, err := net.ResolveUDPAddr(network, addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP(network, a)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, n, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dial connects from inside the namespace; the caller closes the connection.
func (n *netNS) dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

func (n *netNS) mustDial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	c, err := n.dial(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s in %s: %v", network, addr, n, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sockopt runs fn, a socket option call named what, on c's descriptor and
// fails the test if it fails.
func sockopt(t *testing.T, c syscall.Conn, what string, fn func(fd int) error) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = fn(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("%s: %v", what, serr)
	}
}

// forceRcvBuf sets SO_RCVBUFFORCE (root may exceed net.core.rmem_max), so a
// burst of datagrams cannot overflow the socket: any loss is then the path's.
func forceRcvBuf(t *testing.T, c *net.UDPConn, size int) {
	t.Helper()
	sockopt(t, c, "SO_RCVBUFFORCE", func(fd int) error {
		return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size)
	})
}

func portOf(a net.Addr) int {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	}
	panic(fmt.Sprintf("no port in %T", a))
}

// tcpEcho serves l: every accepted connection gets back what it sends, then
// the server closes its side after the client's FIN. Cleanup closes l and
// waits for the handlers.
func tcpEcho(t *testing.T, l net.Listener) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // mu guards conns
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * commandTimeout))
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close() // a failed test may leave clients that never close
		}
		mu.Unlock()
		wg.Wait()
	})
}

// tcpRoundTrip dials addr (an echo server), sends msg, half-closes and checks
// that exactly msg comes back.
func tcpRoundTrip(t *testing.T, n *netNS, network, addr string, msg []byte) {
	t.Helper()
	if err := roundTrip(n, network, addr, msg); err != nil {
		t.Fatalf("echo from %s: %v", addr, err)
	}
}

// roundTrip is tcpRoundTrip for use off the test goroutine.
func roundTrip(ns *netNS, network, addr string, msg []byte) error {
	c, err := ns.dial(network, addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return fmt.Errorf("%s: write: %w", c.LocalAddr(), err)
	}
	if rerr != nil {
		return fmt.Errorf("%s: read: %w (after %d bytes)", c.LocalAddr(), rerr, len(got))
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("%s: echo: got %d bytes, want the %d sent back unchanged", c.LocalAddr(), len(got), len(msg))
	}
	return nil
}

// dialUDP opens a UDP socket in ns connected to srv; Cleanup closes it.
func dialUDP(t *testing.T, ns *netNS, network string, srv *net.UDPAddr) *net.UDPConn {
	t.Helper()
	c, err := dialUDPErr(ns, network, srv)
	if err != nil {
		t.Fatalf("dial %s %s in %s: %v", network, srv, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialUDPErr is dialUDP off the test goroutine; the caller closes c.
func dialUDPErr(ns *netNS, network string, srv *net.UDPAddr) (c *net.UDPConn, err error) {
	err = ns.do(func() (err error) { c, err = net.DialUDP(network, nil, srv); return err })
	return c, err
}

// ---------------------------------------------------------------------------
// The daemon.

// readyRE matches the daemon's `ready` log line but not words like "already".
var readyRE = regexp.MustCompile(`\bready\b`)

type daemon struct {
	p     *netns.Process
	logs  *netns.Output
	ready chan struct{}
}

// startDaemon runs uloopd with args inside ns and waits for its ready line.
// Cleanup kills it if it is still running.
func startDaemon(t *testing.T, ns *netNS, args ...string) *daemon {
	t.Helper()
	d := launchDaemonIn(t, ns, append([]string{uloopd(t)}, args...), nil)
	d.waitReady(t)
	return d
}

// launchDaemon starts argv (a uloopd command line, maybe behind env, ip
// netns exec or setpriv) in the test's own namespace without waiting.
func launchDaemon(t *testing.T, argv []string) *daemon {
	t.Helper()
	return launchDaemonIn(t, &netNS{}, argv, nil)
}

// launchDaemonIn starts argv in ns without waiting. It calls onReady, if not
// nil, the moment the ready line arrives: on the goroutine that reads the
// daemon's output, before d.ready is closed.
func launchDaemonIn(t *testing.T, ns *netNS, argv []string, onReady func(d *daemon)) *daemon {
	t.Helper()
	d := &daemon{ready: make(chan struct{})}
	var once sync.Once
	d.logs = &netns.Output{OnLine: func(line string) {
		if readyRE.MatchString(line) && !strings.Contains(line, "level=ERROR") {
			once.Do(func() {
				if onReady != nil {
					onReady(d)
				}
				close(d.ready)
			})
		}
	}}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = d.logs, d.logs
	var err error
	if d.p, err = ns.startCmd(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.p.Kill()
		if t.Failed() {
			t.Logf("uloopd logs (%s):\n%s", d.p, d.logs)
		}
	})
	return d
}

func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-d.ready:
	case <-d.p.Done():
		t.Fatalf("uloopd exited before ready: %v\nlogs:\n%s", d.p.State(), d.logs)
	case <-time.After(readyTimeout):
		t.Fatalf("uloopd: no ready line within %v\nlogs:\n%s", readyTimeout, d.logs)
	}
}

// requireRunning fails the test if the daemon has exited.
func (d *daemon) requireRunning(t *testing.T) {
	t.Helper()
	if d.p.Exited() {
		t.Fatalf("uloopd exited unexpectedly: %v\nlogs:\n%s", d.p.State(), d.logs)
	}
}

// waitExit waits for the daemon to exit after what (a signal, a fault) and
// returns how long that took; past stopTimeout it kills the daemon and
// fails the test.
func (d *daemon) waitExit(t *testing.T, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-d.p.Done():
		return time.Since(start)
	case <-time.After(stopTimeout):
		d.p.Kill()
		t.Fatalf("uloopd still running %v after %s (killed)\nlogs:\n%s", stopTimeout, what, d.logs)
		return 0
	}
}

// Stop sends SIGTERM and requires exit status 0 within stopTimeout.
func (d *daemon) Stop(t *testing.T) {
	t.Helper()
	d.requireRunning(t)
	if err := d.p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	d.waitExit(t, "SIGTERM")
	if code := d.p.ExitCode(); code != 0 {
		t.Fatalf("uloopd after SIGTERM: got %v, want exit status 0\nlogs:\n%s", d.p.State(), d.logs)
	}
}

// Kill sends SIGKILL and waits: nothing of the daemon's own cleanup runs.
func (d *daemon) Kill(t *testing.T) {
	t.Helper()
	d.requireRunning(t)
	d.p.Kill()
}

// runDaemonToExit runs a uloopd command line that is expected to fail and
// returns its exit code and output. A daemon that gets ready instead is killed
// and the test fails.
func runDaemonToExit(t *testing.T, argv []string) (code int, logs string) {
	t.Helper()
	d := launchDaemon(t, argv)
	select {
	case <-d.p.Done():
	case <-d.ready:
		d.p.Kill()
		t.Fatalf("%q: got ready, want it to fail\nlogs:\n%s", argv, d.logs)
	case <-time.After(readyTimeout):
		d.p.Kill()
		t.Fatalf("%q: still running after %v, want it to fail promptly\nlogs:\n%s", argv, readyTimeout, d.logs)
	}
	return d.p.ExitCode(), d.logs.String()
}

// ---------------------------------------------------------------------------
// Metrics and counters.

// metrics scrapes the daemon's metrics from its control socket in ns.
func metrics(t *testing.T, ns *netNS) control.Metrics {
	t.Helper()
	m, err := control.New(ns.ns, 5*time.Second).Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// metricValue returns the value of metric name, summed over its series that
// carry the labels given (name, value pairs); a metric the daemon does not
// export fails the test (a missing counter must not read as zero).
func metricValue(t *testing.T, m control.Metrics, name string, labels ...string) float64 {
	t.Helper()
	v, err := m.Value(name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// link reads a device in ns through netlink.
func link(t *testing.T, ns *netNS, dev string) netlink.Link {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.ns.Handle())
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns, err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("link %s in %s: %v", dev, ns, err)
	}
	return l
}

// linkStats reads a device's kernel statistics in ns.
func linkStats(t *testing.T, ns *netNS, dev string) *netlink.LinkStatistics {
	t.Helper()
	s := link(t, ns, dev).Attrs().Statistics
	if s == nil {
		t.Fatalf("link %s in %s: no statistics", dev, ns)
	}
	c := *s
	return &c
}

// ---------------------------------------------------------------------------
// Modes.

// env is where one mode of a test runs.
type env struct {
	mode string // "kernel" or "uloop"
	ns   *netNS
	d    *daemon // nil in kernel mode
}

func (e *env) uloop() bool { return e.d != nil }

// kernelEnv: a fresh namespace with lo up and no daemon.
func kernelEnv(t *testing.T) *env {
	t.Helper()
	ns := newNS(t)
	ns.mustRun(t, "ip", "link", "set", "lo", "up")
	return &env{mode: "kernel", ns: ns}
}

// uloopEnv: a fresh namespace with uloopd started by the test and ready. The
// daemon brings lo up itself.
func uloopEnv(t *testing.T, args ...string) *env {
	t.Helper()
	ns := newNS(t)
	return &env{mode: "uloop", ns: ns, d: startDaemon(t, ns, args...)}
}

// bothModes runs fn as subtest "kernel" and as subtest "uloop".
func bothModes(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Helper()
	requireRoot(t)
	t.Run("kernel", func(t *testing.T) { fn(t, kernelEnv(t)) })
	t.Run("uloop", func(t *testing.T) { fn(t, uloopEnv(t)) })
}

// uloopOnly runs fn as subtest "uloop" (so that -run /kernel skips it).
func uloopOnly(t *testing.T, fn func(t *testing.T)) {
	t.Helper()
	requireRoot(t)
	t.Run("uloop", fn)
}

// counters is what uloop mode compares before and after a test's traffic.
type counters struct {
	link *netlink.LinkStatistics // ulo0 as the kernel counts it
	m    control.Metrics         // the daemon's metrics
}

// snapshot returns the counters now; nil in kernel mode.
func (e *env) snapshot(t *testing.T) *counters {
	t.Helper()
	if !e.uloop() {
		return nil
	}
	e.d.requireRunning(t)
	return &counters{link: linkStats(t, e.ns, tunDev), m: metrics(t, e.ns)}
}

// requireCrossed checks that traffic since before went through the TUN: the
// kernel sent packets into ulo0 (its tx) and got packets back from it (its
// rx), and the daemon counted packets both ways. No-op in kernel mode.
func (e *env) requireCrossed(t *testing.T, before *counters) {
	t.Helper()
	if before == nil {
		return
	}
	e.requireSoon(t, func(after *counters) (failures []string) {
		if after.link.TxPackets <= before.link.TxPackets {
			failures = append(failures, fmt.Sprintf("%s tx_packets (kernel -> daemon): got %d, want > %d", tunDev, after.link.TxPackets, before.link.TxPackets))
		}
		if after.link.RxPackets <= before.link.RxPackets {
			failures = append(failures, fmt.Sprintf("%s rx_packets (daemon -> kernel): got %d, want > %d", tunDev, after.link.RxPackets, before.link.RxPackets))
		}
		for _, name := range []string{"uloop_tun_rx_packets_total", "uloop_tun_tx_packets_total"} {
			if a, b := metricValue(t, after.m, name), metricValue(t, before.m, name); a <= b {
				failures = append(failures, fmt.Sprintf("%s: got %v, want > %v", name, a, b))
			}
		}
		return failures
	})
}

// requireSoon fails the test with what check finds wrong unless, within
// counterLag, a snapshot passes it. uloopd counts a packet just after it
// wrote it to ulo0, so the program it was for may have it before the
// counter moves.
func (e *env) requireSoon(t *testing.T, check func(after *counters) []string) {
	t.Helper()
	var failures []string
	waitFor(counterLag, func() (bool, string) {
		failures = check(e.snapshot(t))
		return len(failures) == 0, ""
	})
	for _, f := range failures {
		t.Error(f)
	}
}

// counterLag bounds how long after a program sees its packet uloopd's
// counters may take to show it.
const counterLag = 2 * time.Second

// diagnostics describes the path's state for a failure message: ulo0's
// drop and error counters and the daemon's uloop_* metrics. "" in kernel mode.
func (e *env) diagnostics(t *testing.T) string {
	t.Helper()
	if !e.uloop() {
		return ""
	}
	l := linkStats(t, e.ns, tunDev)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s: tx_packets %d tx_dropped %d tx_errors %d rx_packets %d rx_dropped %d rx_errors %d",
		tunDev, l.TxPackets, l.TxDropped, l.TxErrors, l.RxPackets, l.RxDropped, l.RxErrors)
	m, err := control.New(e.ns.ns, 5*time.Second).Metrics(context.Background())
	if err != nil {
		fmt.Fprintf(&b, "\nmetrics: %v", err)
		return b.String()
	}
	b.WriteString("\n" + m.Summary())
	return b.String()
}

// requireGrew checks that metric grew by at least min since before. No-op in
// kernel mode.
func (e *env) requireGrew(t *testing.T, before *counters, name string, min float64) {
	t.Helper()
	if before == nil {
		return
	}
	e.requireSoon(t, func(after *counters) []string {
		if a, b := metricValue(t, after.m, name), metricValue(t, before.m, name); a-b < min {
			return []string{fmt.Sprintf("%s grew by %v (from %v to %v), want >= %v", name, a-b, b, a, min)}
		}
		return nil
	})
}
