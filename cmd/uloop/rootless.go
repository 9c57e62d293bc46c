//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// rootlessProblems lists what keeps `uloop run` from working without root
// on this system, each with how to fix it: unprivileged user namespaces
// turned off (Debian's sysctl, the namespace limit), restricted by AppArmor
// (Ubuntu 24.04 and later), or /dev/net/tun closed to the user. root is the
// file system root the /proc files are read under (tests point it
// elsewhere); tun is the TUN device's path.
func rootlessProblems(root, tun string) []string {
	var problems []string
	read := func(path string) string {
		b, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			return "" // no such setting on this kernel: not a problem
		}
		return strings.TrimSpace(string(b))
	}
	if read("proc/sys/kernel/unprivileged_userns_clone") == "0" {
		problems = append(problems, "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0): "+
			"enable them with `sudo sysctl -w kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d to keep it), or run uloop run as root")
	}
	if read("proc/sys/user/max_user_namespaces") == "0" {
		problems = append(problems, "user namespaces are disabled (user.max_user_namespaces = 0): "+
			"allow them with `sudo sysctl -w user.max_user_namespaces=15000` (and in /etc/sysctl.d to keep it), or run uloop run as root")
	}
	if read("proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1" && apparmorUnconfined(read) {
		problems = append(problems, "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1), "+
			"so uloop would get no capabilities in its namespace: give uloop an AppArmor profile that allows `userns,` "+
			"(as Ubuntu ships for other programs that need them, in /etc/apparmor.d/), "+
			"or turn the restriction off with `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or run uloop run as root")
	}
	if p := tunProblem(tun); p != "" {
		problems = append(problems, p)
	}
	return problems
}

// apparmorUnconfined reports whether this process runs without an AppArmor
// profile: the restriction applies to such processes, while a profile may
// allow user namespaces.
func apparmorUnconfined(read func(string) string) bool {
	label := read("proc/self/attr/apparmor/current")
	if label == "" {
		label = read("proc/self/attr/current")
	}
	return label == "" || strings.HasPrefix(label, "unconfined")
}

// tunProblem says why the user cannot open the TUN device, "" if they can.
// Inside the user namespace, the device's owner (root outside) is unmapped,
// so only its mode for others counts.
func tunProblem(tun string) string {
	err := unix.Access(tun, unix.R_OK|unix.W_OK)
	switch {
	case err == nil:
		return ""
	case errors.Is(err, unix.ENOENT):
		return fmt.Sprintf("%s does not exist: load the TUN driver with `sudo modprobe tun`", tun)
	case errors.Is(err, unix.EACCES):
		mode := ""
		if fi, err := os.Stat(tun); err == nil {
			mode = fmt.Sprintf(" (mode %04o)", fi.Mode().Perm())
		}
		return fmt.Sprintf("%s is not readable and writable by you%s: `sudo chmod 0666 %s` (the mode udev gives it on Debian, Ubuntu and Fedora; "+
			"a TUN device that nobody configures carries nothing, and configuring one takes CAP_NET_ADMIN), or run uloop run as root", tun, mode, tun)
	}
	return fmt.Sprintf("%s: %v", tun, err)
}

func reportProblems(problems []string) {
	if len(problems) == 0 {
		return
	}
	fmt.Fprintln(os.Stderr, "uloop run: cannot run without root here:")
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "  - %s\n", p)
	}
}
