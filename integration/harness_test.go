package integration

// The harness: namespaces, commands and sockets inside them, the daemon under
// test, its metrics, and the two modes (kernel lo, uloop) most tests run in.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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
// Network namespaces.

// netNS is a named network namespace made for one test. The zero name means
// the test binary's own namespace (used only to read its state).
type netNS struct {
	name string
	h    netns.NsHandle
}

var nsSeq atomic.Int64

// newNS creates a fresh namespace (lo down, nothing else) named
// ulo-it-<pid>-<n>; Cleanup deletes it. Register daemons and processes after
// calling newNS so that their Cleanup (which kills them) runs first.
func newNS(t *testing.T) *netNS {
	t.Helper()
	requireRoot(t)
	name := fmt.Sprintf("ulo-it-%d-%d", os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &netNS{name: name, h: -1}
	t.Cleanup(func() {
		if n.h >= 0 {
			n.h.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("opening namespace %s: %v", name, err)
	}
	n.h = h
	return n
}

// do runs fn on an OS thread that has entered the namespace. Sockets fn
// creates keep the namespace for their whole life. Goroutines that fn starts do
// not run in the namespace: create every socket in fn itself.
func (n *netNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.h); err != nil {
			runtime.UnlockOSThread() // still in the original namespace
			errc <- fmt.Errorf("entering namespace %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the runtime ends a thread whose goroutine exits
			// locked, so no other goroutine ever runs in namespace n by
			// accident.
			errc <- errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", n.name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func (n *netNS) String() string {
	if n.name == "" {
		return "(test namespace)"
	}
	return n.name
}

// command returns argv run inside the namespace via `ip netns exec`, which
// execs argv in place: the command's PID is argv[0]'s.
func (n *netNS) command(ctx context.Context, argv ...string) *exec.Cmd {
	if n.name == "" {
		return exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, argv...)...)
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
	return n.runTimeout(t, commandTimeout, argv...)
}

func (n *netNS) runTimeout(t *testing.T, timeout time.Duration, argv ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := n.command(ctx, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	r := result{argv: argv, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running %q in %s: %v", argv, n, err)
	}
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

// proc is a background process in a namespace.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// start runs argv in the background; Cleanup kills it.
func (n *netNS) start(t *testing.T, argv ...string) *proc {
	t.Helper()
	cmd := n.command(context.Background(), argv...)
	p := &proc{cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %q in %s: %v", argv, n, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %q:\n%s", argv, p.out)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitListening polls /proc/PID/net/{tcp,tcp6} (which show the process's own
// namespace) until the process has a TCP socket listening on port.
func waitListening(t *testing.T, p *proc, port int) {
	t.Helper()
	want := fmt.Sprintf(":%04X ", port)
	pollUntil(t, readyTimeout, fmt.Sprintf("%q listening on port %d", p.cmd.Args, port), func() (bool, string) {
		if p.exited() {
			t.Fatalf("%q exited before listening: %v\n%s", p.cmd.Args, p.cmd.ProcessState, p.out)
		}
		for _, f := range []string{"tcp", "tcp6"} {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", p.cmd.Process.Pid, f))
			for _, line := range strings.Split(string(b), "\n") {
				fields := strings.Fields(line)
				// sl local_address rem_address st ...; st 0A is LISTEN.
				if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", want) && fields[3] == "0A" {
					return true, ""
				}
			}
		}
		return false, "not listening yet"
	})
}

// pollUntil calls cond until it reports true or timeout passes, then fails the
// test with what, and the last detail cond gave.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := 5 * time.Millisecond
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not reached within %v (last: %s)", what, timeout, detail)
		}
		time.Sleep(delay)
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

// lockedBuffer is an io.Writer safe for the concurrent writes of exec's
// stdout/stderr copiers; onLine, if set, sees every complete line.
type lockedBuffer struct {
	mu      sync.Mutex // mu guards buf and partial
	buf     bytes.Buffer
	partial []byte
	onLine  func(string)
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.onLine != nil {
		b.partial = append(b.partial, p...)
		for {
			i := bytes.IndexByte(b.partial, '\n')
			if i < 0 {
				break
			}
			b.onLine(string(b.partial[:i]))
			b.partial = b.partial[i+1:]
		}
	}
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
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
	var c *net.UDPConn
	err := n.do(func() error {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp", a)
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, n, err)
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

// forceRcvBuf sets SO_RCVBUFFORCE (root may exceed net.core.rmem_max), so a
// burst of datagrams cannot overflow the socket: any loss is then the path's.
func forceRcvBuf(t *testing.T, c *net.UDPConn, size int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("SO_RCVBUFFORCE: %v", serr)
	}
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
	c, err := n.dial(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-errc; err != nil {
		t.Fatalf("writing to %s: %v", addr, err)
	}
	if rerr != nil {
		t.Fatalf("reading echo from %s: %v", addr, rerr)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo from %s: got %d bytes, want the %d sent (equal: false)", addr, len(got), len(msg))
	}
}

// ---------------------------------------------------------------------------
// The daemon.

// readyRE matches the daemon's `ready` log line but not words like "already".
var readyRE = regexp.MustCompile(`\bready\b`)

type daemon struct {
	argv  []string
	cmd   *exec.Cmd
	logs  *lockedBuffer
	ready chan struct{}
	done  chan struct{}
}

// startDaemon runs uloopd inside ns (via ip netns exec) with args and waits for
// its ready line. Cleanup kills it if it is still running.
func startDaemon(t *testing.T, ns *netNS, args ...string) *daemon {
	t.Helper()
	argv := append([]string{"ip", "netns", "exec", ns.name, uloopd(t)}, args...)
	d := launchDaemon(t, argv)
	d.waitReady(t)
	return d
}

// launchDaemon starts argv (a uloopd command line) without waiting.
func launchDaemon(t *testing.T, argv []string) *daemon {
	t.Helper()
	return launchDaemonOnReady(t, argv, nil)
}

// launchDaemonOnReady is launchDaemon that also calls onReady, if not nil,
// the moment the ready line arrives: on the goroutine that reads the
// daemon's output, before d.ready is closed.
func launchDaemonOnReady(t *testing.T, argv []string, onReady func(d *daemon)) *daemon {
	t.Helper()
	d := &daemon{argv: argv, logs: &lockedBuffer{}, ready: make(chan struct{}), done: make(chan struct{})}
	var once sync.Once
	d.logs.onLine = func(line string) {
		if readyRE.MatchString(line) && !strings.Contains(line, "level=ERROR") {
			once.Do(func() {
				if onReady != nil {
					onReady(d)
				}
				close(d.ready)
			})
		}
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stderr = d.logs
	d.cmd.Stdout = d.logs
	// If the test binary dies, so does the daemon.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting %q: %v", argv, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		if !d.exited() {
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("uloopd logs (%q):\n%s", argv, d.logs)
		}
	})
	return d
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-d.ready:
	case <-d.done:
		t.Fatalf("uloopd exited before ready: %v\nlogs:\n%s", d.cmd.ProcessState, d.logs)
	case <-time.After(readyTimeout):
		t.Fatalf("uloopd: no ready line within %v\nlogs:\n%s", readyTimeout, d.logs)
	}
}

// requireRunning fails the test if the daemon has exited.
func (d *daemon) requireRunning(t *testing.T) {
	t.Helper()
	if d.exited() {
		t.Fatalf("uloopd exited unexpectedly: %v\nlogs:\n%s", d.cmd.ProcessState, d.logs)
	}
}

// Stop sends SIGTERM and requires exit status 0 within stopTimeout.
func (d *daemon) Stop(t *testing.T) {
	t.Helper()
	d.requireRunning(t)
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		d.cmd.Process.Kill()
		<-d.done
		t.Fatalf("uloopd still running %v after SIGTERM (killed)\nlogs:\n%s", stopTimeout, d.logs)
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("uloopd after SIGTERM: got %v, want exit status 0\nlogs:\n%s", d.cmd.ProcessState, d.logs)
	}
}

// Kill sends SIGKILL and waits: nothing of the daemon's own cleanup runs.
func (d *daemon) Kill(t *testing.T) {
	t.Helper()
	d.requireRunning(t)
	d.cmd.Process.Kill()
	<-d.done
}

// runDaemonToExit runs a uloopd command line that is expected to fail and
// returns its exit code and output. A daemon that gets ready instead is killed
// and the test fails.
func runDaemonToExit(t *testing.T, argv []string) (code int, logs string) {
	t.Helper()
	d := launchDaemon(t, argv)
	select {
	case <-d.done:
	case <-d.ready:
		d.cmd.Process.Kill()
		<-d.done
		t.Fatalf("%q: got ready, want it to fail\nlogs:\n%s", argv, d.logs)
	case <-time.After(readyTimeout):
		d.cmd.Process.Kill()
		<-d.done
		t.Fatalf("%q: still running after %v, want it to fail promptly\nlogs:\n%s", argv, readyTimeout, d.logs)
	}
	return d.cmd.ProcessState.ExitCode(), d.logs.String()
}

// ---------------------------------------------------------------------------
// Metrics and counters.

// metrics fetches GET /metrics from the daemon's control socket, the abstract
// unix socket @uloopd in ns (abstract sockets belong to a network namespace,
// so the socket is made inside ns), and parses the Prometheus text.
func metrics(t *testing.T, ns *netNS) map[string]float64 {
	t.Helper()
	m, err := fetchMetrics(ns)
	if err != nil {
		t.Fatalf("metrics from @uloopd in %s: %v", ns, err)
	}
	return m
}

// controlClient is an HTTP client for the daemon's control socket in ns:
// the abstract socket @uloopd belongs to the namespace, so every connection
// is dialed from inside it.
func controlClient(ns *netNS, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var c net.Conn
			err := ns.do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, "unix", "@uloopd")
				return err
			})
			return c, err
		},
	}}
}

func fetchMetrics(ns *netNS) (map[string]float64, error) {
	resp, err := controlClient(ns, 5*time.Second).Get("http://uloopd/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /metrics: %s: %s", resp.Status, b)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text exposition format (version 0.0.4)
// into series -> value, where a series is the name plus its label set as
// written (`name` or `name{a="b"}`).
func parseMetrics(r io.Reader) (map[string]float64, error) {
	m := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, rest := line, ""
		if i := strings.IndexByte(line, '{'); i >= 0 && i < strings.IndexAny(line+" ", " \t") {
			j := closingBrace(line, i)
			if j < 0 {
				return nil, fmt.Errorf("unterminated labels: %q", line)
			}
			series, rest = line[:j+1], line[j+1:]
		} else if i := strings.IndexAny(line, " \t"); i >= 0 {
			series, rest = line[:i], line[i:]
		}
		fields := strings.Fields(rest) // value [timestamp]
		if len(fields) < 1 {
			return nil, fmt.Errorf("no value: %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("bad value in %q: %v", line, err)
		}
		m[series] = v
	}
	return m, sc.Err()
}

// closingBrace returns the index of the '}' closing the label set that opens
// at line[open], skipping quoted label values.
func closingBrace(line string, open int) int {
	inQuote := false
	for i := open + 1; i < len(line); i++ {
		switch c := line[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return i
		}
	}
	return -1
}

// metricValue returns the value of an unlabelled metric, or the sum of its
// labelled series; a metric the daemon does not export fails the test (a
// missing counter must not read as zero).
func metricValue(t *testing.T, m map[string]float64, name string) float64 {
	t.Helper()
	if v, ok := m[name]; ok {
		return v
	}
	sum, found := 0.0, false
	for k, v := range m {
		if strings.HasPrefix(k, name+"{") {
			sum += v
			found = true
		}
	}
	if !found {
		var names []string
		for k := range m {
			if strings.HasPrefix(k, "uloop_") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		t.Fatalf("metric %s not exported; uloop_* series: %v", name, names)
	}
	return sum
}

// linkStats reads a device's kernel statistics in ns through netlink.
func linkStats(t *testing.T, ns *netNS, dev string) *netlink.LinkStatistics {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns, err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("link %s in %s: %v", dev, ns, err)
	}
	s := l.Attrs().Statistics
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
	m    map[string]float64      // the daemon's metrics
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
	after := e.snapshot(t)
	if after.link.TxPackets <= before.link.TxPackets {
		t.Errorf("%s tx_packets (kernel -> daemon): got %d, want > %d", tunDev, after.link.TxPackets, before.link.TxPackets)
	}
	if after.link.RxPackets <= before.link.RxPackets {
		t.Errorf("%s rx_packets (daemon -> kernel): got %d, want > %d", tunDev, after.link.RxPackets, before.link.RxPackets)
	}
	for _, name := range []string{"uloop_tun_rx_packets_total", "uloop_tun_tx_packets_total"} {
		if a, b := metricValue(t, after.m, name), metricValue(t, before.m, name); a <= b {
			t.Errorf("%s: got %v, want > %v", name, a, b)
		}
	}
}

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
	m, err := fetchMetrics(e.ns)
	if err != nil {
		fmt.Fprintf(&b, "\nmetrics: %v", err)
		return b.String()
	}
	var names []string
	for k := range m {
		if strings.HasPrefix(k, "uloop_") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "\n%s %v", k, m[k])
	}
	return b.String()
}

// requireGrew checks that metric grew by at least min since before. No-op in
// kernel mode.
func (e *env) requireGrew(t *testing.T, before *counters, name string, min float64) {
	t.Helper()
	if before == nil {
		return
	}
	after := metrics(t, e.ns)
	a, b := metricValue(t, after, name), metricValue(t, before.m, name)
	if a-b < min {
		t.Errorf("%s grew by %v (from %v to %v), want >= %v", name, a-b, b, a, min)
	}
}
