//go:build linux

package main

// Tests of `uloop run` and `uloop status` with the built binary and real
// programs (sh, python3 -m http.server, curl, nc). They need root, except
// TestRootless's user, which they create.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/netns"
	"golang.org/x/sys/unix"
)

const cmdTimeout = 60 * time.Second

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// uloopBin builds ./cmd/uloop once, as make build does (CGO_ENABLED=0),
// into a directory every user may read (TestRootless runs it as another).
func uloopBin(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, TUN devices, other users)")
	}
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "uloop-test-"); buildErr != nil {
			return
		}
		if buildErr = os.Chmod(buildDir, 0o755); buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "uloop"), ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "uloop")
}

// runtimeDir gives the test's uloop commands a session directory of their
// own, so that status sees only the test's sessions.
func runtimeDir(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	return dir
}

// uloop returns the command `uloop args...` with XDG_RUNTIME_DIR set to
// rtdir, in a process group of its own (the test signals it).
func uloop(t *testing.T, rtdir string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, uloopBin(t), args...)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rtdir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs cmd and returns its stdout and exit status; stderr goes to the
// test log.
func run(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if stderr.Len() > 0 {
		t.Logf("%s: stderr:\n%s", strings.Join(cmd.Args, " "), stderr.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	return stdout.String(), cmd.ProcessState.ExitCode()
}

// started is a `uloop run` running in the background whose CMD has said
// "ready" on stdout.
type started struct {
	cmd    *exec.Cmd
	out    *netns.Output
	stderr *netns.Output
	done   chan error
}

func start(t *testing.T, cmd *exec.Cmd) *started {
	t.Helper()
	s := &started{cmd: cmd, out: &netns.Output{}, stderr: &netns.Output{}, done: make(chan error, 1)}
	ready := make(chan struct{})
	var once sync.Once
	s.out.OnLine = func(line string) {
		if line == "ready" {
			once.Do(func() { close(ready) })
		}
	}
	cmd.Stdout, cmd.Stderr = s.out, s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		<-s.done
		if s.stderr.String() != "" {
			t.Logf("%s: stderr:\n%s", strings.Join(cmd.Args, " "), s.stderr.String())
		}
	})
	select {
	case <-ready:
	case err := <-s.done:
		s.done <- err
		t.Fatalf("%s exited (%v) before CMD was ready; stdout:\n%s", strings.Join(cmd.Args, " "), err, s.out)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: CMD not ready after 20 s; stdout:\n%s", strings.Join(cmd.Args, " "), s.out)
	}
	return s
}

// wait waits for the run to exit and returns its exit status.
func (s *started) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not exit; stdout:\n%s", strings.Join(s.cmd.Args, " "), s.out)
	}
	return s.cmd.ProcessState.ExitCode()
}

func TestExitStatus(t *testing.T) {
	rt := runtimeDir(t)
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"true"}, 0},
		{[]string{"sh", "-c", "exit 7"}, 7},
		{[]string{"sh", "-c", "kill -TERM $$"}, 128 + 15},
		{[]string{"sh", "-c", "kill -KILL $$"}, 128 + 9},
		{[]string{"/nonexistent/command"}, exitNotFound},
		{[]string{"/dev/null"}, exitCannotExec},
		{[]string{"--prefix", "10.0.0.0/8", "true"}, exitFailed},
	} {
		args := append([]string{"run"}, tt.args...)
		if _, got := run(t, uloop(t, rt, args...)); got != tt.want {
			t.Errorf("uloop %s: exit status %d, want %d", strings.Join(args, " "), got, tt.want)
		}
	}
	assertNoSessions(t, rt)
}

func TestStdin(t *testing.T) {
	cmd := uloop(t, runtimeDir(t), "run", "--", "sh", "-c", "tr a-z A-Z; echo done")
	cmd.Stdin = strings.NewReader("piped through\n")
	if out, code := run(t, cmd); out != "PIPED THROUGH\ndone\n" || code != 0 {
		t.Errorf("got %q, status %d; want CMD to read stdin to its end", out, code)
	}
}

// A script that reports each signal it gets, and exits a little after the
// first with a status of its own: a signal delivered twice shows.
const trapScript = `trap 'echo got INT; code=42' INT; trap 'echo got TERM; code=43' TERM; trap 'echo got HUP; code=44' HUP
echo ready; while [ -z "$code" ]; do sleep 0.05; done; sleep 0.3; exit $code`

// TestSignals: Ctrl-C as a terminal sends it (SIGINT to uloop's whole
// process group) and signals sent to uloop alone reach CMD once, and
// CMD's own exit status comes back.
func TestSignals(t *testing.T) {
	rt := runtimeDir(t)
	for _, tt := range []struct {
		name  string
		sig   syscall.Signal
		group bool
		want  int
	}{
		{"SIGINT to the group", syscall.SIGINT, true, 42},
		{"SIGTERM to uloop", syscall.SIGTERM, false, 43},
		{"SIGHUP to uloop", syscall.SIGHUP, false, 44},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, uloop(t, rt, "run", "--", "sh", "-c", trapScript))
			pid := s.cmd.Process.Pid
			if tt.group {
				pid = -pid
			}
			unix.Kill(pid, tt.sig)
			if code := s.wait(t); code != tt.want {
				t.Errorf("exit status %d, want %d (CMD's trap); stdout:\n%s", code, tt.want, s.out)
			}
			want := "got " + strings.TrimPrefix(unix.SignalName(tt.sig), "SIG")
			if n := strings.Count(s.out.String(), want); n != 1 {
				t.Errorf("CMD said %q %d times, want once; stdout:\n%s", want, n, s.out)
			}
		})
	}
	assertNoSessions(t, rt)
}

// TestKilled: SIGKILL to `uloop run` leaves nothing: the inner process, CMD
// and the background process CMD started end, the status socket goes, and
// no process is left in the namespace (so the kernel frees it, with the
// TUN device and routes).
func TestKilled(t *testing.T) {
	rt := runtimeDir(t)
	s := start(t, uloop(t, rt, "run", "--", "sh", "-c", `sleep 1000 & echo "bg $!"; echo "cmd $$"; echo ready; wait`))
	sessions := sessionFiles(t, rt)
	if len(sessions) != 1 {
		t.Fatalf("status sockets: %v, want one", sessions)
	}
	var bg, sh int
	fmt.Sscanf(s.out.String(), "bg %d\ncmd %d", &bg, &sh)
	nsLink, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", sh))
	if err != nil || bg == 0 {
		t.Fatalf("CMD's namespace: %v (output %q)", err, s.out)
	}
	me, _ := os.Readlink("/proc/self/ns/net")
	if nsLink == me {
		t.Fatalf("CMD runs in the test's own namespace %s", me)
	}
	inner := childrenOf(t, s.cmd.Process.Pid)

	unix.Kill(s.cmd.Process.Pid, unix.SIGKILL)
	s.wait(t)
	err = netns.Poll(context.Background(), 10*time.Second, func() (bool, error) {
		left := processesIn(nsLink)
		for _, pid := range append(inner, bg, sh) {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		return len(left) == 0 && len(sessionFiles(t, rt)) == 0, nil
	})
	if err != nil {
		t.Errorf("after SIGKILL of uloop run: processes in %s: %v, inner %v alive: %v, CMD %d: %v, its child %d: %v, sockets %v",
			nsLink, processesIn(nsLink), inner, inner != nil && alive(inner[0]), sh, alive(sh), bg, alive(bg), sessionFiles(t, rt))
	}
}

// TestTraffic: a server and a client inside CMD exchange a file through
// ulo0: the client gets every byte, and the device's counters moved by at
// least as much.
func TestTraffic(t *testing.T) {
	rt := runtimeDir(t)
	www := t.TempDir()
	const size = 1 << 20
	os.WriteFile(filepath.Join(www, "file"), bytes.Repeat([]byte("u"), size), 0o644)
	script := `python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &
for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done
curl -s http://127.0.0.1:8000/file | wc -c
grep ulo0: /proc/net/dev`
	cmd := uloop(t, rt, "run", "--", "sh", "-c", script)
	cmd.Dir = www
	out, code := run(t, cmd)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || strings.TrimSpace(lines[0]) != strconv.Itoa(size) {
		t.Fatalf("status %d, output %q: want %d bytes received and ulo0's counters", code, out, size)
	}
	// ulo0: rx_bytes rx_packets ... (8 fields) tx_bytes ...
	f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(lines[1]), "ulo0:"))
	rx, _ := strconv.Atoi(f[0])
	tx, _ := strconv.Atoi(f[8])
	if rx < size || tx < size {
		t.Errorf("ulo0 moved rx %d, tx %d bytes; want at least the %d-byte file each way through the relay", rx, tx, size)
	}
}

// TestIsolation: two runs at once each have their own 127.0.0.1:8000 and
// reach neither each other's nor the host's loopback.
func TestIsolation(t *testing.T) {
	rt := runtimeDir(t)
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	hostPort := host.Addr().(*net.TCPAddr).Port
	dirs := [2]string{t.TempDir(), t.TempDir()}
	var wg sync.WaitGroup
	outs := make([]string, 2)
	codes := make([]int, 2)
	for i := range 2 {
		os.WriteFile(filepath.Join(dirs[i], "name"), []byte(fmt.Sprintf("run%d", i)), 0o644)
		// Each serves its name, fetches it, and stays up until the other
		// has fetched too, so both servers run at the same time.
		script := fmt.Sprintf(`python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &
for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done
curl -s http://127.0.0.1:8000/name; echo
touch %[1]s/done; for i in $(seq 200); do [ -e %[2]s/done ] && break; sleep 0.05; done
curl -s -m 2 http://127.0.0.1:%[3]d/ >/dev/null; echo "host $?"`, dirs[i], dirs[1-i], hostPort)
		cmd := uloop(t, rt, "run", "--", "sh", "-c", script)
		cmd.Dir = dirs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], codes[i] = run(t, cmd)
		}()
	}
	wg.Wait()
	for i := range 2 {
		// curl's status 7: could not connect.
		if want := fmt.Sprintf("run%d\nhost 7\n", i); outs[i] != want || codes[i] != 0 {
			t.Errorf("run %d: output %q, status %d; want %q, 0", i, outs[i], codes[i], want)
		}
	}
}

// TestStatus: uloop status, from outside, finds a run and shows its open
// connection and counters; the socket goes with the run.
func TestStatus(t *testing.T) {
	rt := runtimeDir(t)
	// A server and a client that exchange 4 bytes and 5 back, then hold
	// the connection open until stdin closes.
	script := `import socket, sys
ln = socket.create_server(("127.0.0.1", 8000))
c = socket.create_connection(("127.0.0.1", 8000))
s, _ = ln.accept()
c.sendall(b"ping"); s.recv(4); s.sendall(b"pong!"); c.recv(5)
print("ready", flush=True)
sys.stdin.read()`
	cmd := uloop(t, rt, "run", "--", "python3", "-c", script)
	stdin, _ := cmd.StdinPipe()
	s := start(t, cmd)

	// --pid: as root, status also lists every uloopd on the machine.
	out, code := run(t, uloop(t, rt, "status", "--json", "--pid", strconv.Itoa(s.cmd.Process.Pid)))
	var st []status
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || len(st) != 1 {
		t.Fatalf("uloop status --json: status %d, %v, output:\n%s", code, err, out)
	}
	got := st[0]
	if got.Kind != "run" || got.PID != s.cmd.Process.Pid || got.Error != "" {
		t.Errorf("status: %+v, want the run of PID %d", got, s.cmd.Process.Pid)
	}
	var flow bool
	for _, f := range got.Flows {
		flow = flow || (f.Proto == "tcp" && f.Server == "127.0.0.1:8000" && f.ToServer == 4 && f.ToClient == 5 && f.State == "ESTABLISHED")
	}
	if !flow {
		t.Errorf("flows %+v: want the open connection to 127.0.0.1:8000, 4 bytes to the server and 5 back", got.Flows)
	}
	if got.Counters["uloop_tun_rx_bytes_total"] == 0 || got.Counters["uloop_tcp_connections_active"] < 1 {
		t.Errorf("counters %v: want bytes read from ulo0 and an active connection", got.Counters)
	}
	text, _ := run(t, uloop(t, rt, "status", "--pid", strconv.Itoa(s.cmd.Process.Pid)))
	if !strings.Contains(text, "127.0.0.1:8000") || !strings.Contains(text, "ESTABLISHED") {
		t.Errorf("uloop status:\n%s\nwant the connection to 127.0.0.1:8000", text)
	}
	stdin.Close()
	if code := s.wait(t); code != 0 {
		t.Errorf("run exited %d", code)
	}
	assertNoSessions(t, rt)
	if out, code := run(t, uloop(t, rt, "status", "--pid", strconv.Itoa(s.cmd.Process.Pid))); code != 1 {
		t.Errorf("status --pid after the run: %q, %d; want status 1, no such session", out, code)
	}
}

// TestTerminal: with a terminal, CMD is in its foreground process group,
// so that an interactive shell works and Ctrl-C reaches CMD.
func TestTerminal(t *testing.T) {
	bin := uloopBin(t)
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("needs script(1) (util-linux) for a terminal")
	}
	// script gives the command a new terminal. Fields 5 and 8 of
	// /proc/PID/stat: the process group, the terminal's foreground group.
	inner := bin + ` run -- sh -c 'read -r _ _ _ _ pgrp _ _ tpgid _ < /proc/$$/stat; echo "fg=$([ $pgrp = $tpgid ] && echo yes || echo no)"'`
	cmd := exec.Command("script", "-qec", inner, "/dev/null")
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+runtimeDir(t))
	out, code := run(t, cmd)
	if !strings.Contains(out, "fg=yes") || code != 0 {
		t.Errorf("output %q, status %d; want CMD in the terminal's foreground group", out, code)
	}
}

// TestRootless runs uloop run as an ordinary user: first with /dev/net/tun
// closed to them (it must say so), then open (0666, as udev makes it on
// Debian, Ubuntu and Fedora): CMD runs as that user, without capabilities,
// on a loopback that carries traffic.
func TestRootless(t *testing.T) {
	bin := uloopBin(t)
	if problems := rootlessProblems("/", "/dev/null"); len(problems) > 0 {
		t.Skipf("this system forbids rootless uloop run: %v", problems)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	u := testUser(t)
	var fi os.FileInfo
	rt, err := os.MkdirTemp("", "uloop-rt-") // the user's runtime directory
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	os.Chown(rt, u.uid, u.gid)
	as := func(args ...string) *exec.Cmd {
		cmd := exec.Command("setpriv", append([]string{"--reuid", strconv.Itoa(u.uid), "--regid", strconv.Itoa(u.gid), "--clear-groups", "--", bin}, args...)...)
		cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR=" + rt}
		cmd.Dir = "/"
		return cmd
	}

	fi, err = os.Stat("/dev/net/tun")
	if err != nil {
		t.Skipf("no TUN device: %v", err)
	}
	mode := fi.Mode().Perm()
	t.Cleanup(func() { os.Chmod("/dev/net/tun", mode) })
	if err := os.Chmod("/dev/net/tun", 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := as("run", "true")
	cmd.Stderr = &stderr
	if err := cmd.Run(); cmd.ProcessState.ExitCode() != exitFailed || !strings.Contains(stderr.String(), "chmod 0666 /dev/net/tun") {
		t.Errorf("with /dev/net/tun 0600: %v, stderr %q; want status %d and how to fix it", err, stderr.String(), exitFailed)
	}

	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Fatal(err)
	}
	script := `id -u; id -g; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status | tr -d '\t'
nc -l 127.0.0.1 9000 > /tmp/uloop-rootless-$$ &
for i in $(seq 100); do echo through | nc -N 127.0.0.1 9000 2>/dev/null && break; sleep 0.05; done
wait; cat /tmp/uloop-rootless-$$; rm /tmp/uloop-rootless-$$
grep -q '^ *ulo0:' /proc/net/dev && echo ulo0`
	out, code := run(t, as("run", "--", "sh", "-c", script))
	want := fmt.Sprintf("%d\n%d\nCapPrm:0000000000000000\nCapEff:0000000000000000\nCapAmb:0000000000000000\nthrough\nulo0\n", u.uid, u.gid)
	if out != want || code != 0 {
		t.Errorf("as %s: output %q, status %d; want %q, 0", u.name, out, code, want)
	}
	// An unprivileged user namespace cannot load the eBPF socket hooks:
	// ::1 stays on lo, said once; --ipv6=false asks for that, silently.
	for _, tc := range []struct {
		args  []string
		lines int
	}{{[]string{"run", "--", "true"}, 1}, {[]string{"run", "--ipv6=false", "--", "true"}, 0}} {
		cmd := as(tc.args...)
		stderr.Reset()
		cmd.Stderr = &stderr
		err := cmd.Run()
		if n := strings.Count(stderr.String(), "::1 stays on the kernel's lo"); err != nil || n != tc.lines {
			t.Errorf("as %s, %q: %v, stderr %q; want status 0 and %d line(s) saying ::1 stays on lo", u.name, tc.args, err, stderr.String(), tc.lines)
		}
	}
	out, code = run(t, as("run", "--root", "--", "id", "-u"))
	if out != "0\n" || code != 0 {
		t.Errorf("as %s with --root: id -u %q, status %d; want 0", u.name, out, code)
	}
	if files, _ := os.ReadDir(filepath.Join(rt, "uloop")); len(files) != 0 {
		t.Errorf("status sockets left: %v", files)
	}
}

type testAccount struct {
	name     string
	uid, gid int
}

// testUser returns the unprivileged account the rootless test runs as,
// creating it if missing.
func testUser(t *testing.T) testAccount {
	const name = "uloop-test"
	u, err := user.Lookup(name)
	if err != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
			t.Skipf("cannot create user %s: %v: %s", name, err, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return testAccount{name, uid, gid}
}

func TestRootlessProblems(t *testing.T) {
	root := t.TempDir()
	write := func(path, value string) {
		p := filepath.Join(root, path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(value+"\n"), 0o644)
	}
	if p := rootlessProblems(root, "/dev/null"); len(p) != 0 {
		t.Errorf("no settings: got %v, want no problems", p)
	}
	write("proc/sys/kernel/unprivileged_userns_clone", "0")
	write("proc/sys/user/max_user_namespaces", "0")
	write("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")
	write("proc/self/attr/current", "unconfined")
	p := rootlessProblems(root, filepath.Join(root, "no-tun"))
	for i, want := range []string{"kernel.unprivileged_userns_clone=1", "user.max_user_namespaces=15000", "apparmor_restrict_unprivileged_userns=0", "modprobe tun"} {
		if len(p) != 4 || !strings.Contains(p[i], want) {
			t.Errorf("problems %q: want 4, number %d saying %q", p, i+1, want)
		}
	}
	write("proc/self/attr/current", "uloop (enforce)") // a profile may allow it
	write("proc/sys/kernel/unprivileged_userns_clone", "1")
	write("proc/sys/user/max_user_namespaces", "100")
	if p := rootlessProblems(root, "/dev/null"); len(p) != 0 {
		t.Errorf("all allowed: got %v", p)
	}
}

// sessionFiles lists the status sockets in the runtime directory rt.
func sessionFiles(t *testing.T, rt string) []string {
	files, _ := filepath.Glob(filepath.Join(rt, "uloop", "*.sock"))
	return files
}

func assertNoSessions(t *testing.T, rt string) {
	t.Helper()
	if files := sessionFiles(t, rt); len(files) != 0 {
		t.Errorf("status sockets left behind: %v", files)
	}
}

// childrenOf lists process pid's children (each thread's: Go forks from
// any of them).
func childrenOf(t *testing.T, pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var b []byte
	for _, f := range files {
		c, _ := os.ReadFile(f)
		b = append(b, c...)
		b = append(b, ' ')
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		pids = append(pids, n)
	}
	if len(pids) != 1 {
		t.Fatalf("children of uloop run: %v, want the inner process", pids)
	}
	return pids
}

// processesIn lists the processes whose network namespace is link
// ("net:[inode]").
func processesIn(link string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && l == link {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestInnerNeedsItsOwnNamespace: the inner process ends by killing every
// other process in its network namespace, so started by hand in its
// parent's namespace it must refuse to run. The test runs it in a namespace
// of its own (unshare -n), with a sibling to be spared: should the check
// ever go, only that namespace's processes are at stake.
func TestInnerNeedsItsOwnNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (unshare -n)")
	}
	script := `sleep 30 & ` + uloopBin(t) + ` ` + innerCommand + ` -- true; echo "exit $?"; kill -0 $! && echo sibling-alive; kill $!`
	out, err := exec.Command("unshare", "-n", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("unshare -n sh -c ...: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("exit %d", exitFailed)) || !strings.Contains(string(out), "sibling-alive") {
		t.Errorf("got:\n%s\nwant exit %d and the sibling alive", out, exitFailed)
	}
}

// TestInstall: make install puts both commands and the systemd unit where
// PREFIX and UNITDIR say, the unit names the installed binaries (and
// systemd-analyze accepts it, where it is installed), and the installed
// uloop runs from any directory.
func TestInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (uloop run of the installed copy)")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	prefix := t.TempDir()
	os.Chmod(prefix, 0o755)
	units := filepath.Join(prefix, "units")
	// BIN outside the checkout: under make test as a user this runs as
	// root, and must leave no root-owned file there.
	cmd := exec.Command("make", "-s", "install", "BIN="+t.TempDir(), "PREFIX="+prefix, "UNITDIR="+units)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(units, "uloopd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=" + prefix + "/bin/uloopd\n", "ExecStopPost=" + prefix + "/bin/uloopd --cleanup\n", "Type=notify\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("installed unit lacks %q", want)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		if out, err := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(units, "uloopd.service")).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
	run := exec.Command(filepath.Join(prefix, "bin", "uloop"), "run", "--", "sh", "-c", "exit 5")
	run.Dir = "/"
	run.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+runtimeDir(t))
	if err := run.Run(); run.ProcessState == nil || run.ProcessState.ExitCode() != 5 {
		t.Errorf("installed uloop run -- sh -c 'exit 5' from /: %v, want exit status 5", err)
	}
}

// refusedScript sends one UDP datagram to each of 30 closed ports of the
// address in $1, back to back, from a connected socket, and counts the
// ECONNREFUSED that the kernel's port unreachable brings back.
const refusedScript = `
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
n = 0
for port in range(40000, 40030):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect((sys.argv[1], port))
    s.send(b'x')
    try:
        s.recv(10)
    except ConnectionRefusedError:
        n += 1
    except socket.timeout:
        pass
    s.close()
print(sys.argv[1], n)
`

// TestUDPRefusedEveryTime: UDP datagrams sent back to back to closed ports
// fail with ECONNREFUSED every time, as on kernel lo, which exempts
// loopback from the ICMP rate limit; through ulo0 the limit let about
// half of them through until uloop run turned it off in its namespace.
func TestUDPRefusedEveryTime(t *testing.T) {
	rt := runtimeDir(t)
	script := `python3 -c "$0" 127.0.0.1 && python3 -c "$0" ::1`
	want := "127.0.0.1 30\n::1 30\n"
	lo, err := exec.Command("unshare", "-n", "sh", "-c", "ip link set lo up && "+script, refusedScript).CombinedOutput()
	if err != nil || string(lo) != want {
		t.Fatalf("on kernel lo: %v, output %q; want %q", err, lo, want)
	}
	out, code := run(t, uloop(t, rt, "run", "--", "sh", "-c", script, refusedScript))
	if code != 0 || out != want {
		t.Errorf("uloop run: status %d, output %q; want %q (address, ECONNREFUSED of 30)", code, out, want)
	}
}
