package router

import (
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/proxy"
)

// The pool section validates with every reason named by its key, and maps
// to the pool and proxy packages' configurations.
func TestPoolSettings(t *testing.T) {
	fc, err := LoadConfig(writeFile(t, "pool:\n  mode: transaction\n  max_server_connections: 20\n  min_per_tenant: 2\n  max_per_tenant: 5\n  queue_timeout: 2s\n  server_lifetime: 1h\n  turn: 0s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := fc.Pool.validate(); len(errs) != 0 {
		t.Fatal(errs)
	}
	mc := fc.Pool.ManagerConfig(nil)
	if mc.MaxServerConnections != 20 || mc.MinPerTenant != 2 || mc.MaxPerTenant != 5 || mc.QueueTimeout != 2*time.Second ||
		mc.IdleTimeout != 10*time.Minute || mc.MaxLifetime != time.Hour || mc.Turn >= 0 {
		t.Fatalf("pool.Config %+v", mc)
	}
	if pc := fc.Pool.ProxyConfig(nil); pc.Mode != proxy.PoolTransaction || pc.ResetQuery != "DISCARD ALL" {
		t.Fatalf("proxy.PoolConfig %+v", pc)
	}
	if d := DefaultConfig(); d.Pool.ProxyConfig(nil) != (proxy.PoolConfig{}) {
		t.Fatalf("off maps to %+v, want the zero PoolConfig", d.Pool.ProxyConfig(nil))
	}

	bad := PoolSettings{Mode: "statement", MaxServerConnections: 0, MinPerTenant: -1, MaxPerTenant: -1,
		QueueTimeout: 0, IdleTimeout: -time.Second, ServerLifetime: -time.Second, Turn: -time.Second}
	msg := fmtErrs(bad.validate())
	for _, want := range []string{"pool.mode", "pool.max_server_connections", "pool.min_per_tenant", "pool.max_per_tenant",
		"pool.queue_timeout", "pool.idle_timeout", "pool.server_lifetime", "pool.turn"} {
		if !strings.Contains(msg, want) {
			t.Errorf("no %s error in:\n%s", want, msg)
		}
	}
	for _, c := range []struct {
		edit func(*PoolSettings)
		want string
	}{
		{func(p *PoolSettings) { p.Mode, p.ServerResetQuery = PoolModeSession, " " }, "pool.server_reset_query"},
		{func(p *PoolSettings) { p.Mode, p.ServerResetQuery = PoolModeTransaction, "" }, "pool.server_reset_query"},
		{func(p *PoolSettings) { p.MaxPerTenant = 81 }, "more than pool.max_server_connections"},
		{func(p *PoolSettings) { p.MinPerTenant, p.MaxPerTenant = 3, 2 }, "more than pool.max_per_tenant"},
		{func(p *PoolSettings) { p.MinPerTenant = 81 }, "more than pool.max_server_connections"},
	} {
		p := defaultPoolSettings()
		c.edit(&p)
		if msg := fmtErrs(p.validate()); !strings.Contains(msg, c.want) {
			t.Errorf("%+v: %q, want %q", p, msg, c.want)
		}
	}
	// Off, an empty reset query is never used.
	p := defaultPoolSettings()
	p.ServerResetQuery = ""
	if errs := p.validate(); len(errs) != 0 {
		t.Errorf("off with no reset query: %v", errs)
	}
}

func fmtErrs(errs []error) string {
	var b strings.Builder
	for _, e := range errs {
		b.WriteString(e.Error() + "\n")
	}
	return b.String()
}

// Pool keys need a restart: a reload that changes one names it.
func TestPoolKeysNeedRestart(t *testing.T) {
	a, b := DefaultConfig(), DefaultConfig()
	b.Pool.Mode, b.Pool.QueueTimeout = PoolModeSession, time.Second
	if got := strings.Join(changedKeys(a, b), ","); got != "pool.mode,pool.queue_timeout" {
		t.Fatalf("changedKeys = %q", got)
	}
}
