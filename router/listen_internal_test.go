package router

import (
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestListenerKeepAlive: the sockets the client listener accepts carry the
// configured keepalives, set once on the listening socket (so the proxy
// need not set them per connection); off, they have none.
func TestListenerKeepAlive(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("keepalives are set on the listener on Linux only")
	}
	for _, tc := range []struct {
		ka   net.KeepAliveConfig
		want [4]int // SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT
	}{
		{net.KeepAliveConfig{Enable: true, Idle: 77 * time.Second, Interval: 11 * time.Second, Count: 5}, [4]int{1, 77, 11, 5}},
		{net.KeepAliveConfig{Enable: true, Idle: 1500 * time.Millisecond, Interval: time.Second, Count: 3}, [4]int{1, 2, 1, 3}},
		{net.KeepAliveConfig{}, [4]int{0}},
	} {
		ln, err := listenClients(t.Context(), Config{Listen: "127.0.0.1:0"}, tc.ka)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := sc.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var got [4]int
		_ = raw.Control(func(fd uintptr) {
			got[0], _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			if got[0] == 1 {
				got[1], _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
				got[2], _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
				got[3], _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
			}
		})
		if got != tc.want {
			t.Errorf("%+v: accepted socket has %v, want %v", tc.ka, got, tc.want)
		}
		_ = cc.Close()
		_ = sc.Close()
		_ = ln.Close()
	}
}
