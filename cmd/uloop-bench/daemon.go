package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/uloop/uloop/netns"
)

const (
	daemonReadyTimeout = 15 * time.Second
	daemonStopTimeout  = 15 * time.Second
	// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ,
	// which the kernel fixes at 100 for userspace on every architecture
	// uloop builds for (sysconf(_SC_CLK_TCK) needs cgo to ask).
	userHZ = 100
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
