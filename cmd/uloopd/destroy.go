//go:build linux

package main

import (
	"log/slog"
	"net"

	"github.com/uloop/uloop/stack"
	"github.com/vishvananda/netlink"
)

// destroySockets closes both kernel sockets of each relayed TCP connection
// among flows, the client's and the server's, with SOCK_DESTROY (as `ss -K` does; it needs
// CAP_NET_ADMIN, which uloopd keeps, and a kernel with
// CONFIG_INET_DIAG_DESTROY). Their programs get ECONNABORTED.
func destroySockets(flows []stack.Flow, log *slog.Logger) {
	conns := 0
	for _, c := range flows {
		if c.Proto != "tcp" {
			continue
		}
		conns++
		client := net.TCPAddrFromAddrPort(c.Client)
		server := net.TCPAddrFromAddrPort(c.Server)
		for _, pair := range [][2]*net.TCPAddr{{client, server}, {server, client}} {
			if err := netlink.SocketDestroy(pair[0], pair[1]); err != nil {
				log.Warn("destroying a relayed connection's socket", "local", pair[0], "remote", pair[1], "err", err)
			}
		}
	}
	if conns > 0 {
		log.Info("destroyed the kernel sockets of relayed connections", "connections", conns)
	}
}
