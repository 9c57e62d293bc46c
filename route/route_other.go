//go:build !linux

package route

import (
	"errors"
	"fmt"
	"runtime"
)

var errUnsupported = fmt.Errorf("route: taking over 127.0.0.0/8 is not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Apply is only implemented on Linux.
func Apply(c Config) (*Takeover, error) { return nil, errUnsupported }

// Cleanup is only implemented on Linux.
func Cleanup(c Config) error { return errUnsupported }

// CleanupRouting is only implemented on Linux.
func CleanupRouting(c Config) error { return errUnsupported }

// HandBack is only implemented on Linux.
func HandBack(c Config) error { return errUnsupported }
