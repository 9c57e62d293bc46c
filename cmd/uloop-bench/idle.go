//go:build linux

package main

// The tcp-idle case: how much memory uloopd holds per idle relayed TCP
// connection. A fresh uloopd in a namespace of its own (a warm daemon's
// free heap would absorb the growth), its RSS read before and after a
// `_tcp-idle` process there has opened C connections through it, moved
// 1 KiB each way on each, and holds them all open.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/netns"
	"golang.org/x/sys/unix"
)

const (
	cmdTCPIdle = "_tcp-idle"

	idleBytes = 1024 // moved each way on each connection

	// idleSettleBefore is how long the fresh uloopd idles after its
	// ready line before its RSS is read; idleSettleAfter, how long after
	// the last connection is open.
	idleSettleBefore = time.Second
	idleSettleAfter  = 2 * time.Second

	idleMinConns = 100 // below this, page and arena granularity swamp the figure
)

var (
	mIdleRSS = metric{Key: "rss_kib_per_conn", Label: "RSS growth per connection", Unit: "KiB",
		Target: 12}
	mIdleHeap = metric{Key: "heap_kib_per_conn", Label: "Go heap in use, growth per connection", Unit: "KiB",
		Optional: true}
	mIdleRSSBefore = metric{Key: "rss_before_mib", Label: "RSS before", Unit: "MiB"}
	mIdleRSSAfter  = metric{Key: "rss_after_mib", Label: "RSS with all open", Unit: "MiB"}
)

// tcpIdleCase is tcp-idle: uloop only, since kernel lo has no daemon whose
// memory grows with the connections.
var tcpIdleCase = benchCase{
	Name:      "tcp-idle",
	Title:     "Idle TCP connections held open through a fresh uloopd, 1 KiB moved each way on each",
	UloopOnly: true,
	Command: "uloop-bench " + cmdTCPIdle + " -conns C (C is --idle-conns), in a namespace of its own " +
		"with a fresh uloopd; uloopd's VmRSS before, and 2 s after all C are open",
	Metrics: []metric{mIdleRSS, mIdleHeap, mIdleRSSBefore, mIdleRSSAfter},
	note: func(cfg configRecord) string {
		return fmt.Sprintf("a fresh uloopd per run, %d connections: its RSS growth (VmRSS once all are open plus 2 s, less VmRSS after its ready line plus 1 s) "+
			"divided by %d, in KiB (1024 B); the Go heap likewise (go_memstats_heap_inuse_bytes). "+
			"The run fails unless uloopd relays exactly %d TCP connections then (uloop_tcp_connections_active). "+
			"No kernel side (lo has no daemon to measure), so no ratio: the last column is the target for the median.",
			cfg.IdleConns, cfg.IdleConns, cfg.IdleConns)
	},
	run: func(ctx context.Context, h *harness, _ *netNS) (runOutput, error) {
		return h.runIdle(ctx)
	},
}

// idleOpen is the line `_tcp-idle` prints once every connection is open.
type idleOpen struct {
	Connections int     `json:"connections"`
	Bytes       int     `json:"bytes_each_way"`
	Seconds     float64 `json:"open_seconds"`
}

// tcpIdleMain is the `_tcp-idle` subcommand: an echo server on 127.0.0.1
// and conns clients of it in this process; each client sends size bytes and
// reads them back, and then all connections stay open, idle, until stdin
// is closed (or reaches its end) or SIGTERM or SIGINT comes. It prints an
// idleOpen line on stdout once they are all open.
func tcpIdleMain(args []string) error {
	fs := flag.NewFlagSet(cmdTCPIdle, flag.ContinueOnError)
	conns := fs.Int("conns", 5000, "connections to open and hold")
	size := fs.Int("bytes", idleBytes, "bytes moved each way on each connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	stdinDone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinDone)
	}()
	return tcpIdle(*conns, *size, os.Stdout, func() {
		select {
		case <-stdinDone:
		case <-sig:
		}
	})
}

// tcpIdle opens conns connections, moves size bytes each way on each,
// prints an idleOpen line on out, and holds them until hold returns.
func tcpIdle(conns, size int, out io.Writer, hold func()) error {
	if conns < 1 || size < 1 {
		return fmt.Errorf("-conns %d -bytes %d: want at least 1 of each", conns, size)
	}
	// Each connection is two descriptors here, client and server. The Go
	// runtime has already raised the soft limit to the hard one (since Go
	// 1.19); more takes a higher hard limit, which is the caller's to set.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if need := uint64(2*conns + 32); lim.Cur < need {
		return fmt.Errorf("%d connections need %d file descriptors, RLIMIT_NOFILE allows %d (hard limit %d): raise the hard limit (ulimit -Hn)",
			conns, need, lim.Cur, lim.Max)
	}

	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		served  []net.Conn
		srvErrs []error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed
			}
			mu.Lock()
			served = append(served, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Echo size bytes, then read until the client
				// closes: the connection idles in between.
				b := make([]byte, size)
				_, err := io.ReadFull(c, b)
				if err == nil {
					_, err = c.Write(b)
				}
				if err == nil {
					_, err = io.Copy(io.Discard, c)
				}
				if err != nil && !errors.Is(err, net.ErrClosed) {
					mu.Lock()
					srvErrs = append(srvErrs, err)
					mu.Unlock()
				}
			}()
		}
	}()
	clients := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		l.Close()
		mu.Lock()
		for _, c := range served {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()

	send := make([]byte, size)
	for i := range send {
		send[i] = byte('a' + i%26)
	}
	back := make([]byte, size)
	start := time.Now()
	for i := range conns {
		c, err := net.DialTimeout("tcp4", l.Addr().String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
		clients = append(clients, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(send); err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
		if !bytes.Equal(back, send) {
			return fmt.Errorf("connection %d: the echo differs from what was sent", i+1)
		}
		c.SetDeadline(time.Time{})
	}
	open := idleOpen{Connections: len(clients), Bytes: size, Seconds: time.Since(start).Seconds()}
	if err := json.NewEncoder(out).Encode(open); err != nil {
		return err
	}
	hold()
	mu.Lock()
	defer mu.Unlock()
	return errors.Join(srvErrs...)
}

// idleResult is what one tcp-idle run measured, kept in bench.json.
type idleResult struct {
	Namespace   string  `json:"namespace"`
	DaemonPID   int     `json:"uloopd_pid"`
	Connections int     `json:"connections"`
	Bytes       int     `json:"bytes_each_way"`
	OpenSeconds float64 `json:"open_seconds"`
	// uloopd's VmRSS, KiB: after its ready line and idleSettleBefore,
	// and idleSettleAfter after all connections were open.
	RSSBeforeKiB int64 `json:"rss_before_kib"`
	RSSAfterKiB  int64 `json:"rss_after_kib"`
	// go_memstats_heap_inuse_bytes at the same two times; nil if
	// uloopd does not export it.
	HeapInuseBefore *float64 `json:"heap_inuse_before_bytes,omitempty"`
	HeapInuseAfter  *float64 `json:"heap_inuse_after_bytes,omitempty"`
	// ConnectionsActive is uloop_tcp_connections_active with all open.
	ConnectionsActive float64 `json:"connections_active"`
}

// figures turns the measurements into the case's figures. It fails if
// uloopd did not relay exactly the connections opened: then the traffic
// did not all go through uloop, and the growth is not theirs.
func (r idleResult) figures() (map[string]float64, error) {
	if r.Connections <= 0 {
		return nil, errors.New("no connections opened")
	}
	if r.ConnectionsActive != float64(r.Connections) {
		return nil, fmt.Errorf("uloopd relays %v TCP connections (uloop_tcp_connections_active) with %d open: want them all, through uloop",
			r.ConnectionsActive, r.Connections)
	}
	n := float64(r.Connections)
	v := map[string]float64{
		mIdleRSS.Key:       float64(r.RSSAfterKiB-r.RSSBeforeKiB) / n,
		mIdleRSSBefore.Key: float64(r.RSSBeforeKiB) / 1024,
		mIdleRSSAfter.Key:  float64(r.RSSAfterKiB) / 1024,
	}
	if r.HeapInuseBefore != nil && r.HeapInuseAfter != nil {
		v[mIdleHeap.Key] = (*r.HeapInuseAfter - *r.HeapInuseBefore) / 1024 / n
	}
	return v, nil
}

// runIdle is one run of tcp-idle: a namespace ulb-PID-idleK and a uloopd
// of its own, started as the shared one is; uloopd's RSS and heap once it
// has settled; `_tcp-idle` opening cfg.idleConns connections in the
// namespace; the same figures 2 s after the last is open. Everything it
// made is gone when it returns, whatever the way out (an error, ctx's end).
func (h *harness) runIdle(ctx context.Context) (out runOutput, err error) {
	h.idleSeq++
	n, err := newNetns(os.Getpid(), fmt.Sprintf("idle%d", h.idleSeq), "uloop")
	if err != nil {
		return out, err
	}
	var d *daemon
	var idle *netns.Process
	var stdin io.Closer
	defer func() {
		// The client first (it holds the connections; closing its
		// stdin ends it), then uloopd (SIGTERM: it restores the
		// namespace), then anything left, then the namespace.
		var errs []error
		if idle != nil {
			stdin.Close()
			select {
			case <-idle.Done():
			case <-time.After(10 * time.Second):
				idle.Kill()
			}
		}
		if d != nil {
			errs = append(errs, d.stop())
		}
		errs = append(errs, n.KillAll(5*time.Second), n.Delete())
		if cerr := errors.Join(errs...); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up %s: %w", n, cerr))
		}
	}()

	d, err = startDaemon(ctx, n, h.cfg.uloopd)
	if err != nil {
		return out, err
	}
	res := idleResult{Namespace: n.Name(), DaemonPID: d.p.Pid()}
	out.Raw = &res
	cl := control.New(n.Namespace, 5*time.Second)
	// sample reads uloopd's RSS and heap, and the connections it relays.
	sample := func() (rssKiB int64, heap *float64, active float64, err error) {
		if d.p.Exited() {
			return 0, nil, 0, d.exitErr()
		}
		if rssKiB, err = procRSS(d.p.Pid()); err != nil {
			return
		}
		m, err := cl.Metrics(ctx)
		if err != nil {
			return
		}
		if v, herr := m.Value("go_memstats_heap_inuse_bytes"); herr == nil {
			heap = &v
		}
		active, err = m.Value("uloop_tcp_connections_active")
		return
	}
	if err := sleepCtx(ctx, idleSettleBefore); err != nil {
		return out, err
	}
	var active float64
	if res.RSSBeforeKiB, res.HeapInuseBefore, active, err = sample(); err != nil {
		return out, err
	}
	if active != 0 {
		return out, fmt.Errorf("a fresh uloopd relays %v TCP connections before any was opened", active)
	}

	opened := make(chan idleOpen, 1)
	log := &netns.Output{Max: 20, OnLine: func(line string) {
		var o idleOpen
		if json.Unmarshal([]byte(line), &o) == nil && o.Connections > 0 {
			select {
			case opened <- o:
			default:
			}
		}
	}}
	cmd := exec.CommandContext(ctx, h.self, cmdTCPIdle, "-conns", fmt.Sprint(h.cfg.idleConns), "-bytes", fmt.Sprint(idleBytes))
	cmd.Stdout, cmd.Stderr = log, log
	w, err := cmd.StdinPipe()
	if err != nil {
		return out, err
	}
	if idle, err = n.Start(cmd); err != nil {
		w.Close()
		return out, err
	}
	stdin = w
	limit := 30*time.Second + time.Duration(h.cfg.idleConns)*2*time.Millisecond
	select {
	case o := <-opened:
		res.Connections, res.Bytes, res.OpenSeconds = o.Connections, o.Bytes, o.Seconds
	case <-idle.Done():
		return out, fmt.Errorf("%s exited before all connections were open (%v): %s", cmdTCPIdle, idle.Wait(), log.Tail(5))
	case <-ctx.Done():
		return out, ctx.Err()
	case <-time.After(limit):
		return out, fmt.Errorf("%s: not all %d connections open after %v: %s", cmdTCPIdle, h.cfg.idleConns, limit, log.Tail(5))
	}
	if res.Connections != h.cfg.idleConns {
		return out, fmt.Errorf("%s opened %d connections, want %d", cmdTCPIdle, res.Connections, h.cfg.idleConns)
	}
	if err := sleepCtx(ctx, idleSettleAfter); err != nil {
		return out, err
	}
	if res.RSSAfterKiB, res.HeapInuseAfter, res.ConnectionsActive, err = sample(); err != nil {
		return out, err
	}
	if idle.Exited() {
		return out, fmt.Errorf("%s exited while holding the connections (%v): %s", cmdTCPIdle, idle.Wait(), log.Tail(5))
	}
	out.Values, err = res.figures()
	return out, err
}

// sleepCtx sleeps for d, or until ctx ends (and returns its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
