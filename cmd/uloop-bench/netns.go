//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A netNS is a named network namespace (/run/netns/NAME) that the harness made
// and deletes in teardown.
type netNS struct {
	name string
	side string // "kernel" or "uloop"
	ino  uint64 // inode of /run/netns/NAME: tells whether a PID has entered it
}

// addNetns creates the namespace. Equivalent to: ip netns add NAME.
func addNetns(name, side string) (*netNS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+name, &st); err != nil {
		return &netNS{name: name, side: side}, fmt.Errorf("namespace %s: %w", name, err)
	}
	return &netNS{name: name, side: side, ino: st.Ino}, nil
}

// del deletes the namespace; deleting one already gone succeeds. Equivalent
// to: ip netns del NAME. The kernel frees the namespace once no process is
// left in it, so callers kill every process they started in it first.
func (n *netNS) del() error {
	if _, err := os.Stat("/run/netns/" + n.name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.name, err, bytes.TrimSpace(out))
	}
	return nil
}

// holds reports whether process pid is in this namespace.
func (n *netNS) holds(pid int) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return false
	}
	return st.Ino == n.ino
}

// linkMTU returns the MTU of device dev in the namespace. Equivalent to:
// ip -n NAME -j link show dev DEV.
func (n *netNS) linkMTU(dev string) (int, error) {
	out, err := exec.Command("ip", "-n", n.name, "-j", "link", "show", "dev", dev).Output()
	if err != nil {
		return 0, fmt.Errorf("ip -n %s link show dev %s: %w", n.name, dev, err)
	}
	var links []struct {
		MTU int `json:"mtu"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("ip -n %s link show dev %s: unexpected output %q", n.name, dev, out)
	}
	return links[0].MTU, nil
}

// sysctl reads /proc/sys/KEY (dots for slashes) as seen from the namespace.
func (n *netNS) sysctl(key string) string {
	out, err := exec.Command("ip", "netns", "exec", n.name, "cat", "/proc/sys/"+strings.ReplaceAll(key, ".", "/")).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// procs tracks every process the harness starts, so that teardown can kill
// whatever is still running, whichever way the run ends.
type procs struct {
	mu   sync.Mutex // mu guards live
	live map[int]*exec.Cmd
}

func newProcs() *procs { return &procs{live: make(map[int]*exec.Cmd)} }

// command returns argv to run inside namespace n through `ip netns exec`,
// which execs argv in place: the process's PID is argv[0]'s. The process
// leads its own process group, so a Ctrl-C on the terminal reaches only the
// harness, which then stops everything in order; when ctx ends the whole
// group is killed.
func (ps *procs) command(ctx context.Context, n *netNS, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Should the harness itself be killed (SIGKILL, OOM), its
		// children do not run on. (Sent when the OS thread that forked
		// dies; the harness never ends threads early: it never locks
		// one.)
		Pdeathsig: syscall.SIGKILL,
	}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// start starts cmd and tracks it until wait.
func (ps *procs) start(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	ps.mu.Lock()
	ps.live[cmd.Process.Pid] = cmd
	ps.mu.Unlock()
	return nil
}

// wait waits for cmd, started by start, and stops tracking it.
func (ps *procs) wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	ps.mu.Lock()
	delete(ps.live, cmd.Process.Pid)
	ps.mu.Unlock()
	return err
}

// run starts cmd and waits for it.
func (ps *procs) run(cmd *exec.Cmd) error {
	if err := ps.start(cmd); err != nil {
		return err
	}
	return ps.wait(cmd)
}

// killAll kills the process group of every process still tracked and returns
// how many there were. Their Wait calls, in other goroutines, then return.
func (ps *procs) killAll() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, cmd := range ps.live {
		killGroup(cmd)
	}
	return len(ps.live)
}

// killGroup sends SIGKILL to cmd's process group (its PID: see command).
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// exitDetail describes how a command failed, with the tail of its stderr.
func exitDetail(argv []string, err error, stderr []byte) error {
	msg := strings.TrimSpace(string(stderr))
	if len(msg) > 600 {
		msg = "..." + msg[len(msg)-600:]
	}
	if msg == "" {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
}

// waitListening polls /proc/PID/net/tcp and tcp6, which show the sockets of
// PID's own network namespace, until PID (already inside n) has a TCP socket
// listening on port: readiness without connecting, which a one-shot server
// such as `iperf3 -s -1` would take for its client.
func waitListening(ctx context.Context, n *netNS, pid, port int, exited <-chan struct{}, timeout time.Duration) error {
	want := fmt.Sprintf(":%04X", port)
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		// Before `ip netns exec` has entered n, /proc/PID/net shows the
		// harness's own namespace, where someone else may listen on port.
		if n.holds(pid) && listening(pid, want) {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited before listening")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on port %d after %v", port, timeout)
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

func listening(pid int, localPortSuffix string) bool {
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/" + f)
		for line := range strings.SplitSeq(string(b), "\n") {
			fields := strings.Fields(line)
			// sl local_address rem_address st ...; st 0A is LISTEN.
			if len(fields) > 3 && strings.HasSuffix(fields[1], localPortSuffix) && fields[3] == "0A" {
				return true
			}
		}
	}
	return false
}
