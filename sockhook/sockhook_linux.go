package sockhook

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), not in x/sys/unix yet.
const soNetnsCookie = 71

// Hooks are the attached programs; Close detaches them.
type Hooks struct {
	progs  []*ebpf.Program
	attach []ebpf.AttachType // where each of progs attaches
	links  []link.Link
	// listeners is the SOCKHASH the listen and lookup hooks share.
	listeners *ebpf.Map
	// off is the hand-back switch the steering programs read.
	off *ebpf.Map
}

// Load builds and loads the programs for the calling thread's network
// namespace; Attach then attaches them. Loading is what needs CAP_BPF and
// CAP_NET_ADMIN (or CAP_SYS_ADMIN); without them Load returns an error
// wrapping ErrNotPermitted, and the caller can go on without the hooks
// having changed nothing.
func Load(c Config) (*Hooks, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	cookie, err := NetnsCookie()
	if err != nil {
		return nil, err
	}
	if _, err := cgroup2Root(); err != nil {
		return nil, err
	}
	dev, err := net.InterfaceByName(c.Device)
	if err != nil {
		return nil, fmt.Errorf("sockhook: device %q: %w", c.Device, err)
	}
	pw := words(c.Prefix.Addr())
	p := params{cookie: cookie, mark: c.Mark, prefix: [2]int32{pw[0], pw[1]}, target: c.Target, kernel: c.Kernel, device: dev.Index}
	progs := []struct {
		name   string
		typ    ebpf.ProgramType
		attach ebpf.AttachType
		ins    asm.Instructions
	}{
		{"uloop_connect6", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect, steer(p, false)},
		{"uloop_sendmsg6", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Sendmsg, steer(p, true)},
		{"uloop_peer6", ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername, unhide(p)},
		{"uloop_sock6", ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetSockname, unhide(p)},
		{"uloop_recv6", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Recvmsg, unhide(p)},
		{"uloop_listen6", ebpf.SockOps, ebpf.AttachCGroupSockOps, listen(p)},
		{"uloop_lookup6", ebpf.SkLookup, ebpf.AttachSkLookup, lookup(p)},
	}
	h := &Hooks{}
	listeners, err := ebpf.NewMap(&ebpf.MapSpec{Name: "uloop_listen6", Type: ebpf.SockHash, KeySize: 4, ValueSize: 8, MaxEntries: 1 << 16})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("sockhook: creating the listeners map: %w (%v)", ErrNotPermitted, err)
		}
		return nil, fmt.Errorf("sockhook: creating the listeners map: %w", err)
	}
	h.listeners = listeners
	if h.off, err = ebpf.NewMap(&ebpf.MapSpec{Name: "uloop_off6", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		h.Close()
		return nil, fmt.Errorf("sockhook: creating the hand-back switch: %w", err)
	}
	for _, pr := range progs {
		for sym, m := range map[string]*ebpf.Map{listenersMap: listeners, offMap: h.off} {
			if !slices.ContainsFunc(pr.ins, func(ins asm.Instruction) bool { return ins.Reference() == sym }) {
				continue
			}
			if err := pr.ins.AssociateMap(sym, m); err != nil {
				h.Close()
				return nil, fmt.Errorf("sockhook: %s: %w", pr.name, err)
			}
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         pr.name,
			Type:         pr.typ,
			AttachType:   pr.attach,
			Instructions: pr.ins,
			License:      "GPL",
		})
		if err != nil {
			h.Close()
			if errors.Is(err, unix.EPERM) {
				return nil, fmt.Errorf("sockhook: loading %s: %w (%v)", pr.name, ErrNotPermitted, err)
			}
			return nil, fmt.Errorf("sockhook: loading %s: %w", pr.name, err)
		}
		h.progs = append(h.progs, prog)
		h.attach = append(h.attach, pr.attach)
	}
	return h, nil
}

// Attach attaches the loaded programs to the root of the cgroup v2
// hierarchy, so that they see every socket of the namespace whatever
// cgroup its process is in; from then on ::1 is steered. On error nothing
// stays attached.
func (h *Hooks) Attach() error {
	cg, err := cgroup2Root()
	if err != nil {
		return err
	}
	dir, err := os.Open(cg)
	if err != nil {
		return fmt.Errorf("sockhook: opening %s: %w", cg, err)
	}
	defer dir.Close()
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("sockhook: %w", err)
	}
	defer ns.Close()
	for i, prog := range h.progs {
		// A bpf_link, never the legacy attachment: a link ends with the
		// process, so a killed uloop leaves no hook behind. The lookup
		// hook belongs to the namespace, the others to the cgroup.
		var l link.Link
		var err error
		if h.attach[i] == ebpf.AttachSkLookup {
			l, err = link.AttachNetNs(int(ns.Fd()), prog)
		} else {
			l, err = link.AttachRawLink(link.RawLinkOptions{Target: int(dir.Fd()), Program: prog, Attach: h.attach[i]})
		}
		if err != nil {
			h.detach()
			return fmt.Errorf("sockhook: attaching to %s: %w", cg, err)
		}
		h.links = append(h.links, l)
	}
	return nil
}

// Attach loads the programs and attaches them (Load, then Hooks.Attach).
func Attach(c Config) (*Hooks, error) {
	h, err := Load(c)
	if err != nil {
		return nil, err
	}
	if err := h.Attach(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// detach closes the links, leaving the programs loaded.
func (h *Hooks) detach() error {
	var errs []error
	for _, l := range h.links {
		errs = append(errs, l.Close())
	}
	h.links = nil
	return errors.Join(errs...)
}

// Close detaches the programs; ::1 goes through lo again for sockets that
// connect or send from then on. A second call does nothing.
func (h *Hooks) Close() error {
	if h == nil {
		return nil
	}
	errs := []error{h.detach()}
	for _, p := range h.progs {
		errs = append(errs, p.Close())
	}
	h.progs, h.attach = nil, nil
	for _, m := range []**ebpf.Map{&h.listeners, &h.off} {
		if *m != nil {
			errs = append(errs, (*m).Close())
			*m = nil
		}
	}
	return errors.Join(errs...)
}

// Switch returns a new descriptor of the hand-back switch, for a process
// that must be able to stop the steering while this one cannot (uloop
// run's watchdog, when the data path is stopped); see HandBack.
func (h *Hooks) Switch() (*os.File, error) {
	if h == nil || h.off == nil {
		return nil, errors.New("sockhook: no hooks loaded")
	}
	fd, err := unix.FcntlInt(uintptr(h.off.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sockhook: %w", err)
	}
	return os.NewFile(uintptr(fd), "uloop-ipv6-switch"), nil
}

// HandBack stops the steering through f, a descriptor from Switch: from
// then on connects and sends to ::1 go through lo, whatever state the
// process holding the hooks is in. Sockets steered before keep their route.
func HandBack(f *os.File) error {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sockhook: %w", err)
	}
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		return fmt.Errorf("sockhook: the hand-back switch: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), uint32(1)); err != nil {
		return fmt.Errorf("sockhook: handing ::1 back: %w", err)
	}
	return nil
}

// NetnsCookie returns the calling thread's network namespace cookie, the
// number bpf_get_netns_cookie gives programs for its sockets.
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("sockhook: socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0, fmt.Errorf("sockhook: reading the namespace cookie: %w", err)
	}
	return c, nil
}

// cgroup2Root finds where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid system).
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("sockhook: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 && fields[3] == "/" {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("sockhook: reading mountinfo: %w", err)
	}
	return "", fmt.Errorf("sockhook: %w", ErrNoCgroup2)
}
