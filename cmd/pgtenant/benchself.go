package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/localproc"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/logtail"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

// `pgtenant bench --self` runs the standard comparison with nothing set up
// beforehand. It starts, in a temporary directory, what the chosen targets
// need (--self-targets; by default all of them):
//
//   - a throwaway Postgres (localproc.StartCluster: fsync off, max_connections
//     sized for the run, SCRAM logins over loopback only);
//   - when pgbouncer is installed, PgBouncer in front of it, in session pool
//     mode for pgbouncer-session and in transaction pool mode for
//     pgbouncer-transaction and router-pgbouncer (localproc.StartPgBouncer),
//     clients logging in with SCRAM-SHA-256 (auth_query with pass-through,
//     so roles created later log in too);
//   - the routers, each `pgtenant serve` in a child process of this one (the
//     same executable), so that their memory and threads are measured alone:
//     "router" reaches Postgres directly, "router-pgbouncer" reaches it
//     through the transaction-mode PgBouncer (upstream.dial_override). Both
//     share one catalog in the cluster, so they route a tenant to the same
//     database; their clients log in with SCRAM against a random app
//     secret, and they log in upstream as each tenant's own role.
//
// All targets do the same work against the same databases: tenant <id>'s
// database t_<id> is created first, through a router (a "router" started
// for that alone when no router is chosen), and then the direct and
// PgBouncer targets log in to it as one shared role, pgtenant_bench (random
// password, SCRAM, granted CONNECT on every tenant database), since the
// tenants' own passwords are known only to the routers. Cold, which creates
// tenants, runs against the routers, after "create-database": the bare
// CREATE DATABASE ... TEMPLATE the routers run for a new tenant, as the
// baseline they are held to (selfBench.createDatabase).
//
// Everything is stopped and the directory removed when the run ends,
// including on Ctrl-C; the children also get a signal if this process dies.

// Labels of the --self targets; selfTargets has them in the order they
// run, and ratios are to the first one run.
const (
	selfDirect         = "direct"
	selfBouncerSession = "pgbouncer-session"
	selfBouncerTx      = "pgbouncer-transaction"
	selfRouter         = "router"
	selfRouterBouncer  = "router-pgbouncer"
	// selfCreateDatabase is Cold's baseline, first in every cold run.
	selfCreateDatabase = "create-database"
)

// selfTargets are the targets --self-targets chooses from, in run order.
var selfTargets = []string{selfDirect, selfBouncerSession, selfBouncerTx, selfRouter, selfRouterBouncer}

const (
	// selfRole is the role the direct and PgBouncer targets log in as.
	selfRole = "pgtenant_bench"
	// selfReadyLine is what `pgtenant serve` prints once it listens.
	selfReadyLine = "pgtenant: routing tenants on "
	// selfStartTimeout bounds each router's start (template included).
	selfStartTimeout = 2 * time.Minute
	// selfStopTimeout bounds stopping each component at the end.
	selfStopTimeout = 30 * time.Second
	// selfCreateConcurrency caps tenants created at once before the run.
	selfCreateConcurrency = 8
	// selfMaxConnectionsCap is the most max_connections the cluster gets
	// (see selfMaxConnections).
	selfMaxConnectionsCap = 5000
	// selfOwnFiles is what a router or PgBouncer keeps open besides its
	// client and server connections: listeners, logs, epoll, the runtime.
	selfOwnFiles = 64
)

// selfBench is the environment `pgtenant bench --self` runs in. close
// stops it; the zero value (or a half-started one) closes cleanly.
type selfBench struct {
	stderr   io.Writer
	dir      string
	cluster  *localproc.Cluster
	bouncers []*localproc.PgBouncer
	routers  []*routerProc
	// targets are the chosen targets, in selfTargets order; routerTargets
	// the chosen routers, which create tenants (Cold).
	targets, routerTargets []bench.Target
	// coldBaseline is the create-database target, first in Cold.
	coldBaseline bench.Target
	// admin logs in to the cluster as the superuser, for createDatabase.
	admin *pgconn.Config
}

// parseSelfTargets returns the --self targets named, in selfTargets order
// (which does not depend on the order given), or an errUsage error listing
// the valid names. Cold, which creates tenants, needs a router among them.
func parseSelfTargets(names []string, scs []bench.Scenario) ([]string, error) {
	chosen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		switch {
		case n == selfCreateDatabase:
			return nil, fmt.Errorf("%w: --self-targets: %s is not chosen: it is cold's baseline and runs whenever cold does", errUsage, n)
		case !slices.Contains(selfTargets, n):
			return nil, fmt.Errorf("%w: --self-targets: unknown target %q (valid: %s)", errUsage, n, strings.Join(selfTargets, ", "))
		}
		chosen[n] = true
	}
	if len(chosen) == 0 {
		return nil, fmt.Errorf("%w: --self-targets: no target given (valid: %s)", errUsage, strings.Join(selfTargets, ", "))
	}
	if slices.Contains(scs, bench.Cold) && !chosen[selfRouter] && !chosen[selfRouterBouncer] {
		return nil, fmt.Errorf("%w: --self-targets: cold (--scenario cold or --new-tenants) compares the routers with %s: choose %s or %s too",
			errUsage, selfCreateDatabase, selfRouter, selfRouterBouncer)
	}
	var out []string
	for _, l := range selfTargets {
		if chosen[l] {
			out = append(out, l)
		}
	}
	return out, nil
}

// startSelf starts the --self environment for cfg (whose Targets it
// ignores) and returns it with its targets: chosen (parseSelfTargets), or
// when nil every target, less PgBouncer's if pgbouncer is not installed.
// Progress notes go to stderr. On error everything it started is stopped
// again.
func startSelf(ctx context.Context, cfg bench.Config, chosen []string, spares int, stderr io.Writer) (_ *selfBench, err error) {
	// Check the flags before starting anything.
	probe := cfg
	probe.Targets = []bench.Target{{Label: selfRouter, DSN: "postgres://{tenant}@127.0.0.1/app"}}
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("--self runs the routers with this executable: %w", err)
	}
	s := &selfBench{stderr: stderr}
	bouncerBin, haveBouncer := localproc.HavePgBouncer()
	names := chosen
	switch {
	case names == nil && haveBouncer:
		names = selfTargets
	case names == nil:
		names = []string{selfDirect, selfRouter}
		s.notef("pgbouncer is not installed (%s, or on PATH): skipping %s, %s and %s; install it with `apt-get install pgbouncer` (or make deps)",
			localproc.DefaultPgBouncer, selfBouncerSession, selfBouncerTx, selfRouterBouncer)
	case !haveBouncer && slices.ContainsFunc(names, selfNeedsBouncer):
		return nil, fmt.Errorf("--self-targets %s: pgbouncer is not installed (%s, or on PATH); install it with `apt-get install pgbouncer` (or make deps)",
			strings.Join(names, ","), localproc.DefaultPgBouncer)
	}
	has := func(label string) bool { return slices.Contains(names, label) }

	// Children inherit the raised limit: PgBouncer and the routers hold a
	// descriptor per client and per server connection. Say up front what
	// will not fit, rather than fail half way through.
	fl := checkFileLimit(stderr, cfg.MaxOpenConns())
	noteColdConcurrency(stderr, cfg)
	for _, w := range selfFileWarnings(cfg, names, fl.Soft) {
		s.notef("warning: %s", w)
	}
	maxConns, need := selfMaxConnections(cfg, names)
	if need > maxConns {
		s.notef("warning: Postgres gets max_connections %d, not the %d this run may need: direct, pgbouncer-session and router hold a server connection "+
			"per client connection (%d x %d), and transaction pools one per client busy at once; connections beyond it fail with 53300. "+
			"Choose transaction-pooled targets (--self-targets %s,%s) or fewer connections (--tenants, --conns-per-tenant)",
			maxConns, need, max(cfg.Tenants, 1), max(cfg.ConnsPerTenant, 1), selfBouncerTx, selfRouterBouncer)
	}

	defer func() {
		if err != nil {
			s.close()
		}
	}()
	// As root, postgres and pgbouncer run as the postgres OS user, who
	// must traverse the directory: /tmp then, not a TMPDIR that may be
	// under root's 0700 home.
	base := os.TempDir()
	if os.Geteuid() == 0 {
		base = "/tmp"
	}
	if s.dir, err = os.MkdirTemp(base, "pgtenant-bench-self-"); err != nil {
		return nil, err
	}
	if err := os.Chmod(s.dir, 0o711); err != nil {
		return nil, err
	}

	s.notef("starting Postgres (max_connections %d, fsync off) in %s", maxConns, s.dir)
	s.cluster, err = localproc.StartCluster(ctx, localproc.ClusterConfig{
		Dir: filepath.Join(s.dir, "postgres"),
		Settings: map[string]string{
			"fsync":              "off",
			"synchronous_commit": "off",
			"full_page_writes":   "off",
			"max_connections":    strconv.Itoa(maxConns),
		},
	})
	if err != nil {
		return nil, err
	}
	if s.admin, err = pgconn.ParseConfig(s.cluster.AdminDSN("postgres")); err != nil {
		return nil, fmt.Errorf("bench cluster: %w", err) // not reached: the cluster made the URL
	}
	admin, err := pgx.Connect(ctx, s.cluster.AdminDSN("postgres"))
	if err != nil {
		return nil, fmt.Errorf("connect to the bench cluster: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	rolePassword := randomHex(16)
	// password_encryption is scram-sha-256: the server stores a verifier.
	if _, err := admin.Exec(ctx, "CREATE ROLE "+selfRole+" LOGIN PASSWORD '"+rolePassword+"'"); err != nil {
		return nil, fmt.Errorf("create role %s: %w", selfRole, err)
	}

	var session, tx *localproc.PgBouncer
	var pools []string
	if has(selfBouncerSession) {
		if session, err = s.startBouncer(ctx, cfg, localproc.PoolSession); err != nil {
			return nil, err
		}
		pools = append(pools, "session pooling on "+session.Addr())
	}
	if has(selfBouncerTx) || has(selfRouterBouncer) {
		if tx, err = s.startBouncer(ctx, cfg, localproc.PoolTransaction); err != nil {
			return nil, err
		}
		pools = append(pools, "transaction pooling on "+tx.Addr())
	}
	if len(pools) > 0 {
		s.notef("PgBouncer (%s): %s", bouncerBin, strings.Join(pools, ", "))
	}

	secret, key := randomHex(16), catalog.NewKey()
	env := selfRouterEnv(secret, s.cluster.AdminDSN("postgres"), key)
	var router, routerBouncer *routerProc
	// Tenants are created through a router: the plain one if no router is
	// chosen, stopped again once it has done that.
	if has(selfRouter) || !has(selfRouterBouncer) {
		if router, err = s.startRouter(ctx, exe, selfRouter, selfRouterConfig(cfg, nil, spares), env); err != nil {
			return nil, err
		}
		s.notef("router (pgtenant serve) %s on %s (pid %d)", selfRouter, router.addr, router.pid())
	}
	if has(selfRouterBouncer) {
		if routerBouncer, err = s.startRouter(ctx, exe, selfRouterBouncer, selfRouterConfig(cfg, tx, spares), env); err != nil {
			return nil, err
		}
		s.notef("router (pgtenant serve) %s on %s (pid %d, upstream through PgBouncer %s)",
			selfRouterBouncer, routerBouncer.addr, routerBouncer.pid(), tx.Addr())
	}

	routerDSN := func(addr string) string {
		return "postgres://" + bench.TenantPlaceholder + ":" + secret + "@" + addr + "/app?sslmode=disable"
	}
	creator, creatorLabel := router, selfRouter
	if creator == nil {
		creator, creatorLabel = routerBouncer, selfRouterBouncer
	}
	grant := has(selfDirect) || has(selfBouncerSession) || has(selfBouncerTx)
	if err := s.createTenants(ctx, cfg, creatorLabel, routerDSN(creator.addr), admin, grant); err != nil {
		return nil, err
	}
	if spares > 0 {
		if err := s.waitSpares(ctx, admin, spares); err != nil {
			return nil, err
		}
	}
	if router != nil && !has(selfRouter) {
		s.notef("stopping %s: no router is among the targets, it only created the tenants", selfRouter)
		if err := s.stopRouter(ctx, router); err != nil {
			s.notef("warning: stopping %s: %v", selfRouter, err)
		}
		router = nil
	}

	tenantDSN := func(port uint16) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s%s?sslmode=disable", selfRole, rolePassword, port, local.DefaultPrefix, bench.TenantPlaceholder)
	}
	for _, l := range names {
		var t bench.Target
		switch l {
		case selfDirect:
			t = bench.Target{DSN: tenantDSN(s.cluster.Port())}
		case selfBouncerSession:
			t = bench.Target{DSN: tenantDSN(session.Port()), PID: session.PID()}
		case selfBouncerTx:
			t = bench.Target{DSN: tenantDSN(tx.Port()), PID: tx.PID()}
		case selfRouter:
			t = bench.Target{DSN: routerDSN(router.addr), PID: router.pid()}
		case selfRouterBouncer:
			t = bench.Target{DSN: routerDSN(routerBouncer.addr), PID: routerBouncer.pid()}
		}
		t.Label = l
		s.targets = append(s.targets, t)
		if l == selfRouter || l == selfRouterBouncer {
			s.routerTargets = append(s.routerTargets, t)
		}
	}
	s.coldBaseline = bench.Target{Label: selfCreateDatabase, Cold: s.createDatabase}
	return s, nil
}

// selfNeedsBouncer reports whether target label needs PgBouncer.
func selfNeedsBouncer(label string) bool {
	return label == selfBouncerSession || label == selfBouncerTx || label == selfRouterBouncer
}

// selfConcurrency is cfg's Concurrency with bench's default.
func selfConcurrency(cfg bench.Config) int {
	if cfg.Concurrency <= 0 {
		return 64
	}
	return cfg.Concurrency
}

// selfPoolConns sizes each router's catalog and admin pools: a tenant's
// creation holds a connection of each, so pools smaller than Concurrency
// (10 by default) would queue Cold's creations inside the router.
func selfPoolConns(cfg bench.Config) int { return max(10, selfConcurrency(cfg)) }

// selfIdleOnly reports whether every scenario of cfg but Cold is Idle, in
// which only warm-up and the probe run queries, Concurrency at a time.
// No scenario means Steady.
func selfIdleOnly(cfg bench.Config) bool {
	return len(cfg.Scenarios) > 0 &&
		!slices.ContainsFunc(cfg.Scenarios, func(sc bench.Scenario) bool { return sc != bench.Idle && sc != bench.Cold })
}

// selfTxServerConns estimates the server connections a transaction pool of
// one target (pgbouncer-transaction, or router-pgbouncer, whose tenants'
// roles get pools of their own) opens and keeps: up to conns per tenant per
// database while its clients run queries at once (C in all), but in Idle
// only the warm-up and probe, Concurrency at a time, which leaves about one
// per database plus Concurrency.
func selfTxServerConns(cfg bench.Config) int {
	tenants, c := max(cfg.Tenants, 1), max(cfg.Tenants, 1)*max(cfg.ConnsPerTenant, 1)
	if selfIdleOnly(cfg) {
		return min(c, tenants+selfConcurrency(cfg))
	}
	return c
}

// selfMaxConnections returns the max_connections to start the cluster with
// for cfg and the chosen targets, and what the run may need at most (more
// than that when it was capped). Targets run one at a time, but what the
// poolers and routers keep open lingers, so the needs add up, with C =
// tenants x conns per tenant and K = Concurrency:
//
//   - direct and router hold a backend per client connection: 2C covers one
//     target's C and the previous one's still exiting;
//   - pgbouncer-session keeps its C server connections after its rounds;
//   - each transaction-pooled target keeps selfTxServerConns: C, or in an
//     idle-only run about tenants + K;
//   - each PgBouncer keeps an auth_query connection per database;
//   - Cold's N new tenants per target: the cold baseline's logins, and per
//     creation in a router an admin session in the new database and the
//     tenant's first upstream session (3K), and behind router-pgbouncer a
//     pool and an auth_query connection per new database (2N);
//   - each router's catalog and admin pools (selfPoolConns each); and 64
//     for superusers and the set-up.
//
// The value is capped at selfMaxConnectionsCap (5000): every slot costs
// shared memory (lock table, process entries) and every backend is a
// process, and 5000 is about what a 24 GiB machine starts and runs next to
// the benchmark. A run that holds more than that through direct,
// pgbouncer-session or router needs a bigger machine or a transaction
// pool; the caller warns.
func selfMaxConnections(cfg bench.Config, targets []string) (maxConns, need int) {
	has := func(l string) bool { return slices.Contains(targets, l) }
	tenants, c, k := max(cfg.Tenants, 1), max(cfg.Tenants, 1)*max(cfg.ConnsPerTenant, 1), selfConcurrency(cfg)
	need = 64
	if has(selfDirect) || has(selfRouter) {
		need += 2 * c
	}
	if has(selfBouncerSession) {
		need += c + tenants
	}
	if has(selfBouncerTx) || has(selfRouterBouncer) {
		need += tenants // the transaction PgBouncer's auth_query connections
	}
	for _, l := range []string{selfBouncerTx, selfRouterBouncer} {
		if has(l) {
			need += selfTxServerConns(cfg)
		}
	}
	routers := 1 // one creates the tenants even when none is chosen
	if has(selfRouter) && has(selfRouterBouncer) {
		routers = 2
	}
	need += routers * 2 * selfPoolConns(cfg)
	if slices.Contains(cfg.Scenarios, bench.Cold) {
		n := cfg.NewTenants
		if n <= 0 {
			n = tenants
		}
		need += 3 * k
		if has(selfRouterBouncer) {
			need += 2 * n
		}
	}
	return min(need, selfMaxConnectionsCap), need
}

// selfFileWarnings says which processes of a --self run for cfg and the
// chosen targets may need more open files than limit, the soft limit they
// inherit from this one, with the numbers and what to change; nil when
// everything fits or the limit is unknown (0). A router holds two
// descriptors per session (client and upstream); PgBouncer one per client
// and one per server connection (selfTxServerConns and the auth_query ones
// for the transaction pool); on top of that each keeps selfOwnFiles and a
// router its pools. This process's own need is checkFileLimit's.
func selfFileWarnings(cfg bench.Config, targets []string, limit uint64) []string {
	if limit == 0 {
		return nil
	}
	has := func(l string) bool { return slices.Contains(targets, l) }
	tenants, c := max(cfg.Tenants, 1), max(cfg.Tenants, 1)*max(cfg.ConnsPerTenant, 1)
	type proc struct {
		name    string
		perConn int // descriptors per benchmark connection
		own     int // descriptors whatever the connections
	}
	var procs []proc
	for _, l := range []string{selfRouter, selfRouterBouncer} {
		if has(l) {
			procs = append(procs, proc{l + " (pgtenant serve)", 2, selfOwnFiles + 2*selfPoolConns(cfg)})
		}
	}
	if has(selfBouncerSession) {
		procs = append(procs, proc{"PgBouncer in session mode", 2, selfOwnFiles + tenants})
	}
	if has(selfBouncerTx) || has(selfRouterBouncer) {
		servers := tenants
		for _, l := range []string{selfBouncerTx, selfRouterBouncer} {
			if has(l) {
				servers += selfTxServerConns(cfg)
			}
		}
		procs = append(procs, proc{"PgBouncer in transaction mode", 1, selfOwnFiles + servers})
	}
	var warns []string
	for _, p := range procs {
		need := p.perConn*c + p.own
		if uint64(need) <= limit {
			continue
		}
		fit := max(0, (int(limit)-p.own)/p.perConn)
		warns = append(warns, fmt.Sprintf("%s may need %d open files (%d per connection for %d x %d connections, plus %d of its own) "+
			"but the open-file limit is %d: connections beyond about %d will fail. Lower --tenants x --conns-per-tenant to %d or less, "+
			"leave it out of --self-targets, or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=; needs root or CAP_SYS_RESOURCE)",
			p.name, need, p.perConn, tenants, max(cfg.ConnsPerTenant, 1), p.own, limit, fit, fit))
	}
	return warns
}

// startBouncer starts one PgBouncer in front of the cluster.
func (s *selfBench) startBouncer(ctx context.Context, cfg bench.Config, mode string) (*localproc.PgBouncer, error) {
	conns := max(cfg.ConnsPerTenant, 1)
	c := max(cfg.Tenants, 1) * conns
	b, err := localproc.StartPgBouncer(ctx, localproc.PgBouncerConfig{
		Dir:          s.dir,
		Name:         "pgbouncer-" + mode,
		ServerPort:   s.cluster.Port(),
		AuthUser:     s.cluster.AdminUser(),
		AuthPassword: s.cluster.AdminPassword(),
		PoolMode:     mode,
		// Two targets' clients at once at most (a storm's closing ones
		// and the next round's; in transaction mode router-pgbouncer's
		// upstream connections are clients too), Cold's and warm-up's
		// Concurrency at once, and as many server connections per
		// tenant as there are clients per tenant, so that no client
		// queues in session mode.
		MaxClientConn:   2*max(c, selfConcurrency(cfg)) + 100,
		DefaultPoolSize: conns,
	})
	if err != nil {
		return nil, err
	}
	s.bouncers = append(s.bouncers, b)
	return b, nil
}

// selfRouterConfig is the router's configuration file. Secrets are not in
// it but in the environment (selfRouterEnv). via, when set, is the
// PgBouncer the router reaches Postgres through.
func selfRouterConfig(cfg bench.Config, via *localproc.PgBouncer, spares int) string {
	c := max(cfg.Tenants, 1) * max(cfg.ConnsPerTenant, 1)
	var b strings.Builder
	b.WriteString("# Written by pgtenant bench --self. Secrets come from the environment.\n")
	b.WriteString("listen: 127.0.0.1:0\n")
	b.WriteString("drain_timeout: 0s\n")
	b.WriteString("log:\n  level: warn\n")
	// The handshake cap protects a router from floods; here it must not
	// refuse the benchmark's own storm.
	fmt.Fprintf(&b, "limits:\n  max_handshakes: %d\n", max(1000, 2*c))
	// No cap on creations either (0, the default, says so): Cold drives
	// Concurrency of them at once, and the pools below let them all run.
	b.WriteString("  max_concurrent_creates: 0\n")
	fmt.Fprintf(&b, "catalog:\n  max_conns: %d\n", selfPoolConns(cfg))
	fmt.Fprintf(&b, "provider:\n  local:\n    max_conns: %d\n    spares: %d\n", selfPoolConns(cfg), spares)
	if via != nil {
		fmt.Fprintf(&b, "upstream:\n  dial_override: %s\n", via.Addr())
		// PgBouncer refuses startup parameters it does not track.
		fmt.Fprintf(&b, "  forward_params: [%s]\n", strings.Join(router.NeonPoolerParams, ", "))
	}
	return b.String()
}

// selfRouterEnv is the routers' environment: ours without any pgtenant
// secret or systemd variable, plus the secrets of this run.
func selfRouterEnv(secret, adminDSN, key string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case router.EnvPassword, router.EnvAdminDSN, router.EnvCatalogDSN, router.EnvCatalogKey, router.EnvNeonAPIKey, router.EnvAdminToken,
			"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES":
			continue
		}
		env = append(env, kv)
	}
	return append(env, router.EnvPassword+"="+secret, router.EnvAdminDSN+"="+adminDSN, router.EnvCatalogKey+"="+key)
}

// startRouter writes name's configuration and starts `pgtenant serve` on it.
func (s *selfBench) startRouter(ctx context.Context, exe, name, config string, env []string) (*routerProc, error) {
	path := filepath.Join(s.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	r, err := startRouterProc(ctx, exe, path, filepath.Join(s.dir, name+".log"), env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.routers = append(s.routers, r)
	return r, nil
}

// stopRouter stops r, one of s.routers, and forgets it.
func (s *selfBench) stopRouter(ctx context.Context, r *routerProc) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), selfStopTimeout)
	defer cancel()
	s.routers = slices.DeleteFunc(s.routers, func(x *routerProc) bool { return x == r })
	return r.stop(ctx)
}

// createTenants connects once to each tenant through the router label
// (at routerDSN), which creates its database, then, with grant, lets
// selfRole connect to every one.
func (s *selfBench) createTenants(ctx context.Context, cfg bench.Config, label, routerDSN string, admin *pgx.Conn, grant bool) error {
	n := max(cfg.Tenants, 1)
	prefix := cfg.TenantPrefix
	if prefix == "" {
		prefix = "bench_"
	}
	t0 := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(selfCreateConcurrency)
	for i := range n {
		tenant := prefix + strconv.Itoa(i)
		g.Go(func() error {
			cctx, cancel := context.WithTimeout(gctx, selfStartTimeout)
			defer cancel()
			c, err := pgconn.Connect(cctx, strings.ReplaceAll(routerDSN, bench.TenantPlaceholder, tenant))
			if err != nil {
				return fmt.Errorf("create tenant %s through %s: %w", tenant, label, err)
			}
			return c.Close(cctx)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	access := ""
	if grant {
		for i := range n {
			db := pgx.Identifier{local.DefaultPrefix + prefix + strconv.Itoa(i)}.Sanitize()
			if _, err := admin.Exec(ctx, "GRANT CONNECT ON DATABASE "+db+" TO "+selfRole); err != nil {
				return fmt.Errorf("grant %s access to %s: %w", selfRole, db, err)
			}
		}
		access = "; " + selfRole + " may connect to each"
	}
	s.notef("created %d tenants through %s in %v (databases %s%s0 ...)%s",
		n, label, time.Since(t0).Round(time.Millisecond), local.DefaultPrefix, prefix, access)
	return nil
}

// createDatabase is the create-database target's Cold hook: the bare
// CREATE DATABASE <t_tenant> TEMPLATE pgtenant_template that the local
// provider runs for a new tenant (the routers keep provider.local.template
// at its default, local.DefaultTemplate, and the strategy at Postgres'),
// as the cluster's superuser. It logs in afresh for every database rather
// than taking a warm pooled session, because no route to a new tenant's
// first answer avoids a fresh login: behind a router it is the new upstream
// session into the new database, on top of the client's own. One SCRAM
// login and one clone of the template is thus the least a new tenant can
// cost, and the figure the routers' time to first query is held to.
//
// The databases are not dropped: close removes the cluster, with them and
// the routers' new tenants, and dropping them between rounds would load
// the rounds of the targets measured meanwhile. Safe for concurrent use.
func (s *selfBench) createDatabase(ctx context.Context, tenant string) error {
	c, err := pgconn.ConnectConfig(ctx, s.admin)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = c.Close(cctx) // sends Terminate without waiting for an answer
		cancel()
	}()
	db := pgx.Identifier{local.DefaultPrefix + tenant}.Sanitize()
	_, err = c.Exec(ctx, "CREATE DATABASE "+db+" TEMPLATE "+pgx.Identifier{local.DefaultTemplate}.Sanitize()).ReadAll()
	return err
}

// run runs cfg against the --self targets. Cold creates tenants, which
// only the routers do, so each run of consecutive Cold scenarios goes to
// create-database (the baseline, a bare CREATE DATABASE per new tenant)
// and the routers, and the rest to every chosen target; the reports are
// joined in scenario order.
func (s *selfBench) run(ctx context.Context, cfg bench.Config) (*bench.Report, error) {
	var rep *bench.Report
	for _, seg := range coldApart(cfg.Scenarios) {
		c := cfg
		c.Scenarios, c.Targets = seg, s.targets
		if seg[0] == bench.Cold {
			c.Targets = append([]bench.Target{s.coldBaseline}, s.routerTargets...)
			s.notef("cold: %s (a bare CREATE DATABASE ... TEMPLATE %s per new tenant, as the superuser, on a fresh login) against the routers, "+
				"which do the same and more; Postgres and PgBouncer do not create databases", selfCreateDatabase, local.DefaultTemplate)
		}
		r, err := bench.Run(ctx, c)
		switch {
		case r == nil:
			if rep != nil && ctx.Err() != nil {
				rep.Partial = true
				return rep, err
			}
			return nil, err
		case rep == nil:
			rep = r
		default:
			rep.Scenarios = append(rep.Scenarios, r.Scenarios...)
			rep.Partial = rep.Partial || r.Partial
		}
		if err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// against names the targets scs run against, for the header line: cold
// has targets of its own.
func (s *selfBench) against(scs []bench.Scenario) string {
	cold := joinLabels(append([]bench.Target{s.coldBaseline}, s.routerTargets...))
	switch {
	case !slices.Contains(scs, bench.Cold):
		return joinLabels(s.targets)
	case slices.ContainsFunc(scs, func(sc bench.Scenario) bool { return sc != bench.Cold }):
		return cold + " (cold), " + joinLabels(s.targets) + " (the others)"
	default:
		return cold
	}
}

// coldApart splits scenarios into runs of consecutive ones that are all
// Cold or all not, in order.
func coldApart(scs []bench.Scenario) [][]bench.Scenario {
	var segs [][]bench.Scenario
	for i, sc := range scs {
		if i == 0 || (sc == bench.Cold) != (scs[i-1] == bench.Cold) {
			segs = append(segs, nil)
		}
		segs[len(segs)-1] = append(segs[len(segs)-1], sc)
	}
	return segs
}

// close stops the routers, then PgBouncer, then Postgres, and removes the
// directory. Problems are reported on stderr: the run's outcome stands.
func (s *selfBench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), selfStopTimeout)
	defer cancel()
	for _, r := range s.routers {
		if err := r.stop(ctx); err != nil {
			s.notef("warning: stopping a router: %v", err)
		}
	}
	for _, b := range s.bouncers {
		if err := b.Stop(ctx); err != nil {
			s.notef("warning: stopping %v: %v", b, err)
		}
	}
	if s.cluster != nil {
		if err := s.cluster.Stop(ctx); err != nil {
			s.notef("warning: stopping Postgres: %v", err)
		}
	}
	if s.dir != "" {
		if err := os.RemoveAll(s.dir); err != nil {
			s.notef("warning: %v", err)
		}
	}
}

func (s *selfBench) notef(format string, args ...any) {
	fmt.Fprintf(s.stderr, "pgtenant bench --self: "+format+"\n", args...)
}

// routerProc is a router running as `pgtenant serve` in a child process.
type routerProc struct {
	cmd     *exec.Cmd
	addr    string
	logPath string

	done    chan struct{} // closed by wait once the child is reaped
	exitErr error         // written by wait before done is closed
}

// startRouterProc starts `exe serve --config config` and returns once it
// listens (it prints its address). The child runs in a process group of
// its own, so that a terminal's Ctrl-C reaches only this process, which then
// stops it; it gets SIGTERM if this process dies. Its log goes to logPath.
func startRouterProc(ctx context.Context, exe, config, logPath string, env []string) (*routerProc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	ready := &readyWriter{addr: make(chan string, 1)}
	cmd := exec.Command(exe, "serve", "--config", config)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = ready, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgtenant serve: %w", err)
	}
	r := &routerProc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go r.wait()
	t := time.NewTimer(selfStartTimeout)
	defer t.Stop()
	select {
	case r.addr = <-ready.addr:
		return r, nil
	case <-r.done:
		return nil, fmt.Errorf("pgtenant serve exited during start-up: %w%s", r.exitErr, logtail.Since(logPath, 0))
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = errors.New("pgtenant serve did not start listening in time")
	}
	r.kill()
	return nil, fmt.Errorf("%w%s", err, logtail.Since(logPath, 0))
}

func (r *routerProc) wait() {
	r.exitErr = r.cmd.Wait()
	close(r.done)
}

func (r *routerProc) pid() int { return r.cmd.Process.Pid }

// stop asks the router to shut down (SIGTERM, as a service manager would)
// and waits for it, killing it when ctx ends first.
func (r *routerProc) stop(ctx context.Context) error {
	select {
	case <-r.done:
		return r.exitStatus()
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return r.exitStatus()
	case <-ctx.Done():
	}
	r.kill()
	return fmt.Errorf("router (pid %d) did not exit on SIGTERM: killed it%s", r.pid(), logtail.Since(r.logPath, 0))
}

func (r *routerProc) exitStatus() error {
	if r.exitErr != nil {
		return fmt.Errorf("router (pid %d): %w%s", r.pid(), r.exitErr, logtail.Since(r.logPath, 0))
	}
	return nil
}

func (r *routerProc) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// readyWriter is a router's standard output: it passes on the address of
// the first "pgtenant: routing tenants on ADDR" line and drops the rest.
// exec writes to it from one goroutine.
type readyWriter struct {
	mu   sync.Mutex
	line []byte
	sent bool
	addr chan string // buffered, one value
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range p {
		if c != '\n' {
			if len(w.line) < 4096 {
				w.line = append(w.line, c)
			}
			continue
		}
		if a, ok := strings.CutPrefix(string(w.line), selfReadyLine); ok && !w.sent {
			w.sent = true
			w.addr <- strings.TrimSpace(a)
		}
		w.line = w.line[:0]
	}
	return len(p), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// waitSpares waits until the routers have n spare databases ready, so that
// cold measures a router in its steady state with spares.
func (s *selfBench) waitSpares(ctx context.Context, admin *pgx.Conn, n int) error {
	t0 := time.Now()
	wctx, cancel := context.WithTimeout(ctx, selfStartTimeout)
	defer cancel()
	for {
		ready, err := local.ReadySpares(wctx, admin, local.DefaultTemplate)
		switch {
		case err != nil:
			return fmt.Errorf("count the routers' spare databases: %w", err)
		case ready >= n:
			s.notef("%d spare databases ready after %v", ready, time.Since(t0).Round(time.Millisecond))
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("the routers made %d of %d spare databases in %v", ready, n, selfStartTimeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
