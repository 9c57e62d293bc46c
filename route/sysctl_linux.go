package route

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// readSysctl reads /proc/sys/<key> in the calling thread's network
// namespace. Equivalent to: sysctl -n <key>
func readSysctl(key string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		return "", fmt.Errorf("reading sysctl: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writeSysctl refuses conf/all: the kernel ORs all with the device's value
// for route_localnet, and route_localnet on all let neighbours reach
// 127.0.0.1 services (CVE-2020-8558, kube-proxy).
func writeSysctl(key, val string) error {
	if strings.Contains(key, "/conf/all/") {
		return fmt.Errorf("writing sysctl %s: refusing to change conf/all", key)
	}
	f, err := os.OpenFile("/proc/sys/"+key, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("writing sysctl: %w", err)
	}
	_, err = f.WriteString(val)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing sysctl %s=%s: %w", key, val, err)
	}
	return nil
}

// setSysctl sets key to val if it differs, and returns how to put the old
// value back (nil if nothing changed). Equivalent to: sysctl -w <key>=<val>
func setSysctl(key, val string) (undo func() error, err error) {
	old, err := readSysctl(key)
	if err != nil || old == val {
		return nil, err
	}
	if err := writeSysctl(key, val); err != nil {
		return nil, err
	}
	return func() error {
		err := writeSysctl(key, old)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // the device is gone, and its settings with it
		}
		return err
	}, nil
}
