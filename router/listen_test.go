package router_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

// With listen_reuseport, two routers (two processes in production) listen
// on the same address and the kernel spreads clients over both; a router
// without it, or one joining a socket bound without it, gets "address
// already in use".
func TestListenReusePort(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("listen_reuseport is Linux only")
	}
	pgtest.CheckGoroutines(t)
	reuse := func(addr string) func(*router.Config) {
		return func(c *router.Config) {
			c.Listen = addr
			c.ListenReusePort = true
			c.Provider.Local.Prefix = "rp_"
		}
	}
	a, acfg := start(t, reuse("127.0.0.1:0"))
	addr := a.Addr().String()
	b, _ := start(t, func(c *router.Config) {
		reuse(addr)(c)
		c.InstanceID = 1
		c.Catalog.DSN, c.Catalog.Key = acfg.Catalog.DSN, acfg.Catalog.Key // one catalog, as a fleet shares
	})
	if got := b.Addr().String(); got != addr {
		t.Fatalf("second router listens on %s, want %s", got, addr)
	}

	// Without the option the address stays taken, and a router with it
	// cannot join a socket bound without it.
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, tc := range []struct {
		name, addr string
		reuse      bool
	}{
		{"router without it, on the routers' address", addr, false},
		{"router with it, on a plain listener's address", plain.Addr().String(), true},
	} {
		cfg := acfg
		cfg.Listen, cfg.ListenReusePort = tc.addr, tc.reuse
		r, err := router.New(context.Background(), cfg, router.Options{})
		if err == nil {
			r.Close()
			t.Fatalf("%s: New succeeded", tc.name)
		}
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("%s: %v, want address already in use", tc.name, err)
		}
	}

	// Clients through the shared address reach both routers: the kernel
	// hashes each connection to one of the sockets, so 20 connections all
	// land on one router with probability 2^-19.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 20
	for range n {
		conn, err := pgx.Connect(ctx, "postgres://reuse_port:router-test-secret@"+addr+"/app?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, "every session registered", func() bool {
		return len(a.Proxy().Sessions(""))+len(b.Proxy().Sessions("")) == n
	})
	if na, nb := len(a.Proxy().Sessions("")), len(b.Proxy().Sessions("")); na == 0 || nb == 0 {
		t.Fatalf("sessions per router: %d and %d; want both serving", na, nb)
	}
}

// listen_reuseport is refused where the kernel does not balance over the
// sockets sharing a port.
func TestListenReusePortValidate(t *testing.T) {
	cfg := router.DefaultConfig()
	cfg.Auth.Password, cfg.Provider.Local.AdminDSN, cfg.Catalog.Key = "x", "postgres://a@b/c", "k"
	cfg.ListenReusePort = true
	err := cfg.Validate()
	if runtime.GOOS == "linux" {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), "listen_reuseport") {
		t.Fatalf("listen_reuseport on %s: %v", runtime.GOOS, err)
	}
}
