//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// ErrKilled is wrapped by Stop's error when the process had to be killed
// because it did not exit within the grace period after SIGTERM.
var ErrKilled = errors.New("killed after the grace period")

// A Process is a command started by Start. Its methods may be called from
// any goroutine.
type Process struct {
	cmd   *exec.Cmd
	ns    *Namespace // nil: the caller's namespace
	group bool       // the process leads its own process group
	done  chan struct{}
	err   error // what cmd.Wait returned; valid once done is closed

	mu     sync.Mutex // mu guards reaped
	reaped bool       // true from just before the process is reaped on
}

// Start starts cmd in the network namespace n, as `ip netns exec` would but
// without exec'ing through ip: cmd is forked from a thread that Do has
// moved into n, so it is in n from its first instruction, its PID is its
// own, and any namespace handle works, named or not. Unlike `ip netns exec`
// it does not remount /sys (which keeps showing the devices of the caller's
// namespace) nor bind files from /etc/netns/NAME.
//
// Start returns once the process runs; from then on the Process owns cmd:
// do not call cmd.Wait. See StartHere for what Start sets on cmd.
func (n *Namespace) Start(cmd *exec.Cmd) (*Process, error) {
	return start(n, cmd)
}

// StartHere starts cmd in the caller's own network namespace. Like Start, if
// cmd.SysProcAttr is nil it sets it so that cmd leads a process group of its
// own (Stop and Kill reach its children; a terminal's Ctrl-C reaches only
// the caller) and is killed if the thread that forked it ends, which happens
// when the caller's process dies; a SysProcAttr the caller set is used as it
// is, and Stop and Kill then reach the group only if it sets Setpgid. For a
// cmd made with exec.CommandContext whose process leads a group, the end of
// the context kills the whole group (Start replaces cmd.Cancel). If cmd.WaitDelay is zero it is set to 2 s, so that a child that
// keeps cmd's output open cannot hold up Wait.
func StartHere(cmd *exec.Cmd) (*Process, error) {
	return start(nil, cmd)
}

func start(n *Namespace, cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	p := &Process{cmd: cmd, ns: n, group: cmd.SysProcAttr.Setpgid && cmd.SysProcAttr.Pgid == 0, done: make(chan struct{})}
	if cmd.Cancel != nil && p.group { // exec.CommandContext
		cmd.Cancel = func() error { return p.signal(syscall.SIGKILL) }
	}
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 2 * time.Second
	}
	var err error
	if n == nil {
		err = cmd.Start()
	} else {
		err = n.Do(cmd.Start)
		if err != nil && cmd.Process != nil {
			// Started, but the thread could not leave the namespace
			// (and has ended, which kills a Pdeathsig child anyway).
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("netns: starting %s: %w", strings.Join(cmd.Args, " "), err)
	}
	go p.wait()
	return p, nil
}

// wait waits for the process to exit, kills what is left of its process
// group while the exited leader (a zombie until reaped) still holds the
// group's ID, and reaps it. So a group never outlives its leader, and no
// signal is ever sent to a group ID the kernel may have handed on.
func (p *Process) wait() {
	pid := p.cmd.Process.Pid
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	p.mu.Lock()
	if p.group {
		unix.Kill(-pid, unix.SIGKILL)
	}
	p.reaped = true
	p.mu.Unlock()
	p.err = p.cmd.Wait()
	close(p.done)
}

// signal sends sig to the process group, or to the process alone if it
// leads none. After the process has exited it does nothing.
func (p *Process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return os.ErrProcessDone
	}
	if p.group {
		return unix.Kill(-p.cmd.Process.Pid, sig)
	}
	return p.cmd.Process.Signal(sig)
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Args is the command line the process was started with.
func (p *Process) Args() []string { return p.cmd.Args }

// Namespace is the namespace the process was started in; nil for StartHere.
func (p *Process) Namespace() *Namespace { return p.ns }

func (p *Process) String() string {
	return fmt.Sprintf("%q (pid %d)", strings.Join(p.cmd.Args, " "), p.cmd.Process.Pid)
}

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether Done is closed.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns what exec.Cmd.Wait
// returned: nil for exit status 0, an *exec.ExitError otherwise. Any number
// of goroutines may wait.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// State is the exit state; nil while the process runs.
func (p *Process) State() *os.ProcessState {
	if !p.Exited() {
		return nil
	}
	return p.cmd.ProcessState
}

// ExitCode is the exit status, -1 while the process runs or if a signal
// ended it.
func (p *Process) ExitCode() int {
	if s := p.State(); s != nil {
		return s.ExitCode()
	}
	return -1
}

// Signal sends sig to the process alone, not its group.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop ends the process: SIGTERM to its group, then, if it has not exited
// within grace, SIGKILL to the group and an error wrapping ErrKilled. It
// returns once the process is reaped, with Wait's error otherwise; the rest
// of the group has been sent SIGKILL by then, which the kernel delivers
// soon after. Stopping
// a process that has already exited returns Wait's error.
func (p *Process) Stop(grace time.Duration) error {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
	}
	p.signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not exit within %v of SIGTERM: %w", p, grace, ErrKilled)
}

// Kill sends SIGKILL to the group and waits until the process is reaped.
func (p *Process) Kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// Pids lists the processes in the namespace, the caller excepted.
func (n *Namespace) Pids() ([]int, error) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, pr := range procs {
		if pr.PID != os.Getpid() && n.Contains(pr.PID) {
			pids = append(pids, pr.PID)
		}
	}
	return pids, nil
}

// KillAll sends SIGKILL to every process in the namespace (the caller
// excepted), again until none is left or timeout has passed. It finds what
// process groups do not: a process that left its group, or one that
// entered the namespace by itself. The caller reaps its own children
// (Process does); others are reaped by their parents.
func (n *Namespace) KillAll(timeout time.Duration) error {
	var left []int
	err := Poll(context.Background(), timeout, func() (bool, error) {
		var err error
		if left, err = n.Pids(); err != nil {
			return false, err
		}
		for _, pid := range left {
			unix.Kill(pid, unix.SIGKILL)
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("netns: processes %v still in namespace %s: %w", left, n, err)
	}
	return nil
}
