package router

import (
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// reusePortSupported says whether listen_reuseport works here.
const reusePortSupported = true

// listenerKeepAlive says that a listening socket's keepalive options
// (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) are copied to
// the sockets it accepts, as Linux does.
const listenerKeepAlive = true

// setKeepAlive sets ka on the socket c (the listener's). Off, it sets
// nothing: a new socket has no keepalives.
func setKeepAlive(c syscall.RawConn, ka net.KeepAliveConfig) error {
	if !ka.Enable {
		return nil
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		for _, o := range []struct {
			level, opt, v int
			name          string
		}{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(ka.Idle), "TCP_KEEPIDLE"},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(ka.Interval), "TCP_KEEPINTVL"},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, ka.Count, "TCP_KEEPCNT"},
		} {
			if err := unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); err != nil {
				serr = os.NewSyscallError("setsockopt "+o.name, err)
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// secs rounds d up to whole seconds, at least one (as net does).
func secs(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// setReusePort is a net.ListenConfig.Control that sets SO_REUSEPORT on the
// socket before it is bound.
func setReusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_REUSEPORT", serr) // nil when serr is
}
