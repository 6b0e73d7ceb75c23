package testbed

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

func TestColdApart(t *testing.T) {
	tests := []struct {
		in   []bench.Scenario
		want string
	}{
		{[]bench.Scenario{bench.Steady}, "[steady]"},
		{[]bench.Scenario{bench.Cold, bench.Steady, bench.Storm}, "[cold] [steady storm]"},
		{[]bench.Scenario{bench.Steady, bench.Cold, bench.Idle}, "[steady] [cold] [idle]"},
		{[]bench.Scenario{bench.Cold}, "[cold]"},
	}
	for _, tt := range tests {
		var parts []string
		for _, seg := range coldApart(tt.in) {
			s := make([]string, len(seg))
			for i, sc := range seg {
				s[i] = string(sc)
			}
			parts = append(parts, "["+strings.Join(s, " ")+"]")
		}
		if got := strings.Join(parts, " "); got != tt.want {
			t.Errorf("coldApart(%v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestParseTargets(t *testing.T) {
	steady, cold := []bench.Scenario{bench.Steady}, []bench.Scenario{bench.Cold, bench.Idle}
	tests := []struct {
		name  string
		names []string
		scs   []bench.Scenario
		want  string // the targets, or the error's text
	}{
		{"run order, not the order given", []string{"router-pgbouncer", " pgbouncer-transaction"}, steady, "pgbouncer-transaction router-pgbouncer"},
		{"all", []string{"router-pooled-tx", "router", "direct", "pgbouncer-session", "router-pgbouncer", "router-pooled-session", "pgbouncer-transaction"}, steady,
			"direct pgbouncer-session pgbouncer-transaction router router-pooled-session router-pooled-tx router-pgbouncer"},
		{"pooled routers in run order", []string{"router-pgbouncer", "router-pooled-tx", "router-pooled-session"}, steady,
			"router-pooled-session router-pooled-tx router-pgbouncer"},
		{"duplicates dropped", []string{"direct", "direct"}, steady, "direct"},
		{"cold with a router", []string{"router-pgbouncer"}, cold, "router-pgbouncer"},
		{"cold with a pooled router", []string{"direct", "router-pooled-tx"}, cold, "direct router-pooled-tx"},
		{"unknown", []string{"direct", "pgbouncer"}, steady,
			`unknown target "pgbouncer" (valid: direct, pgbouncer-session, pgbouncer-transaction, router, router-pooled-session, router-pooled-tx, router-pgbouncer)`},
		{"a pooled mode misspelt", []string{"router-pooled-transaction"}, steady, `unknown target "router-pooled-transaction"`},
		{"empty name", []string{"direct", ""}, steady, `unknown target ""`},
		{"none", []string{}, steady, "no target given"},
		{"the cold baseline", []string{"create-database", "router"}, cold, "create-database is not chosen: it is cold's baseline"},
		{"cold without a router", []string{"direct", "pgbouncer-transaction"}, cold,
			"choose a router too (router, router-pooled-session, router-pooled-tx, router-pgbouncer)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTargets(tt.names, tt.scs)
			if err != nil {
				if !strings.HasPrefix(err.Error(), "--self-targets: ") || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("ParseTargets(%q) = %v, want %q about --self-targets", tt.names, err, tt.want)
				}
				return
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("ParseTargets(%q) = %q, want %q", tt.names, got, tt.want)
			}
		})
	}
}

// TestLabels checks the run order: Postgres, PgBouncer, then the routers
// together, the plain one first; and that each label is one kind of target.
func TestLabels(t *testing.T) {
	want := "direct pgbouncer-session pgbouncer-transaction router router-pooled-session router-pooled-tx router-pgbouncer"
	if got := strings.Join(Labels(), " "); got != want {
		t.Errorf("Labels() = %q, want %q", got, want)
	}
	if got := strings.Join(routerLabels, " "); !strings.HasSuffix(want, got) || !strings.HasPrefix(got, Router+" ") {
		t.Errorf("routers %q: want them together, last, %s first", got, Router)
	}
	for _, l := range Labels() {
		mode := poolMode(l)
		switch {
		case isRouter(l) != strings.HasPrefix(l, "router"):
			t.Errorf("%s: isRouter %v", l, isRouter(l))
		case (mode != "") != strings.HasPrefix(l, "router-pooled-"):
			t.Errorf("%s: pool mode %q", l, mode)
		case mode != "" && needsBouncer(l):
			t.Errorf("%s pools itself but needs PgBouncer", l)
		}
	}
	if poolMode(RouterPooledSession) != "session" || poolMode(RouterPooledTx) != "transaction" {
		t.Errorf("pool modes %q, %q; want session, transaction (pool.mode's values)", poolMode(RouterPooledSession), poolMode(RouterPooledTx))
	}
}

func TestMaxConnections(t *testing.T) {
	all := labels
	pooled := []string{BouncerTx, RouterBouncer}
	idle := func(tenants, conns int) bench.Config {
		return bench.Config{Scenarios: []bench.Scenario{bench.Idle}, Tenants: tenants, ConnsPerTenant: conns, Concurrency: 64}
	}
	tests := []struct {
		name      string
		cfg       bench.Config
		targets   []string
		max, need int
	}{
		// 64 + 980 auth_query + 2 pools x (980 databases + 64 probing) +
		// one router's two pools of 64: far below one per connection.
		{"9,800 idle through transaction pools", idle(980, 10), pooled, 3260, 3260},
		// 2 x 9,800 (direct, router) + 9,800 + 980 (session) + 9,800
		// (router-pooled-session) + 980 + 64 (router-pooled-tx) + ...: capped.
		{"9,800 idle through everything", idle(980, 10), all, maxConnectionsCap, 44868},
		// 64 + one router's pools (128) + its transaction pool's 980 + 64.
		{"9,800 idle through the router's transaction pool", idle(980, 10), []string{RouterPooledTx}, 1236, 1236},
		// 64 + one router's pools + a server connection per client.
		{"steady through the router's session pool", bench.Config{Tenants: 10, ConnsPerTenant: 10, Concurrency: 64},
			[]string{RouterPooledSession}, 292, 292},
		// Steady (no scenario) keeps a transaction pool as busy as its
		// clients: 64 + 10 auth_query + 2 x C + one router's pools.
		{"steady through transaction pools", bench.Config{Tenants: 10, ConnsPerTenant: 10, Concurrency: 64}, pooled, 402, 402},
		// 64 + 2 x 1 + 1 + 1 + 1 (session) + 1 + 1 (tx) + 4 routers x 2 x 100
		// + cold: 3 x 100 concurrent, 2 x 100 new databases behind PgBouncer,
		// and the two pooled routers' budgets of 1 + 100, full.
		{"cold at concurrency 100", bench.Config{Scenarios: []bench.Scenario{bench.Cold}, NewTenants: 100, Concurrency: 100}, all, 1573, 1573},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotMax, gotNeed := maxConnections(tt.cfg, tt.targets, 0)
			if gotMax != tt.max || gotNeed != tt.need {
				t.Errorf("maxConnections = %d (need %d), want %d (need %d)", gotMax, gotNeed, tt.max, tt.need)
			}
			// Fewer targets never need more.
			for _, l := range tt.targets {
				fewer := slices.DeleteFunc(slices.Clone(tt.targets), func(x string) bool { return x == l })
				if _, n := maxConnections(tt.cfg, fewer, 0); n > gotNeed {
					t.Errorf("without %s: need %d > %d", l, n, gotNeed)
				}
			}
		})
	}
}

func TestFileWarnings(t *testing.T) {
	idle := func(tenants, conns int) bench.Config {
		return bench.Config{Scenarios: []bench.Scenario{bench.Idle}, Tenants: tenants, ConnsPerTenant: conns, Concurrency: 64}
	}
	pooled := []string{BouncerTx, RouterBouncer}
	tests := []struct {
		name    string
		cfg     bench.Config
		targets []string
		limit   uint64
		want    []string // one substring per warning, in order
	}{
		{"9,800 through the router fit in 20000", idle(980, 10), pooled, 20000, nil},
		// 2 x 10,000 + 64 + 2 pools x 64 = 20192 > 20000.
		{"10,000 through the router do not", idle(1000, 10), pooled, 20000, []string{
			"router-pgbouncer (pgtenant serve) may need 20192 open files (2 per connection for 1000 x 10 connections, plus 192 of its own) " +
				"but the open-file limit is 20000: connections beyond about 9904 will fail. Lower --tenants x --conns-per-tenant to 9904 or less",
		}},
		// router-pooled-tx: 1,000 clients + 164 servers + 192 fit.
		{"every process over a small limit", idle(100, 10), labels, 1500, []string{
			"router (pgtenant serve)", "router-pooled-session (pgtenant serve)", "router-pgbouncer (pgtenant serve)", "PgBouncer in session mode",
		}},
		// 2 x 1,000 + 192 > 2000, 1,000 + 192 + 1,000 servers (steady) > 2000.
		{"the pooled routers", bench.Config{Tenants: 100, ConnsPerTenant: 10, Concurrency: 64}, []string{RouterPooledSession, RouterPooledTx}, 2000, []string{
			"router-pooled-session (pgtenant serve) may need 2192 open files (2 per connection",
			"router-pooled-tx (pgtenant serve) may need 2192 open files (1 per connection for 100 x 10 connections, plus 1192 of its own)",
		}},
		{"unknown limit", idle(1000, 100), labels, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fileWarnings(tt.cfg, tt.targets, tt.limit)
			if len(got) != len(tt.want) {
				t.Fatalf("warnings %q, want %d", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) || !strings.Contains(got[i], "ulimit -Hn") {
					t.Errorf("warning %d: %q, want %q and what to change", i, got[i], w)
				}
			}
		})
	}
}

// TestRouterConfig checks that the routers' configuration loads (no
// unknown key) with pools that let Cold's creations all run at once.
func TestRouterConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "router.yaml")
	cfg := bench.Config{Scenarios: []bench.Scenario{bench.Cold}, NewTenants: 100, Concurrency: 100}
	if err := os.WriteFile(path, []byte(routerConfig(cfg, nil, "", 2, 0)), 0o600); err != nil {
		t.Fatal(err)
	}
	fc, err := router.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if fc.Catalog.MaxConns != 100 || fc.Provider.Local.MaxConns != 100 || fc.Limits.MaxConcurrentCreates != 0 || fc.Limits.MaxHandshakes < 100 {
		t.Errorf("catalog pool %d, admin pool %d, max concurrent creates %d, max handshakes %d; want 100, 100, 0 (no cap), >= 100",
			fc.Catalog.MaxConns, fc.Provider.Local.MaxConns, fc.Limits.MaxConcurrentCreates, fc.Limits.MaxHandshakes)
	}
	if fc.Provider.Local.Spares != 2 {
		t.Errorf("spares %d, want --self-spares' 2", fc.Provider.Local.Spares)
	}
	if fc.Provider.Local.Template != local.DefaultTemplate {
		t.Errorf("template %q: create-database clones %q", fc.Provider.Local.Template, local.DefaultTemplate)
	}
	if strings.Contains(routerConfig(cfg, nil, "", 2, 0), "pool:") {
		t.Error("router has a pool section: it is the unpooled router")
	}
}

// TestRouterConfigPooled checks the pooled routers' configuration as
// `pgtenant serve` would load and validate it, with the secrets
// routerEnv passes, next to the plain router's.
func TestRouterConfigPooled(t *testing.T) {
	t.Setenv(router.EnvPassword, "secret")
	t.Setenv(router.EnvAdminDSN, "postgres://postgres@127.0.0.1/postgres")
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	cfg := bench.Config{Tenants: 10, ConnsPerTenant: 4, Concurrency: 64}
	for _, label := range []string{Router, RouterPooledSession, RouterPooledTx} {
		t.Run(label, func(t *testing.T) {
			text := routerConfig(cfg, nil, poolMode(label), 0, 0)
			want := "pool:\n  mode: " + poolMode(label) + "\n  max_server_connections: 104\n  max_per_tenant: 4\n"
			if label == Router {
				want = ""
			}
			if !strings.Contains(text, want) {
				t.Errorf("configuration lacks\n%s\nin\n%s", want, text)
			}
			if label != Router {
				// A budget given (--self-pool-budget) is taken as it is.
				if fixed := routerConfig(cfg, nil, poolMode(label), 0, 3); !strings.Contains(fixed, "max_server_connections: 3\n  max_per_tenant: 3\n") {
					t.Errorf("with a budget of 3:\n%s", fixed)
				}
			}
			path := filepath.Join(t.TempDir(), label+".yaml")
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			fc, err := router.LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := fc.Validate(); err != nil {
				t.Fatalf("pgtenant serve would refuse %s's configuration: %v\n%s", label, err, text)
			}
			// Field by name: the section's type is not on every branch
			// this test compiles on.
			want = poolMode(label)
			if want == "" {
				want = "off" // the section's default
			}
			if p := reflect.ValueOf(fc).FieldByName("Pool"); p.IsValid() {
				if m := p.FieldByName("Mode"); m.IsValid() && m.String() != want {
					t.Errorf("pool.mode loaded as %q, want %q", m.String(), want)
				}
			}
		})
	}
}

// TestRouterPool: a given budget caps the ceiling at the connections per
// tenant (as PgBouncer's pool size), but not in a fairness run, which
// measures how the budget itself is shared.
func TestRouterPool(t *testing.T) {
	for _, tt := range []struct {
		scs                 []bench.Scenario
		budget              int
		wantMax, wantTenant int
	}{
		{[]bench.Scenario{bench.Steady}, 0, 10*4 + 64, 4},
		{[]bench.Scenario{bench.Steady}, 80, 80, 4},
		{[]bench.Scenario{bench.Fairness}, 40, 40, 40},
	} {
		cfg := bench.Config{Tenants: 10, ConnsPerTenant: 4, Scenarios: tt.scs}
		if m, p := routerPool(cfg, tt.budget); m != tt.wantMax || p != tt.wantTenant {
			t.Errorf("%v, budget %d: %d, %d; want %d, %d", tt.scs, tt.budget, m, p, tt.wantMax, tt.wantTenant)
		}
	}
}
