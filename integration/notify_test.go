//go:build linux

package integration

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestSystemdNotify: started as a Type=notify unit would start it (with
// NOTIFY_SOCKET set), uloopd sends READY=1 once it is ready. The socket is a
// filesystem one: unlike abstract sockets, those are reachable from any
// network namespace, as systemd's is.
func TestSystemdNotify(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	defer sock.Close()
	ns := newNS(t)
	d := launchDaemon(t, []string{"env", "NOTIFY_SOCKET=" + path, "ip", "netns", "exec", ns.name, uloopd(t)})
	d.waitReady(t)
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := sock.Read(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v; want READY=1", err)
	}
	if got := string(buf[:n]); got != "READY=1" {
		t.Errorf("notify message %q, want %q", got, "READY=1")
	}
	d.Stop(t)
}
