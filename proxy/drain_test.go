package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
)

func TestCloseSessionsOfOneTenant(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b := newTenant("kill"), newTenant("keep")
	ca, cb := r.connect(t, a), r.connect(t, b)
	if got := len(r.srv.Sessions(a)); got != 1 {
		t.Fatalf("Sessions(a) = %d", got)
	}
	if n := r.srv.CloseSessions(a, "57P01", "terminating connection: tenant blocked"); n != 1 {
		t.Fatalf("CloseSessions = %d", n)
	}
	_, err := ca.Exec(ctx, "SELECT 1")
	if pgCode(err) != "57P01" {
		t.Fatalf("killed session: %v, want 57P01", err)
	}
	if _, err := cb.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("other tenant's session: %v", err)
	}
}

func TestDrainEndsSessionsWith57P01(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.DrainTimeout = 300 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := r.connect(t, newTenant("drain"))
	stopped := make(chan struct{})
	go func() { r.stop(); close(stopped) }()
	// Readiness goes false at once, new connections are not accepted.
	poll.Until(t, 10*time.Second, "the router to drain", r.srv.Draining)
	if c, err := pgx.Connect(ctx, r.dsn(newTenant("late"), appSecret)); err == nil {
		c.Close(ctx)
		t.Fatal("a new connection was accepted while draining")
	}
	<-stopped
	_, err := conn.Exec(ctx, "SELECT 1")
	if pgCode(err) != "57P01" {
		t.Fatalf("session after drain: %v, want 57P01", err)
	}
}

func TestDrainLetsSessionsFinish(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.DrainTimeout = time.Minute })
	conn := r.connect(t, newTenant("finish"))
	stopped := make(chan struct{})
	go func() { r.stop(); close(stopped) }()
	poll.Until(t, 10*time.Second, "the router to drain", r.srv.Draining)
	// Still served while draining; a new client is told 57P03, as
	// Postgres tells it during a shutdown, rather than refused.
	if _, err := conn.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatalf("session while draining: %v", err)
	}
	late, err := pgx.Connect(context.Background(), r.dsn(newTenant("late"), appSecret))
	if err == nil {
		late.Close(context.Background())
		t.Fatal("a new connection was accepted while draining")
	}
	if pgCode(err) != "57P03" {
		t.Fatalf("connect while draining: %v, want 57P03", err)
	}
	conn.Close(context.Background())
	select {
	case <-stopped: // the last session ended: no need to wait out the drain
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return when the last session ended")
	}
}
