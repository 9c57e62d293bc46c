//go:build linux

package main

// The TCP latency and connection-rate cases: a Go echo server and client,
// each a hidden subcommand of this binary started inside the namespace (a
// process entirely in the namespace, so every socket and goroutine is there;
// setns on one locked thread would hold only that thread's sockets).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/uloop/uloop/netns"
)

const (
	cmdEchoServer = "_echo-server"
	cmdTCPRR      = "_tcp-rr"
	cmdTCPCRR     = "_tcp-crr"

	rrWarmUp  = 200 // untimed round trips on each `_tcp-rr` connection
	crrWarmUp = 50  // untimed connections of `_tcp-crr`
)

// rrResult is what `_tcp-rr` prints: 1-byte request/response round trips on
// one connection, or on several at once (each in its own goroutine, as a
// connection pool of a database or cache client uses them).
type rrResult struct {
	Connections int `json:"connections"`
	// Count is the round trips timed; WarmUp those of the warm-up before
	// (rrWarmUp on each connection), which also crossed the path.
	Count     int            `json:"count"`
	WarmUp    int            `json:"warm_up_count"`
	Seconds   float64        `json:"seconds"`
	PerSecond float64        `json:"per_second"`
	Latency   latencySummary `json:"latency"`
}

// output is a `_tcp-rr` run's figures; its work is every round trip the
// client completed, the warm-up's too, as uloopd relayed them all.
func (r rrResult) output() runOutput {
	return runOutput{
		Values: map[string]float64{"p50_us": r.Latency.P50US, "p99_us": r.Latency.P99US, "per_s": r.PerSecond},
		Work:   float64(r.Count + r.WarmUp),
		Raw:    r,
	}
}

// crrResult is what `_tcp-crr` prints: connections each opened, used for one
// 1-byte request/response and closed, one after the other.
type crrResult struct {
	// Connections are those that succeeded in the timed part;
	// WarmUpConnections those that succeeded in the warm-up before it.
	Connections       int            `json:"connections"`
	WarmUpConnections int            `json:"warm_up_connections"`
	Failed            int            `json:"failed"`
	FirstError        string         `json:"first_error,omitempty"`
	Seconds           float64        `json:"seconds"`
	PerSecond         float64        `json:"per_second"`
	Latency           latencySummary `json:"latency"` // connect to close
}

// subcommand runs a hidden subcommand if args names one.
func subcommand(args []string) (handled bool, code int) {
	if len(args) == 0 {
		return false, 0
	}
	var err error
	switch args[0] {
	case cmdEchoServer:
		err = echoServer()
	case cmdTCPIdle:
		err = tcpIdleMain(args[1:])
		if errors.Is(err, flag.ErrHelp) {
			return true, 0
		}
	case cmdTCPRR, cmdTCPCRR:
		fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
		addr := fs.String("addr", "", "server address")
		d := fs.Duration("duration", 5*time.Second, "how long to measure")
		conns := fs.Int("conns", 1, "connections at once (_tcp-rr)")
		if err := fs.Parse(args[1:]); err != nil {
			return true, 2
		}
		var res any
		if args[0] == cmdTCPRR {
			res, err = tcpRR(*addr, *d, *conns)
		} else {
			res, err = tcpCRR(*addr, *d)
		}
		if err == nil {
			err = json.NewEncoder(os.Stdout).Encode(res)
		}
	default:
		return false, 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop-bench %s: %v\n", args[0], err)
		return true, 1
	}
	return true, 0
}

// echoServer listens on 127.0.0.1 (a port the kernel picks), prints the port
// on a line of its own once listening (the harness's readiness signal), and
// echoes every byte it reads on every connection until SIGTERM or SIGKILL.
func echoServer() error {
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	fmt.Printf("%d\n", l.Addr().(*net.TCPAddr).Port)
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		l.Close()
	}()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and the like: say so, keep serving.
			fmt.Fprintf(os.Stderr, "accept: %v\n", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			c.SetNoDelay(true)
			var b [1]byte
			for {
				if _, err := c.Read(b[:]); err != nil {
					return
				}
				if _, err := c.Write(b[:]); err != nil {
					return
				}
			}
		}()
	}
}

// roundTrip sends one byte and reads the one echoed.
func roundTrip(c net.Conn, b []byte) error {
	if _, err := c.Write(b[:1]); err != nil {
		return err
	}
	_, err := io.ReadFull(c, b[:1])
	return err
}

// tcpRR measures round trips of 1 byte on conns TCP_NODELAY connections at
// once for d, each connection after a short warm-up of its own; every
// connection's round trips count, and the rate is their sum.
func tcpRR(addr string, d time.Duration, conns int) (rrResult, error) {
	if conns < 1 {
		return rrResult{}, fmt.Errorf("-conns %d: want at least 1", conns)
	}
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		if err != nil {
			return rrResult{}, err
		}
		cs = append(cs, c)
		// Go sets TCP_NODELAY on every TCP connection; said here
		// because the case is about it.
		if err := c.(*net.TCPConn).SetNoDelay(true); err != nil {
			return rrResult{}, err
		}
		b := []byte{'x'}
		for range rrWarmUp {
			if err := roundTrip(c, b); err != nil {
				return rrResult{}, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	type result struct {
		samples []time.Duration
		err     error
	}
	results := make(chan result, conns)
	start := time.Now()
	end := start.Add(d)
	for _, c := range cs {
		go func() {
			b := []byte{'x'}
			samples := make([]time.Duration, 0, 1<<16)
			for t0 := time.Now(); t0.Before(end); {
				if err := roundTrip(c, b); err != nil {
					results <- result{err: fmt.Errorf("after %d round trips: %w", len(samples), err)}
					return
				}
				t1 := time.Now()
				samples = append(samples, t1.Sub(t0))
				t0 = t1
			}
			results <- result{samples: samples}
		}()
	}
	var all []time.Duration
	var errs []error
	for range cs {
		r := <-results
		all = append(all, r.samples...)
		errs = append(errs, r.err)
	}
	if err := errors.Join(errs...); err != nil {
		return rrResult{}, err
	}
	secs := time.Since(start).Seconds()
	return rrResult{
		Connections: conns,
		Count:       len(all),
		WarmUp:      conns * rrWarmUp,
		Seconds:     secs,
		PerSecond:   float64(len(all)) / secs,
		Latency:     summarizeDurations(all),
	}, nil
}

// tcpCRR opens connections one after the other for d: connect, 1-byte
// request and response, close. The client closes first, so TIME_WAIT is on
// its side; the namespace's net.ipv4.tcp_tw_reuse (2 by default: loopback
// addresses only, which 127.0.0.1 is on either side) lets it reuse those
// ports after a second, so ~28000 ephemeral ports last at any rate below
// 28000/s. A failed connection is counted (in Failed, with those of the
// warm-up) and the run goes on: the rate is that of the connections that
// succeeded over the whole time.
func tcpCRR(addr string, d time.Duration) (crrResult, error) {
	var r crrResult
	dialer := net.Dialer{Timeout: 2 * time.Second}
	b := []byte{'x'}
	one := func() error {
		c, err := dialer.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		err = roundTrip(c, b)
		return errors.Join(err, c.Close())
	}
	fail := func(err error) {
		r.Failed++
		if r.FirstError == "" {
			r.FirstError = err.Error()
		}
	}
	// Warm-up: crrWarmUp connections, not timed; their failures count all the
	// same. Only a path on which none succeeds is an error.
	for range crrWarmUp {
		if err := one(); err != nil {
			fail(err)
		} else {
			r.WarmUpConnections++
		}
	}
	if r.WarmUpConnections == 0 {
		return r, fmt.Errorf("warm-up: all %d connections failed, first: %s", crrWarmUp, r.FirstError)
	}
	samples := make([]time.Duration, 0, 1<<15)
	start := time.Now()
	end := start.Add(d)
	for t0 := start; t0.Before(end); {
		err := one()
		t1 := time.Now()
		if err != nil {
			fail(err)
		} else {
			samples = append(samples, t1.Sub(t0))
		}
		t0 = t1
	}
	r.Seconds = time.Since(start).Seconds()
	r.Connections = len(samples)
	r.PerSecond = float64(r.Connections) / r.Seconds
	r.Latency = summarizeDurations(samples)
	return r, nil
}

// startEchoServer starts `_echo-server` in n and returns the address it
// prints once it listens; the caller stops it.
func (h *harness) startEchoServer(ctx context.Context, n *netNS) (*netns.Process, string, error) {
	portc := make(chan string, 1)
	out := &netns.Output{Max: 20, OnLine: func(line string) {
		select {
		case portc <- line:
		default:
		}
	}}
	p, err := startIn(ctx, n, out, h.self, cmdEchoServer)
	if err != nil {
		return nil, "", err
	}
	select {
	case port := <-portc:
		return p, net.JoinHostPort("127.0.0.1", port), nil
	case <-p.Done():
		return nil, "", fmt.Errorf("echo server exited: %s", out.Tail(10))
	case <-time.After(10 * time.Second):
		p.Kill()
		return nil, "", errors.New("echo server did not start listening within 10s")
	}
}

// runGoClient runs a `_tcp-rr` or `_tcp-crr` client in n against a fresh
// echo server, with extra flags args, and decodes the JSON it prints into
// res.
func (h *harness) runGoClient(ctx context.Context, n *netNS, sub string, res any, args ...string) error {
	srv, addr, err := h.startEchoServer(ctx, n)
	if err != nil {
		return err
	}
	defer srv.Kill()
	cctx, cancel := context.WithTimeout(ctx, h.cfg.duration+30*time.Second)
	defer cancel()
	stdout, err := runIn(cctx, n, append([]string{h.self, sub, "-addr", addr, "-duration", h.cfg.duration.String()}, args...)...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(stdout, res); err != nil {
		return fmt.Errorf("%s output: %w", sub, err)
	}
	return nil
}
