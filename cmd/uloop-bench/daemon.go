//go:build linux

package main

import (
	"bytes"
	"context"
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

const (
	daemonReadyTimeout = 15 * time.Second
	daemonStopTimeout  = 15 * time.Second
	// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ,
	// which the kernel fixes at 100 for userspace on every architecture
	// uloop builds for (sysconf(_SC_CLK_TCK) needs cgo to ask).
	userHZ = 100
)

// daemon is the uloopd under test.
type daemon struct {
	cmd     *exec.Cmd
	log     *lineLog
	done    chan struct{} // closed once cmd has been waited for
	waitErr error         // valid after done
	readyAt time.Duration // from start to the `ready` line
}

// startDaemon starts uloopd in n and waits for the line containing "ready"
// it logs once its data path answers. ctx bounds only the wait.
func startDaemon(ctx context.Context, ps *procs, n *netNS, path string) (*daemon, error) {
	ready := make(chan struct{})
	var once sync.Once
	d := &daemon{done: make(chan struct{})}
	d.log = &lineLog{max: 200, onLine: func(line string) {
		if strings.Contains(line, "ready") {
			once.Do(func() { close(ready) })
		}
	}}
	// Not tied to the run's context: a Ctrl-C must reach uloopd as the
	// SIGTERM of stop, so that it restores the namespace (and reports any
	// failure to) rather than die mid-change.
	d.cmd = ps.command(context.Background(), n, path)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	start := time.Now()
	if err := ps.start(d.cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	go func() {
		d.waitErr = ps.wait(d.cmd)
		close(d.done)
	}()
	select {
	case <-ready:
		d.readyAt = time.Since(start)
		return d, nil
	case <-d.done:
		return d, fmt.Errorf("uloopd exited before it was ready (%v); its log:\n%s", d.waitErr, d.log.tail(30))
	case <-ctx.Done():
		return d, ctx.Err()
	case <-time.After(daemonReadyTimeout):
		return d, fmt.Errorf("uloopd not ready after %v; its log:\n%s", daemonReadyTimeout, d.log.tail(30))
	}
}

// pid is uloopd's own PID: `ip netns exec` execs it in place.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, on which uloopd undoes its changes and exits 0, and
// kills its process group if it has not exited within daemonStopTimeout.
func (d *daemon) stop() error {
	if !d.running() {
		return d.exitErr()
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		killGroup(d.cmd)
	}
	select {
	case <-d.done:
		return d.exitErr()
	case <-time.After(daemonStopTimeout):
		killGroup(d.cmd)
		<-d.done
		return fmt.Errorf("uloopd did not exit within %v of SIGTERM; killed. Its log:\n%s", daemonStopTimeout, d.log.tail(20))
	}
}

func (d *daemon) exitErr() error {
	if d.waitErr != nil {
		return fmt.Errorf("uloopd: %v; its log:\n%s", d.waitErr, d.log.tail(20))
	}
	return nil
}

// procCPU returns the user plus system CPU time that process pid has used,
// from fields 14 and 15 (utime, stime) of /proc/PID/stat, in clock ticks of
// 1/userHZ s.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

func parseStatCPU(b []byte) (time.Duration, error) {
	// The command name, field 2, is in parentheses and may itself hold
	// spaces and parentheses: count fields from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/PID/stat: %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so utime (14) is f[11] and stime (15) f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/PID/stat: %q", b)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc/PID/stat: %w", err)
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// procPeakRSS returns VmHWM from /proc/PID/status: the most resident memory
// process pid has had, in KiB.
func procPeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseStatusKiB(b, "VmHWM")
}

func parseStatusKiB(b []byte, key string) (int64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("malformed %s line %q", key, line)
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s in /proc/PID/status", key)
}

// lineLog keeps the last max lines written to it (exec's copier goroutines
// write concurrently) and shows each complete line to onLine.
type lineLog struct {
	max    int
	onLine func(string)

	mu      sync.Mutex // mu guards lines and partial
	lines   []string
	partial []byte
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		l.lines = append(l.lines, line)
		if len(l.lines) > l.max {
			l.lines = l.lines[len(l.lines)-l.max:]
		}
		if l.onLine != nil {
			l.onLine(line)
		}
	}
	return len(p), nil
}

// tail returns the last n lines, indented.
func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := l.lines[max(0, len(l.lines)-n):]
	if len(l.partial) > 0 {
		lines = append(lines[:len(lines):len(lines)], string(l.partial))
	}
	return "    " + strings.Join(lines, "\n    ")
}
