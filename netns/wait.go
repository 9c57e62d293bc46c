//go:build linux

package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// ErrTimeout is wrapped by Poll's error when the timeout passed first.
var ErrTimeout = errors.New("timed out")

// Poll calls cond until it reports done, and returns nil then. It returns
// cond's error at once if cond returns one, ctx's error if ctx ends first,
// and an error wrapping ErrTimeout once timeout has passed since the call
// (cond is always called at least once). The wait between calls starts at
// 1 ms and doubles up to 50 ms: quick for what is ready at once, light on
// the CPU for what takes seconds.
func Poll(ctx context.Context, timeout time.Duration, cond func() (done bool, err error)) error {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		done, err := cond()
		if err != nil || done {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not done after %v: %w", timeout, ErrTimeout)
		}
		t := time.NewTimer(min(delay, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// Listening reports whether a socket in the namespace listens on port:
// network "tcp" for a TCP socket in LISTEN, "udp" for a bound UDP socket
// that is not connected; IPv4 or IPv6, any address. It reads the socket
// tables the kernel shows the namespace (/proc/net/tcp and the like, read
// from inside it), so it connects to nothing: a one-shot server such as
// `iperf3 -s -1` does not take the check for its client.
func (n *Namespace) Listening(network string, port int) (bool, error) {
	var ok bool
	err := n.Do(func() (err error) {
		ok, err = listening(network, port)
		return err
	})
	return ok, err
}

// listening is Listening in the calling thread's namespace. thread-self,
// not self: /proc/self/net shows the main thread's namespace.
func listening(network string, port int) (bool, error) {
	fs, err := procfs.NewFS("/proc/thread-self")
	if err != nil {
		return false, err
	}
	var tables []func() (procfs.NetTCP, error)
	const tcpListen, udpUnconnected = 0x0a, 0x07 // the st column
	var state uint64
	switch network {
	case "tcp":
		tables, state = []func() (procfs.NetTCP, error){fs.NetTCP, fs.NetTCP6}, tcpListen
	case "udp":
		udp4 := func() (procfs.NetTCP, error) { t, err := fs.NetUDP(); return procfs.NetTCP(t), err }
		udp6 := func() (procfs.NetTCP, error) { t, err := fs.NetUDP6(); return procfs.NetTCP(t), err }
		tables, state = []func() (procfs.NetTCP, error){udp4, udp6}, udpUnconnected
	default:
		return false, fmt.Errorf("netns: network %q: want tcp or udp", network)
	}
	for _, read := range tables {
		socks, err := read()
		if errors.Is(err, os.ErrNotExist) { // no IPv6 in this kernel
			continue
		}
		if err != nil {
			return false, err
		}
		for _, s := range socks {
			if s.LocalPort == uint64(port) && s.St == state && s.RemPort == 0 {
				return true, nil
			}
		}
	}
	return false, nil
}

// WaitListening waits until a socket in the process's namespace listens on
// port (see Listening), and fails early if the process exits first, or
// after timeout.
func (p *Process) WaitListening(ctx context.Context, network string, port int, timeout time.Duration) error {
	err := Poll(ctx, timeout, func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("%s exited (%v) before it listened on %s port %d", p, p.State(), network, port)
		}
		if p.ns == nil {
			return listening(network, port)
		}
		return p.ns.Listening(network, port)
	})
	if errors.Is(err, ErrTimeout) {
		return fmt.Errorf("%s: not listening on %s port %d: %w", p, network, port, err)
	}
	return err
}

// Output collects a process's output (set it as cmd.Stdout and cmd.Stderr)
// for the caller to read while the process runs: exec's copying goroutines
// may write to it at once. It keeps the last Max lines (all if Max is 0),
// and shows each complete line to OnLine, if set, as it arrives.
type Output struct {
	Max    int
	OnLine func(line string)

	mu      sync.Mutex // mu guards lines and partial
	lines   []string
	partial []byte
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial = append(o.partial, p...)
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(o.partial[:i])
		o.partial = o.partial[i+1:]
		o.lines = append(o.lines, line)
		if o.Max > 0 && len(o.lines) > o.Max {
			o.lines = o.lines[len(o.lines)-o.Max:]
		}
		if o.OnLine != nil {
			o.OnLine(line)
		}
	}
}

// Tail returns the last n lines kept (n <= 0: all of them), an unfinished
// last line included, each on a line of its own.
func (o *Output) Tail(n int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	lines := o.lines
	if len(o.partial) > 0 {
		lines = append(lines[:len(lines):len(lines)], string(o.partial))
	}
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// String is all the output kept.
func (o *Output) String() string { return o.Tail(0) }
