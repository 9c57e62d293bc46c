//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/netns"
	"golang.org/x/sys/unix"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return master, slave
}

// TestCtrlZ: in an interactive shell on a terminal, Ctrl-Z stops the
// command run by uloop run and gives the prompt back, as for any job; fg
// resumes it with the terminal, so it reads what is typed next; its exit
// status reaches the shell.
func TestCtrlZ(t *testing.T) {
	bin := uloopBin(t)
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("needs bash for job control")
	}
	master, slave := openPTY(t)
	shell := exec.Command(bash, "--norc", "--noprofile", "-i")
	shell.Stdin, shell.Stdout, shell.Stderr = slave, slave, slave
	shell.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+runtimeDir(t), "PS1=$ ", "TERM=dumb", "ULOOP="+bin)
	shell.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	defer func() {
		// Everything the shell started is in its session, whatever the
		// process group (uloop run's job, CMD's group).
		killSession(shell.Process.Pid)
		shell.Wait()
	}()
	var out netns.Output
	go io.Copy(&out, master)
	// expect waits for want in what the terminal showed since the last
	// expect. Typed text is echoed too, so each want is something only
	// the programs print.
	seen := 0
	expect := func(step, want string) {
		t.Helper()
		err := netns.Poll(context.Background(), 15*time.Second, func() (bool, error) {
			return strings.Contains(out.String()[seen:], want), nil
		})
		if err != nil {
			t.Fatalf("%s: %q not shown; terminal:\n%s", step, want, out.String())
		}
		seen += strings.Index(out.String()[seen:], want) + len(want)
	}
	typed := func(s string) { io.WriteString(master, s) }

	typed(`$ULOOP run -- sh -c 'echo "cmd $((6*7))"; while read l; do echo "got:$l"; done; echo "cmd-$((1+1))-done"'` + "\n")
	expect("start", "cmd 42")
	typed("\x1a") // Ctrl-Z
	expect("Ctrl-Z", "Stopped")
	typed("echo shell-$((2+3))\n")
	expect("the shell has the terminal", "shell-5")
	typed("fg\n")
	time.Sleep(300 * time.Millisecond) // let fg resume the job before typing to it
	typed("hello\n")
	expect("after fg, CMD reads the terminal", "got:hello")
	typed("\x04") // EOF to CMD's read
	expect("CMD ends", "cmd-2-done")
	typed("echo status=$?\n")
	expect("exit status", "status=0")
	typed("exit\n")
}

// killSession sends SIGKILL to every process in session sid.
func killSession(sid int) {
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil {
			continue
		}
		if s, err := unix.Getsid(pid); err == nil && s == sid {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}
