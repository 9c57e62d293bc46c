//go:build !linux

package tundev

import "errors"

// Create is only implemented on Linux.
func Create(name string, mtu int, offload bool) (Device, error) {
	return nil, errors.New("tundev: TUN devices are only supported on Linux")
}
