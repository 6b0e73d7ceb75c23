package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"syscall"
)

// listenClients opens the client listener on cfg.Listen.
//
// The client connections' keepalives (ka) are set once, on the listening
// socket, where the kernel copies them to each socket it accepts (Linux:
// listenerKeepAlive); elsewhere the proxy sets them on each connection.
// Either way Go's default is off (KeepAlive -1): it would set its own on
// every connection, four system calls for nothing.
//
// With listen_reuseport the socket gets SO_REUSEPORT before it is bound, so
// several router processes on one host can listen on the same address, each
// with its own file-descriptor limit, and the kernel spreads new
// connections over them. Linux lets a socket join only if every socket
// already bound there set SO_REUSEPORT too and belongs to the same user;
// the error says so.
func listenClients(ctx context.Context, cfg Config, ka net.KeepAliveConfig) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	lc.Control = func(network, address string, c syscall.RawConn) error {
		if cfg.ListenReusePort {
			if err := setReusePort(network, address, c); err != nil { // listen_linux.go
				return err
			}
		}
		if listenerKeepAlive {
			return setKeepAlive(c, ka)
		}
		return nil
	}
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if errors.Is(err, syscall.EADDRINUSE) {
		if cfg.ListenReusePort {
			return nil, fmt.Errorf("listen: %w (listen_reuseport shares the address only with processes of the same user that set it too)", err)
		}
		return nil, fmt.Errorf("listen: %w (several routers on one host can share it with listen_reuseport: true)", err)
	}
	return ln, err
}

// validateListen checks listen_reuseport: the kernel balances connections
// over the sockets sharing a port on Linux only (elsewhere SO_REUSEPORT
// exists with other meanings, or one socket gets every connection).
func (fc *Config) validateListen() []error {
	if fc.ListenReusePort && !reusePortSupported {
		return []error{fmt.Errorf("listen_reuseport: not supported on %s (Linux only)", runtime.GOOS)}
	}
	return nil
}
