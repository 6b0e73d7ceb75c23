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
// KeepAlive -1: the proxy sets each client connection's keepalives as the
// config says; Go's default would set them first, four system calls per
// connection for nothing.
//
// With listen_reuseport the socket gets SO_REUSEPORT before it is bound, so
// several router processes on one host can listen on the same address, each
// with its own file-descriptor limit, and the kernel spreads new
// connections over them. Linux lets a socket join only if every socket
// already bound there set SO_REUSEPORT too and belongs to the same user;
// the error says so.
func listenClients(ctx context.Context, cfg Config) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if cfg.ListenReusePort {
		lc.Control = setReusePort // listen_linux.go
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
