//go:build !linux

package router

import (
	"errors"
	"net"
	"syscall"
)

// reusePortSupported says whether listen_reuseport works here; Validate
// refuses it where it does not.
const reusePortSupported = false

// listenerKeepAlive: the proxy sets each connection's keepalives here.
const listenerKeepAlive = false

func setKeepAlive(syscall.RawConn, net.KeepAliveConfig) error { return nil }

func setReusePort(_, _ string, _ syscall.RawConn) error {
	return errors.New("listen_reuseport: not supported on this system")
}
