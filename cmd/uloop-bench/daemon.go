//go:build linux

package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"github.com/uloop/uloop/netns"
)

const (
	daemonReadyTimeout = 15 * time.Second
	daemonStopTimeout  = 15 * time.Second
)

// readyRE matches uloopd's `ready` log line but not words like "already".
var readyRE = regexp.MustCompile(`\bready\b`)

// daemon is the uloopd under test.
type daemon struct {
	p       *netns.Process
	log     *netns.Output
	readyAt time.Duration // from start to the `ready` line
}

// startDaemon starts uloopd in n and waits for the line containing "ready"
// it logs once its data path answers. ctx bounds only the wait: a Ctrl-C
// must reach uloopd as the SIGTERM of stop, so that it restores the
// namespace (and reports any failure to) rather than die mid-change.
func startDaemon(ctx context.Context, n *netNS, path string) (*daemon, error) {
	ready := make(chan struct{})
	var once sync.Once
	d := &daemon{log: &netns.Output{Max: 200, OnLine: func(line string) {
		if readyRE.MatchString(line) && !strings.Contains(line, "level=ERROR") {
			once.Do(func() { close(ready) })
		}
	}}}
	cmd := exec.Command(path)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	start := time.Now()
	var err error
	if d.p, err = n.Start(cmd); err != nil {
		return nil, err
	}
	select {
	case <-ready:
		d.readyAt = time.Since(start)
		return d, nil
	case <-d.p.Done():
		return d, fmt.Errorf("uloopd exited before it was ready (%v); its log:\n%s", d.p.State(), d.log.Tail(30))
	case <-ctx.Done():
		return d, ctx.Err()
	case <-time.After(daemonReadyTimeout):
		return d, fmt.Errorf("uloopd not ready after %v; its log:\n%s", daemonReadyTimeout, d.log.Tail(30))
	}
}

// stop sends SIGTERM, on which uloopd undoes its changes and exits 0, and
// kills it if it has not exited within daemonStopTimeout.
func (d *daemon) stop() error {
	if err := d.p.Stop(daemonStopTimeout); err != nil {
		return fmt.Errorf("uloopd: %w; its log:\n%s", err, d.log.Tail(20))
	}
	return nil
}

// exitErr says why uloopd is no longer running.
func (d *daemon) exitErr() error {
	return fmt.Errorf("uloopd: %v; its log:\n%s", d.p.Wait(), d.log.Tail(20))
}

// cpuTimes is a process's CPU time in user mode and in the kernel.
type cpuTimes struct{ user, system time.Duration }

func (t cpuTimes) total() time.Duration { return t.user + t.system }

// procCPUTimes returns the user and the system CPU time process pid has
// used, split as /proc/PID/stat counts them (utime and stime).
func procCPUTimes(pid int) (cpuTimes, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return cpuTimes{}, err
	}
	st, err := p.Stat()
	if err != nil {
		return cpuTimes{}, err
	}
	total := time.Duration(st.CPUTime() * float64(time.Second))
	ticks := st.UTime + st.STime
	if ticks == 0 {
		return cpuTimes{}, nil
	}
	system := time.Duration(float64(total) * float64(st.STime) / float64(ticks))
	return cpuTimes{user: total - system, system: system}, nil
}

// procRSS returns VmRSS: the memory process pid has resident now, in KiB.
func procRSS(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int64(st.VmRSS / 1024), nil
}

// procPeakRSS returns VmHWM: the most resident memory process pid has had,
// in KiB.
func procPeakRSS(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int64(st.VmHWM / 1024), nil
}
