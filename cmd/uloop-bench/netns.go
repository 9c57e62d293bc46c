//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/uloop/uloop/netns"
	"github.com/vishvananda/netlink"
)

// A netNS is one of the two namespaces the harness makes (/run/netns/NAME)
// and deletes in teardown.
type netNS struct {
	*netns.Namespace
	side string // "kernel" or "uloop"
}

// addNetns creates the namespace ulb-PID-SIDE.
func addNetns(pid int, side string) (*netNS, error) {
	return newNetns(pid, side, side)
}

// newNetns creates the namespace ulb-PID-LABEL for side: another of the
// harness's, such as a uloop-only case's own (ulb-PID-idle1).
func newNetns(pid int, label, side string) (*netNS, error) {
	ns, err := netns.CreateNamed(fmt.Sprintf("ulb-%d-%s", pid, label))
	if err != nil {
		return nil, err
	}
	return &netNS{Namespace: ns, side: side}, nil
}

// linkMTU returns the MTU of device dev in the namespace.
func (n *netNS) linkMTU(dev string) (int, error) {
	h, err := netlink.NewHandleAt(n.Handle())
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return 0, fmt.Errorf("%s in %s: %w", dev, n, err)
	}
	return l.Attrs().MTU, nil
}

// sysctl reads /proc/sys/KEY (dots for slashes) as seen from the namespace.
func (n *netNS) sysctl(key string) string {
	var b []byte
	n.Do(func() (err error) {
		b, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	return strings.TrimSpace(string(b))
}

// startIn starts argv in n; it runs until it exits, ctx ends (its process
// group is killed then) or teardown kills what is left in n.
func startIn(ctx context.Context, n *netNS, out *netns.Output, argv ...string) (*netns.Process, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	return n.Start(cmd)
}

// runIn runs argv in n to completion and returns its stdout, which it returns
// also when argv fails (iperf3 reports errors in its JSON).
func runIn(ctx context.Context, n *netNS, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	p, err := n.Start(cmd)
	if err == nil {
		err = p.Wait()
	}
	if err != nil {
		return []byte(stdout.String()), exitDetail(argv, err, stderr.String())
	}
	return []byte(stdout.String()), nil
}

// exitDetail describes how a command failed, with the tail of its stderr.
func exitDetail(argv []string, err error, stderr string) error {
	msg := strings.TrimSpace(stderr)
	if len(msg) > 600 {
		msg = "..." + msg[len(msg)-600:]
	}
	if msg == "" {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
}
