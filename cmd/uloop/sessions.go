//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// sessionDir is where `uloop run` sessions put their status sockets, one per
// session named by the PID of its `uloop run` process: the user's runtime
// directory ($XDG_RUNTIME_DIR, else /run/user/UID if it exists) plus
// "uloop", or /tmp/uloop-UID. Only the user can enter it, which is the
// sockets' access control.
func sessionDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return filepath.Join(d, "uloop")
	}
	uid := os.Getuid()
	if d := fmt.Sprintf("/run/user/%d", uid); isDir(d) {
		return filepath.Join(d, "uloop")
	}
	return fmt.Sprintf("/tmp/uloop-%d", uid)
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// sessionSocket creates the session directory if needed and returns the
// socket path for the session of process pid.
func sessionSocket(pid int) (string, error) {
	dir := sessionDir()
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating the session directory: %w", err)
	}
	// In /tmp anyone may have made it first: it must be ours, a real
	// directory, and closed to others.
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || st == nil || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("session directory %s is not a directory of yours closed to others (mode %v); remove it", dir, fi.Mode())
	}
	return filepath.Join(dir, strconv.Itoa(pid)+".sock"), nil
}

// runSession is a `uloop run` session's socket found in sessionDir.
type runSession struct {
	pid    int
	socket string
}

// findSessions lists the sessions in sessionDir, by PID. A socket whose
// process is gone (its `uloop run` and inner process were both killed) is
// removed.
func findSessions() ([]runSession, error) {
	dir := sessionDir()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var found []runSession
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".sock")
		pid, err := strconv.Atoi(name)
		if !ok || err != nil {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !alive(pid) {
			os.Remove(path)
			continue
		}
		found = append(found, runSession{pid: pid, socket: path})
	}
	slices.SortFunc(found, func(a, b runSession) int { return a.pid - b.pid })
	return found, nil
}

// alive reports whether process pid exists (a zombie does not count).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may hold
	// anything, so look after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// cmdline is process pid's command line.
func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}
