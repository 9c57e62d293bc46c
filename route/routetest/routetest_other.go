//go:build !linux

package routetest

import (
	"errors"
	"fmt"
	"runtime"
)

// Take is only implemented on Linux.
func Take() (Snapshot, error) {
	return Snapshot{}, fmt.Errorf("routetest: no host state to read on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
