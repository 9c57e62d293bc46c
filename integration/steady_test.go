//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// steadyConn is a TCP connection to an echo server that exchanges numbered
// messages in the background, checking every byte that comes back, while a
// test does something else to the path. Cleanup stops it.
type steadyConn struct {
	c      net.Conn
	rounds atomic.Int64 // exchanges completed correctly
	stop   chan struct{}
	done   chan struct{}

	// mu guards err.
	mu  sync.Mutex
	err error // the first failure; the loop stops there
}

// steadyRoundTimeout bounds one exchange; a relay that stalls the connection
// for longer counts as broken.
const steadyRoundTimeout = 5 * time.Second

func startSteady(t *testing.T, ns *netNS, addr string) *steadyConn {
	t.Helper()
	s := &steadyConn{c: ns.mustDial(t, "tcp", addr), stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	t.Cleanup(func() { s.halt() })
	return s
}

func (s *steadyConn) loop() {
	defer close(s.done)
	got := make([]byte, 0, 2048)
	for i := 0; ; i++ {
		select {
		case <-s.stop:
			return
		default:
		}
		// About 1 KiB, different every round, so a lost, repeated or
		// injected byte shows.
		msg := bytes.Repeat([]byte(fmt.Sprintf("steady %09d|", i)), 64)
		s.c.SetDeadline(time.Now().Add(steadyRoundTimeout))
		if _, err := s.c.Write(msg); err != nil {
			s.fail(fmt.Errorf("round %d: write: %w", i, err))
			return
		}
		got = got[:len(msg)]
		if _, err := io.ReadFull(s.c, got); err != nil {
			s.fail(fmt.Errorf("round %d: read: %w", i, err))
			return
		}
		if !bytes.Equal(got, msg) {
			s.fail(fmt.Errorf("round %d: echo: got %q..., want %q...", i, got[:32], msg[:32]))
			return
		}
		s.rounds.Add(1)
		// Leave CPU to what the test is doing (2 cores).
		time.Sleep(2 * time.Millisecond)
	}
}

func (s *steadyConn) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *steadyConn) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// requireProgress fails the test unless the connection has had no error and
// completes at least 10 more exchanges within 10 s.
func (s *steadyConn) requireProgress(t *testing.T, what string) {
	t.Helper()
	from := s.rounds.Load()
	pollUntil(t, 10*time.Second, "the steady connection to keep echoing "+what, func() (bool, string) {
		if err := s.failure(); err != nil {
			t.Fatalf("steady connection %s -> %s broke %s: %v", s.c.LocalAddr(), s.c.RemoteAddr(), what, err)
		}
		n := s.rounds.Load()
		return n >= from+10, fmt.Sprintf("%d exchanges since", n-from)
	})
}

// halt stops the loop and waits for it.
func (s *steadyConn) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.c.SetDeadline(time.Now()) // unblock a pending read
	<-s.done
}

// client and server are the connection's two ends as the kernel sees them.
func (s *steadyConn) client() netip.AddrPort {
	return netip.MustParseAddrPort(s.c.LocalAddr().String())
}

func (s *steadyConn) server() netip.AddrPort {
	return netip.MustParseAddrPort(s.c.RemoteAddr().String())
}
