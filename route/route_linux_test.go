package route_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uloop/uloop/route"
	"github.com/uloop/uloop/route/routetest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const tunName = "ulo0"

// inNewNetns moves the test's goroutine, locked to its thread, into a fresh
// network namespace until the test ends. Goroutines started meanwhile do not
// follow it.
func inNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("getting network namespace: %v", err)
	}
	restore := func() {
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime then ends it with this
			// goroutine instead of running other code in the wrong namespace.
			t.Errorf("restoring network namespace: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}
	ns, err := netns.New()
	if err != nil {
		restore()
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() {
		restore()
		ns.Close()
	})
}

func newTUN(t *testing.T, name string) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TUN}); err != nil {
		t.Fatalf("creating %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func snapshot(t *testing.T) routetest.Snapshot {
	t.Helper()
	s, err := routetest.Take()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkSnapshot(t *testing.T, when string, want routetest.Snapshot) {
	t.Helper()
	routetest.Require(t, when, snapshot(t), want)
}

// tunSysctls reads the TUN's settings that Apply changes; the snapshot
// leaves them out since the device is not there before start and after stop.
func tunSysctls(t *testing.T) []string {
	t.Helper()
	var vals []string
	for _, s := range route.DeviceSysctls(tunName) {
		vals = append(vals, s.Key+"="+sysctl(t, s.Key))
	}
	return vals
}

func apply(t *testing.T, c route.Config) *route.Takeover {
	t.Helper()
	tk, err := route.Apply(c)
	if err != nil {
		t.Fatalf("route.Apply(%+v): %v", c, err)
	}
	return tk
}

// routeVia returns the device and source of the kernel's route for a
// locally generated packet to dst.
func routeVia(t *testing.T, dst string) (dev, src string) {
	t.Helper()
	routes, err := netlink.RouteGet(net.ParseIP(dst))
	if err != nil || len(routes) == 0 {
		t.Fatalf("ip route get %s: %v (%d routes)", dst, err, len(routes))
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Name, routes[0].Src.String()
}

func sysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// setUp brings a link up. Equivalent to: ip link set dev <name> up
func setUp(t *testing.T, name string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		t.Fatalf("bringing %s up: %v", name, err)
	}
}

func isUp(t *testing.T, name string) bool {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Flags&net.FlagUp != 0
}

func TestApply(t *testing.T) {
	inNewNetns(t)
	newTUN(t, tunName)
	if isUp(t, "lo") {
		t.Fatal("lo is up in a fresh namespace; the test cannot check that Apply brings it up")
	}
	tk := apply(t, route.Config{Device: tunName})
	defer tk.Undo()

	for _, dst := range []string{"127.0.0.1", "127.1.2.3", "127.255.255.254"} {
		if dev, src := routeVia(t, dst); dev != tunName || src != "127.0.0.1" {
			t.Errorf("route to %s: got dev %s src %s, want dev %s src 127.0.0.1", dst, dev, src, tunName)
		}
	}

	// Cross-check with iproute2 rather than with our own rule parsing.
	if _, err := exec.LookPath("ip"); err != nil {
		t.Log("ip not installed; skipping the iproute2 cross-check")
	} else {
		out, err := exec.Command("ip", "-4", "rule", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip rule: %v: %s", err, out)
		}
		want := "1:\tfrom all to 127.0.0.0/8 iif lo lookup 127\n2:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default"
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("ip -4 rule:\ngot:\n%s\nwant:\n%s", got, want)
		}
		out, err = exec.Command("ip", "route", "show", "table", "127").CombinedOutput()
		// linkdown: no process has the TUN open, so it has no carrier.
		if got, want := strings.TrimSpace(string(out)), "127.0.0.0/8 dev ulo0 scope link src 127.0.0.1 linkdown"; err != nil || got != want {
			t.Errorf("ip route show table 127: got %q (%v), want %q", got, err, want)
		}
	}

	for key, want := range map[string]string{
		"net/ipv4/conf/ulo0/route_localnet":    "1",
		"net/ipv4/conf/ulo0/accept_local":      "1",
		"net/ipv6/conf/ulo0/disable_ipv6":      "1",
		"net/ipv4/conf/ulo0/rp_filter":         "0",
		"net/ipv4/conf/all/route_localnet":     "0",
		"net/ipv4/conf/all/accept_local":       "0",
		"net/ipv4/conf/default/route_localnet": "0",
		"net/ipv4/conf/lo/route_localnet":      "0",
	} {
		if got := sysctl(t, key); got != want {
			t.Errorf("%s: got %s, want %s", key, got, want)
		}
	}
	if !isUp(t, "lo") || !isUp(t, tunName) {
		t.Errorf("lo up: %v, %s up: %v; want both up", isUp(t, "lo"), tunName, isUp(t, tunName))
	}
}

// TestOtherInterfaceStillMartian checks the CVE-2020-8558 property: with
// route_localnet on the TUN only, 127.0.0.1 stays unreachable from any
// other interface. The lookups with iif take the kernel's input path.
func TestOtherInterfaceStillMartian(t *testing.T) {
	inNewNetns(t)
	newTUN(t, tunName)
	defer apply(t, route.Config{Device: tunName}).Undo()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"va", "vb"} {
		setUp(t, name)
	}
	dst := net.ParseIP("127.0.0.1")
	if r, err := netlink.RouteGetWithOptions(dst, &netlink.RouteGetOptions{Iif: "va", SrcAddr: net.ParseIP("10.0.0.2")}); err == nil {
		t.Errorf("127.0.0.1 arriving on va from 10.0.0.2: got route %v, want EINVAL (martian)", r)
	}
	r, err := netlink.RouteGetWithOptions(dst, &netlink.RouteGetOptions{Iif: tunName, SrcAddr: net.ParseIP("127.0.0.1")})
	if err != nil || len(r) == 0 || r[0].Type != 2 /* RTN_LOCAL */ {
		t.Errorf("127.0.0.1 arriving on %s from 127.0.0.1: got %v, %v; want a local route", tunName, r, err)
	}
}

func TestApplyUndoRestoresSnapshot(t *testing.T) {
	inNewNetns(t)
	newTUN(t, tunName)
	before, beforeTUN := snapshot(t), tunSysctls(t)
	tk := apply(t, route.Config{Device: tunName})
	if reflect.DeepEqual(snapshot(t), before) {
		t.Fatal("snapshot unchanged by Apply: it would not notice a failed Undo")
	}
	if err := tk.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	checkSnapshot(t, "after Undo", before)
	if got := tunSysctls(t); !reflect.DeepEqual(got, beforeTUN) {
		t.Errorf("TUN sysctls after Undo: got %v, want %v", got, beforeTUN)
	}
	if err := tk.Undo(); err != nil {
		t.Errorf("second Undo: got %v, want nil", err)
	}
	checkSnapshot(t, "after second Undo", before)
}

func TestCleanupAfterKill(t *testing.T) {
	for _, deleteTUN := range []bool{false, true} {
		name := "device left"
		if deleteTUN {
			name = "device deleted"
		}
		t.Run(name, func(t *testing.T) {
			inNewNetns(t)
			// Cleanup cannot know whether lo was down before; start with it up.
			setUp(t, "lo")
			before := snapshot(t)
			tun := newTUN(t, tunName)
			c := route.Config{Device: tunName}
			apply(t, c) // killed: no Undo
			if deleteTUN {
				if err := netlink.LinkDel(tun); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 2 {
				if err := route.Cleanup(c); err != nil {
					t.Fatalf("Cleanup #%d: %v", i+1, err)
				}
				checkSnapshot(t, "after Cleanup", before)
			}
			if dev, _ := routeVia(t, "127.0.0.1"); dev != "lo" {
				t.Errorf("route to 127.0.0.1 after Cleanup: got dev %s, want lo", dev)
			}
		})
	}
}

func TestCleanupCleanNamespace(t *testing.T) {
	inNewNetns(t)
	before := snapshot(t)
	if err := route.Cleanup(route.Config{Device: tunName}); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	checkSnapshot(t, "after Cleanup", before)
}

// TestRefusesOtherDevices checks that a Config naming a real interface
// neither exposes 127/8 on it nor deletes it.
func TestRefusesOtherDevices(t *testing.T) {
	inNewNetns(t)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb"}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t)
	if _, err := route.Apply(route.Config{Device: "va"}); err == nil {
		t.Error("Apply with a veth as Device: got nil, want an error")
	}
	if got := sysctl(t, "net/ipv4/conf/va/route_localnet"); got != "0" {
		t.Errorf("route_localnet of va after Apply: got %s, want 0", got)
	}
	if err := route.Cleanup(route.Config{Device: "va"}); err == nil {
		t.Error("Cleanup with a veth as Device: got nil, want an error")
	}
	checkSnapshot(t, "after Apply and Cleanup on a veth", before)
}

func TestPrefix(t *testing.T) {
	inNewNetns(t)
	newTUN(t, tunName)
	defer apply(t, route.Config{Device: tunName, Prefix: netip.MustParsePrefix("127.77.0.0/16")}).Undo()
	for _, tt := range []struct{ dst, dev, src string }{
		{"127.77.1.2", tunName, "127.77.0.1"},
		{"127.77.0.1", tunName, "127.77.0.1"}, // replies to the source go back through the TUN
		{"127.0.0.1", "lo", "127.0.0.1"},
		{"127.78.0.1", "lo", "127.0.0.1"},
	} {
		if dev, src := routeVia(t, tt.dst); dev != tt.dev || src != tt.src {
			t.Errorf("route to %s: got dev %s src %s, want dev %s src %s", tt.dst, dev, src, tt.dev, tt.src)
		}
	}
}

func TestApplyMissingDevice(t *testing.T) {
	inNewNetns(t)
	before := snapshot(t)
	if _, err := route.Apply(route.Config{Device: "nosuch0"}); err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("Apply with a missing device: got %v, want an error naming nosuch0", err)
	}
	checkSnapshot(t, "after failed Apply", before)
}

// deliverable reports whether locally generated packets to 127.0.0.1 and
// 127.9.9.9 have a route.
func deliverable() bool {
	for _, dst := range []string{"127.0.0.1", "127.9.9.9"} {
		if r, err := netlink.RouteGet(net.ParseIP(dst)); err != nil || len(r) == 0 {
			return false
		}
	}
	return true
}

// TestApplyFailsPartWay fails Apply after each of its steps in turn and
// checks that it leaves the host as found. It also checks that no step of
// Apply makes 127.0.0.0/8 undeliverable once it was deliverable, and, with lo
// up from the start, that no step of Undo does.
func TestApplyFailsPartWay(t *testing.T) {
	for _, loUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("lo up %v", loUp), func(t *testing.T) {
			inNewNetns(t)
			if loUp {
				setUp(t, "lo")
			}
			newTUN(t, tunName)
			before, beforeTUN := snapshot(t), tunSysctls(t)
			errInjected := errors.New("injected failure")
			var afterUndoStep func()
			if loUp {
				afterUndoStep = func() {
					if !deliverable() {
						t.Error("a step of Undo left 127.0.0.0/8 without a route")
					}
				}
			}
			t.Cleanup(func() { route.SetStepHooks(nil, nil) })
			steps := 0
			for n := 1; n < 30 && steps == 0; n++ {
				seen := false
				route.SetStepHooks(func(step int) error { // fails at step n
					ok := deliverable()
					if seen && !ok {
						t.Errorf("step %d of Apply left 127.0.0.0/8 without a route", step)
					}
					seen = seen || ok
					if step == n {
						return errInjected
					}
					return nil
				}, afterUndoStep)
				tk, err := route.Apply(route.Config{Device: tunName})
				if err == nil {
					steps = n - 1
					if err := tk.Undo(); err != nil {
						t.Fatalf("Undo: %v", err)
					}
				} else if !errors.Is(err, errInjected) {
					t.Fatalf("Apply failing after step %d: got %v, want the injected error", n, err)
				}
				checkSnapshot(t, fmt.Sprintf("after Apply with failAt=%d, then Undo if it succeeded", n), before)
				if got := tunSysctls(t); !reflect.DeepEqual(got, beforeTUN) {
					t.Errorf("failAt=%d: TUN sysctls: got %v, want %v", n, got, beforeTUN)
				}
			}
			t.Logf("Apply has %d steps", steps)
			if steps < 8 {
				t.Errorf("Apply had %d steps, want at least 8 (sysctls, links, route, rules)", steps)
			}
		})
	}
}

func TestDeviceDeletedFallsThrough(t *testing.T) {
	inNewNetns(t)
	before := snapshot(t)
	tun := newTUN(t, tunName)
	tk := apply(t, route.Config{Device: tunName})
	if err := netlink.LinkDel(tun); err != nil {
		t.Fatal(err)
	}
	if dev, _ := routeVia(t, "127.0.0.1"); dev != "lo" {
		t.Errorf("route to 127.0.0.1 with the TUN gone: got dev %s, want lo", dev)
	}
	if err := tk.Undo(); err != nil {
		t.Errorf("Undo with the TUN gone: got %v, want nil", err)
	}
	checkSnapshot(t, "after Undo with the TUN gone", before)
}

// openTUN creates a TUN device that lives while the returned file is open,
// as uloopd's does.
func openTUN(t *testing.T, name string) *os.File {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err == nil {
		err = unix.SetNonblock(fd, true) // so that Close ends a blocked Read
	}
	if err != nil {
		unix.Close(fd)
		t.Fatalf("creating TUN %s: %v", name, err)
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	t.Cleanup(func() { f.Close() })
	return f
}

// TestTrafficThroughTUN sends a UDP datagram between two local sockets
// while a goroutine writes every packet read from the TUN straight back: it
// must arrive, having crossed the TUN, also with reverse-path filtering on
// (strict or loose, on all and so on the TUN too: the kernel uses the
// maximum). This is the experiment behind leaving rp_filter alone.
func TestTrafficThroughTUN(t *testing.T) {
	for _, tt := range []struct {
		prefix, dst string
		rpFilter    string
	}{
		{"127.0.0.0/8", "127.0.0.1", "0"},
		{"127.0.0.0/8", "127.0.0.1", "1"},
		{"127.0.0.0/8", "127.3.4.5", "2"},
		{"127.77.0.0/16", "127.77.1.2", "0"},
		{"127.77.0.0/16", "127.77.1.2", "1"},
		{"127.77.0.0/16", "127.77.1.2", "2"},
	} {
		t.Run(fmt.Sprintf("%s rp_filter=%s", tt.prefix, tt.rpFilter), func(t *testing.T) {
			inNewNetns(t)
			// Scratch namespace only: the package itself never writes conf/all.
			for _, dev := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte(tt.rpFilter), 0); err != nil {
					t.Fatal(err)
				}
			}
			tun := openTUN(t, tunName)
			defer apply(t, route.Config{Device: tunName, Prefix: netip.MustParsePrefix(tt.prefix)}).Undo()
			if got := sysctl(t, "net/ipv4/conf/"+tunName+"/rp_filter"); got != tt.rpFilter {
				t.Fatalf("rp_filter of the TUN: got %s, want %s (inherited from default)", got, tt.rpFilter)
			}
			var udp atomic.Int32
			go func() {
				buf := make([]byte, 65535)
				for {
					n, err := tun.Read(buf)
					if err != nil {
						return
					}
					if n > 20 && buf[0]>>4 == 4 && buf[9] == unix.IPPROTO_UDP {
						udp.Add(1)
					}
					tun.Write(buf[:n])
				}
			}()

			ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(tt.dst)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.DialUDP("udp4", nil, ln.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			ln.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 16)
			n, from, err := ln.ReadFromUDP(buf)
			if err != nil || string(buf[:n]) != "ping" {
				t.Fatalf("reading from %v: got %q, %v; want \"ping\"", c.LocalAddr(), buf[:n], err)
			}
			if udp.Load() == 0 {
				t.Errorf("datagram from %v arrived without crossing the TUN", from)
			}
		})
	}
}

// TestHandBack: with the takeover in place and the TUN still up, HandBack
// sends 127/8 back to lo at once; Undo afterwards still restores the
// namespace exactly, and a second HandBack is a no-op.
func TestHandBack(t *testing.T) {
	inNewNetns(t)
	before := snapshot(t)
	tun := newTUN(t, tunName)
	c := route.Config{Device: tunName}
	tk := apply(t, c)
	if dev, _ := routeVia(t, "127.0.0.1"); dev != tunName {
		t.Fatalf("route to 127.0.0.1 after Apply: got dev %s, want %s", dev, tunName)
	}
	for i := range 2 {
		if err := route.HandBack(c); err != nil {
			t.Fatalf("HandBack #%d: %v", i+1, err)
		}
		if dev, _ := routeVia(t, "127.0.0.1"); dev != "lo" {
			t.Errorf("route to 127.0.0.1 after HandBack #%d: got dev %s, want lo", i+1, dev)
		}
	}
	if err := tk.Undo(); err != nil {
		t.Errorf("Undo after HandBack: %v", err)
	}
	if err := netlink.LinkDel(tun); err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, "after HandBack and Undo", before)
}
