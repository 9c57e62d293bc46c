//go:build linux

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Bounds the fault tests hold uloopd to (docs/reliability.md states them).
const (
	// deviceLossExit: from `ip link del ulo0` to uloopd's exit.
	deviceLossExit = 5 * time.Second
	// sigtermExit: from SIGTERM to exit 0, with 200 connections to reset.
	sigtermExit = 5 * time.Second
	// clientNotice: from the fault to every relayed client's socket
	// reporting it (an error or EOF). A client left to find out by itself
	// would wait for TCP's retransmission timeout, 15 minutes by default.
	clientNotice = 10 * time.Second
)

// endResult is how one side of a connection ended.
type endResult struct {
	err error // io.EOF for a clean close
	at  time.Time
}

// noticed reports whether err is the connection telling the program it is
// over (a reset, a broken pipe, an abort, EOF), as opposed to the test's own
// deadline running out on a connection that just went silent.
func noticed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ETIMEDOUT)
}

// TestFaults: what programs and the namespace see when uloopd's device
// disappears under it or it is stopped, with connections in flight.
func TestFaults(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		t.Run("device-deleted-during-transfer", testDeviceDeleted)
		t.Run("sigterm-200-connections", func(t *testing.T) { testSIGTERMActive(t, 200) })
		t.Run("sigterm-at-ready", testSIGTERMAtReady)
	})
}

// testSIGTERMAtReady sends SIGTERM the moment uloopd logs that it is ready,
// as a service manager stopping a unit that just started may: the promise
// of SIGTERM (undo everything, exit 0) holds from the ready line on. Five
// tries, since the moment is a race by nature.
func testSIGTERMAtReady(t *testing.T) {
	for try := range 5 {
		ns := newNS(t)
		s0 := readHostState(t, ns)
		d := launchDaemonIn(t, ns, []string{uloopd(t)}, func(d *daemon) {
			d.p.Signal(syscall.SIGTERM)
		})
		d.waitReady(t)
		d.waitExit(t, fmt.Sprintf("SIGTERM at the ready line (try %d)", try))
		if code := d.p.ExitCode(); code != 0 {
			t.Errorf("try %d: uloopd sent SIGTERM at its ready line: got %v, want exit status 0 (no \"stopping\" line in its logs means the signal killed it before its handler was installed)\nlogs:\n%s",
				try, d.p.State(), d.logs)
		}
		requireState(t, fmt.Sprintf("try %d: after SIGTERM at the ready line", try), readHostState(t, ns), s0)
		if t.Failed() {
			return
		}
	}
}

// testDeviceDeleted deletes ulo0 while a TCP transfer runs through it.
// uloopd must exit non-zero within deviceLossExit saying why, give back the
// namespace, and the transfer's client must learn that its connection is
// gone within clientNotice, not hang.
func testDeviceDeleted(t *testing.T) {
	ns := newNS(t)
	s0 := readHostState(t, ns)
	d := startDaemon(t, ns)
	c, s := connPair(t, ns, "127.0.0.1:0", "127.0.0.1")
	c.SetDeadline(time.Now().Add(commandTimeout))
	s.SetDeadline(time.Now().Add(commandTimeout))

	var sent, received atomic.Int64
	clientDone := make(chan endResult, 2) // the writer and the reader
	serverDone := make(chan endResult, 1)
	go func() { // client -> server, as fast as the path takes it
		buf := bytes.Repeat([]byte("transfer"), 8<<10)
		for {
			n, err := c.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				clientDone <- endResult{err, time.Now()}
				return
			}
		}
	}()
	go func() { // the client also reads, as a program waiting for an answer would
		_, err := c.Read(make([]byte, 1))
		if err == nil {
			err = errors.New("read a byte the server never sent")
		}
		clientDone <- endResult{err, time.Now()}
	}()
	go func() {
		n, err := io.Copy(io.Discard, s)
		received.Add(n)
		if err == nil {
			err = io.EOF
		}
		serverDone <- endResult{err, time.Now()}
	}()
	pollUntil(t, 10*time.Second, "the transfer to get going", func() (bool, string) {
		return sent.Load() > 64<<20, fmt.Sprintf("%d bytes written", sent.Load())
	})

	ns.mustRun(t, "ip", "link", "del", tunDev)
	deleted := time.Now()
	// These only keep the test from hanging: ending by them is a failure.
	c.SetDeadline(deleted.Add(clientNotice + 2*time.Second))
	s.SetDeadline(deleted.Add(clientNotice + 2*time.Second))
	took := d.waitExit(t, "ulo0 was deleted")
	t.Logf("uloopd exited %v after ulo0 was deleted: %v", took.Round(time.Millisecond), d.p.State())
	if took > deviceLossExit {
		t.Errorf("uloopd took %v to exit after ulo0 was deleted, want <= %v", took.Round(time.Millisecond), deviceLossExit)
	}
	if code := d.p.ExitCode(); code == 0 || code == -1 {
		t.Errorf("uloopd after losing ulo0: got %v, want a non-zero exit status", d.p.State())
	}
	logs := d.logs.String()
	if !regexp.MustCompile(`level=ERROR.*` + tunDev).MatchString(logs) {
		t.Errorf("uloopd's logs after losing %s: want an ERROR line naming %s; got:\n%s", tunDev, tunDev, logs)
	}
	requireState(t, "after uloopd lost ulo0 (lo may stay up)", readHostState(t, ns).ignoringLoUp(), s0.ignoringLoUp())

	// The client: its first end (writer or reader) says whether it learned
	// of the loss. Both must end eventually: the test's deadlines make sure.
	first := <-clientDone
	second := <-clientDone
	srv := <-serverDone
	t.Logf("client: first %v after deletion (%v), then %v after (%v); server: %v after (%v); %d bytes written, %d received",
		first.at.Sub(deleted).Round(time.Millisecond), first.err, second.at.Sub(deleted).Round(time.Millisecond), second.err,
		srv.at.Sub(deleted).Round(time.Millisecond), srv.err, sent.Load(), received.Load())
	if !noticed(first.err) || first.at.Sub(deleted) > clientNotice {
		t.Errorf("client after ulo0 was deleted: got %v after %v, want a reset, an abort or EOF within %v (a connection that just goes silent leaves the program waiting for TCP's retransmission timeout)",
			first.err, first.at.Sub(deleted).Round(time.Millisecond), clientNotice)
	}
}

// testSIGTERMActive stops uloopd while n TCP connections are exchanging
// data. uloopd must exit 0 within sigtermExit, give back the namespace
// exactly, and every client must see its connection reset (or closed), none
// left hanging.
func testSIGTERMActive(t *testing.T, n int) {
	ns := newNS(t)
	s0 := readHostState(t, ns)
	d := startDaemon(t, ns)
	l := ns.listen(t, "tcp", "127.0.0.1:0")
	tcpEcho(t, l)

	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = ns.mustDial(t, "tcp", l.Addr().String())
	}
	var rounds atomic.Int64
	results := make([]endResult, n)
	var started, wg sync.WaitGroup
	started.Add(n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(commandTimeout))
			msg := bytes.Repeat([]byte(fmt.Sprintf("conn %03d|", i)), 100)
			got := make([]byte, len(msg))
			for r := 0; ; r++ {
				_, err := c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, got)
				}
				if err == nil && !bytes.Equal(got, msg) {
					err = fmt.Errorf("echo: got %q..., want %q...", got[:16], msg[:16])
				}
				if err != nil {
					results[i] = endResult{err, time.Now()}
					if r == 0 {
						started.Done()
					}
					return
				}
				if r == 0 {
					started.Done()
				}
				rounds.Add(1)
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	started.Wait()
	pollUntil(t, 10*time.Second, "the connections to exchange a few rounds each", func() (bool, string) {
		return rounds.Load() >= int64(3*n), fmt.Sprintf("%d exchanges", rounds.Load())
	})
	if m := metrics(t, ns); metricValue(t, m, "uloop_tcp_connections_active") < float64(n) {
		t.Fatalf("uloop_tcp_connections_active before SIGTERM: got %v, want >= %d", metricValue(t, m, "uloop_tcp_connections_active"), n)
	}

	if err := d.p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	signalled := time.Now()
	// A client that is never told would block until this deadline.
	for _, c := range conns {
		c.SetDeadline(signalled.Add(clientNotice + 2*time.Second))
	}
	took := d.waitExit(t, "SIGTERM")
	t.Logf("uloopd exited %v after SIGTERM with %d connections (%d exchanges before): %v", took.Round(time.Millisecond), n, rounds.Load(), d.p.State())
	if took > sigtermExit {
		t.Errorf("uloopd took %v to exit after SIGTERM, want <= %v", took.Round(time.Millisecond), sigtermExit)
	}
	if code := d.p.ExitCode(); code != 0 {
		t.Errorf("uloopd after SIGTERM: got %v, want exit status 0", d.p.State())
	}
	requireState(t, "after SIGTERM with connections open", readHostState(t, ns), s0)

	wg.Wait()
	kinds := map[string]int{}
	var bad []string
	for i, r := range results {
		kinds[errKind(r.err)]++
		if !noticed(r.err) || r.at.Sub(signalled) > clientNotice {
			bad = append(bad, fmt.Sprintf("conn %d: %v after %v", i, r.err, r.at.Sub(signalled).Round(time.Millisecond)))
		}
	}
	t.Logf("how the %d clients saw the stop: %v", n, kinds)
	if len(bad) > 0 {
		sort.Strings(bad)
		t.Errorf("%d of %d clients did not see a reset or EOF within %v of SIGTERM, want none; first: %s", len(bad), n, clientNotice, strings.Join(bad[:min(5, len(bad))], "; "))
	}
}

// errKind names an error for a summary.
func errKind(err error) string {
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, syscall.EPIPE):
		return "EPIPE"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "deadline"
	}
	return err.Error()
}
