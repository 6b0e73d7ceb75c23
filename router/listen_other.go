//go:build !linux

package router

import (
	"errors"
	"syscall"
)

// reusePortSupported says whether listen_reuseport works here; Validate
// refuses it where it does not.
const reusePortSupported = false

func setReusePort(_, _ string, _ syscall.RawConn) error {
	return errors.New("listen_reuseport: not supported on this system")
}
