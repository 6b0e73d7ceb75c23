package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// A pool mode set through one router instance reaches another on the same
// catalog within one refresh (admin.blocked_refresh), and one started later
// at once; so does clearing it.
func TestTenantPoolModesRefresh(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r1, cfg := start(t, nil)
	same := func(c *router.Config) {
		c.Catalog.DSN, c.Catalog.Key = cfg.Catalog.DSN, cfg.Catalog.Key
		c.Admin.BlockedRefresh = 50 * time.Millisecond
	}
	r2, _ := start(t, same)
	ctx := context.Background()
	if err := r1.Catalog().SetPoolMode(ctx, "acme", "off"); err != nil {
		t.Fatal(err)
	}
	if err := r1.Catalog().SetPoolMode(ctx, "initech", "session"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the other router to apply the pool modes", func() bool {
		m := r2.Proxy().TenantPoolModes()
		off, ok := m["acme"]
		return ok && off == proxy.PoolOff && m["initech"] == proxy.PoolSession
	})
	r3, _ := start(t, func(c *router.Config) { same(c); c.Admin.BlockedRefresh = 0 })
	if m := r3.Proxy().TenantPoolModes(); len(m) != 2 || m["initech"] != proxy.PoolSession {
		t.Errorf("a router started later applies %v", m)
	}
	if err := r1.Catalog().ClearPoolMode(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the other router to drop the cleared mode", func() bool {
		_, ok := r2.Proxy().TenantPoolModes()["acme"]
		return !ok
	})
}
