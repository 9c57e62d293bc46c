//go:build linux

package main

import (
	"net"
	"os"
)

// notifySystemd sends state (such as "READY=1") to the service manager when
// uloopd runs as a Type=notify unit; without NOTIFY_SOCKET it does nothing.
// The protocol is one datagram on that unix socket (sd_notify(3)); a leading
// '@' names an abstract socket.
func notifySystemd(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
