//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/uloop/uloop/control"
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
