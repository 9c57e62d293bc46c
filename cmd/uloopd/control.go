//go:build linux

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/stack"
	"golang.org/x/sys/unix"
)

// listenControl binds the control socket (control.Socket). Abstract sockets
// belong to a network namespace, so binding it is also the lock that allows
// one uloopd per namespace, and it vanishes with the process however that
// ends: nothing to clean up after a SIGKILL. Only root, and members of group
// (if >= 0), get past Accept: abstract sockets have no file permissions, so
// the peer's credentials are checked instead.
func listenControl(group int) (net.Listener, error) {
	ln, err := net.Listen("unix", control.Socket)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, errors.New("another uloopd is already running in this network namespace (control socket " + control.Socket + " is taken)")
	}
	if err != nil {
		return nil, fmt.Errorf("binding control socket: %w", err)
	}
	return &credListener{Listener: ln, group: group}, nil
}

// credListener drops connections from peers other than root or group.
type credListener struct {
	net.Listener
	group int
}

func (l *credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.allowed(c) {
			return c, nil
		}
		c.Close()
	}
}

func (l *credListener) allowed(c net.Conn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return false
	}
	return cred.Uid == 0 || (l.group >= 0 && cred.Gid == uint32(l.group))
}

// serveControl serves /metrics and /debug/pprof/ until ln is closed. Besides
// the data path's counters, /metrics has the Go runtime's (go_goroutines,
// heap) and the process's (process_resident_memory_bytes, open fds), which
// leak tests watch.
func serveControl(ln net.Listener, st *stack.Stack, log *slog.Logger) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(st.Metrics(), st.Drops),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Warn("control socket stopped", "err", err)
	}
}
