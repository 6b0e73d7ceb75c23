package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

// The test bed: what `pgtenant bench --self` starts, in a temporary
// directory, for the targets chosen (--self-targets; by default all of
// them):
//
//   - a throwaway Postgres (localproc.StartCluster: fsync off, max_connections
//     sized for the run, SCRAM logins over loopback only);
//   - when pgbouncer is installed, PgBouncer in front of it, in session pool
//     mode for pgbouncer-session and in transaction pool mode for
//     pgbouncer-transaction and router-pgbouncer (localproc.StartPgBouncer),
//     clients logging in with SCRAM-SHA-256 (auth_query with pass-through,
//     so roles created later log in too);
//   - the routers, each `pgtenant serve` in a child process
//     (localproc.StartRouter, running Options.Pgtenant: for the command,
//     its own executable), so that their memory and threads are measured
//     alone: "router" reaches Postgres directly with an upstream connection
//     per client; "router-pooled-session" and "router-pooled-tx" reach it
//     directly too but pool their upstream connections themselves
//     (pool.mode session and transaction, sized as PgBouncer's pools are:
//     routerPool); "router-pgbouncer" reaches it through the
//     transaction-mode PgBouncer (upstream.dial_override). All share one
//     catalog in the cluster, so they route a tenant to the same database;
//     their clients log in with SCRAM against a random app secret, and
//     they log in upstream as each tenant's own role.
//
// All targets do the same work against the same databases: tenant <id>'s
// database t_<id> is created first, through the first router chosen (a
// "router" started for that alone when no router is chosen), and then the
// direct and PgBouncer targets log in to it as one shared role,
// pgtenant_bench (random password, SCRAM, granted CONNECT on every tenant
// database), since the tenants' own passwords are known only to the
// routers. Cold, which creates
// tenants, runs against the routers, after "create-database": the bare
// CREATE DATABASE ... TEMPLATE the routers run for a new tenant, as the
// baseline they are held to (Bed.createDatabase).
//
// bench sends its queries with the simple query protocol (pgconn's Exec),
// never a protocol-level prepared statement, so every target, the
// transaction-pooled ones (pgbouncer-transaction, router-pooled-tx,
// router-pgbouncer) included, runs them alike and none needs an exec mode
// of its own.
//
// Everything is stopped and the directory removed by Bed.Close (the
// command closes it on Ctrl-C too); the children also get a signal if this
// process dies.

// Labels of the test bed's targets; Labels has them in the order they run,
// and ratios are to the first one run.
const (
	// Direct is Postgres itself, logged in to as the shared role.
	Direct = "direct"
	// BouncerSession is PgBouncer in session pool mode.
	BouncerSession = "pgbouncer-session"
	// BouncerTx is PgBouncer in transaction pool mode.
	BouncerTx = "pgbouncer-transaction"
	// Router is a router reaching Postgres directly, with an upstream
	// connection of its own per client connection (no pool section).
	Router = "router"
	// RouterPooledSession is a router reaching Postgres directly through
	// its own pool in session mode (pool.mode: session): a client holds a
	// pooled server connection until it disconnects.
	RouterPooledSession = "router-pooled-session"
	// RouterPooledTx is a router reaching Postgres directly through its
	// own pool in transaction mode (pool.mode: transaction): a client holds
	// a pooled server connection for a transaction (a lone query) at a time.
	RouterPooledTx = "router-pooled-tx"
	// RouterBouncer is a router reaching Postgres through BouncerTx.
	RouterBouncer = "router-pgbouncer"
	// CreateDatabase is Cold's baseline, first in every cold run; it is
	// not chosen but comes with Cold.
	CreateDatabase = "create-database"
)

// labels are the targets to choose from, in run order: the routers
// together, the pooled ones between router (a server connection per
// client, as in session mode) and router-pgbouncer (transaction pooling,
// as router-pooled-tx).
var labels = []string{Direct, BouncerSession, BouncerTx, Router, RouterPooledSession, RouterPooledTx, RouterBouncer}

// routerLabels are the router targets, in labels order: those that create
// tenants, and so run Cold.
var routerLabels = []string{Router, RouterPooledSession, RouterPooledTx, RouterBouncer}

// isRouter reports whether target label is a router.
func isRouter(label string) bool { return slices.Contains(routerLabels, label) }

// Labels returns the targets to choose from (ParseTargets), in run order.
func Labels() []string { return slices.Clone(labels) }

const (
	// sharedRole is the role the direct and PgBouncer targets log in as.
	sharedRole = "pgtenant_bench"
	// startTimeout bounds creating each tenant and waiting for spares.
	startTimeout = 2 * time.Minute
	// stopTimeout bounds stopping each component at the end.
	stopTimeout = 30 * time.Second
	// createConcurrency caps tenants created at once before the run.
	createConcurrency = 8
	// maxConnectionsCap is the most max_connections the cluster gets
	// (see maxConnections).
	maxConnectionsCap = 5000
	// ownFiles is what a router or PgBouncer keeps open besides its
	// client and server connections: listeners, logs, epoll, the runtime.
	ownFiles = 64
)

// Bed is a running test bed, the environment `pgtenant bench --self` runs
// in. Close stops it.
type Bed struct {
	stderr   io.Writer
	dir      string
	cluster  *localproc.Cluster
	bouncers []*localproc.PgBouncer
	routers  []*localproc.Router
	// targets are the chosen targets, in labels order; routerTargets
	// the chosen routers, which create tenants (Cold).
	targets, routerTargets []bench.Target
	// coldBaseline is the create-database target, first in Cold.
	coldBaseline bench.Target
	// admin logs in to the cluster as the superuser, for createDatabase.
	admin *pgconn.Config
}

// ParseTargets returns the targets named (the values of --self-targets),
// in Labels order, which does not depend on the order given, or an error
// listing the valid names: the caller's usage error. Cold, which creates
// tenants, needs a router among them.
func ParseTargets(names []string, scs []bench.Scenario) ([]string, error) {
	chosen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		switch {
		case n == CreateDatabase:
			return nil, fmt.Errorf("--self-targets: %s is not chosen: it is cold's baseline and runs whenever cold does", n)
		case !slices.Contains(labels, n):
			return nil, fmt.Errorf("--self-targets: unknown target %q (valid: %s)", n, strings.Join(labels, ", "))
		}
		chosen[n] = true
	}
	if len(chosen) == 0 {
		return nil, fmt.Errorf("--self-targets: no target given (valid: %s)", strings.Join(labels, ", "))
	}
	if slices.Contains(scs, bench.Cold) && !slices.ContainsFunc(routerLabels, func(l string) bool { return chosen[l] }) {
		return nil, fmt.Errorf("--self-targets: cold (--scenario cold or --new-tenants) compares the routers with %s: choose a router too (%s)",
			CreateDatabase, strings.Join(routerLabels, ", "))
	}
	var out []string
	for _, l := range labels {
		if chosen[l] {
			out = append(out, l)
		}
	}
	return out, nil
}

// Options configure Start. Bench and Pgtenant are required.
type Options struct {
	// Bench is the run's configuration; its Targets are ignored.
	Bench bench.Config
	// Targets are the targets chosen (ParseTargets); nil means every
	// target, less PgBouncer's if pgbouncer is not installed.
	Targets []string
	// Spares is the spare databases the routers keep cloned ahead of
	// demand (provider.local.spares).
	Spares int
	// PoolBudget, when positive, is the pooled routers'
	// pool.max_server_connections (and caps max_per_tenant); zero sizes it
	// so that no client queues (routerPool).
	PoolBudget int
	// MaxConnections, when positive, is Postgres' max_connections; zero
	// sizes it for the chosen targets (maxConnections).
	MaxConnections int
	// Pgtenant is the pgtenant executable the routers run as (`Pgtenant
	// serve --config ...`): for `pgtenant bench --self`, os.Executable().
	Pgtenant string
	// Notes receives progress notes and warnings, one line each, prefixed
	// "pgtenant bench --self: ". Nil discards them.
	Notes io.Writer
	// Preflight, if set, is called once Bench is checked and before
	// anything starts. It returns the soft open-file limit the children
	// will inherit (0: unknown), which the warnings about open files are
	// measured against; `pgtenant bench` raises the limit there and says
	// so, as for any run.
	Preflight func(bench.Config) (softFileLimit uint64)
}

// Start starts the test bed for opts and returns it with its targets
// (Targets). On error everything it started is stopped again; otherwise
// the caller must Close it.
func Start(ctx context.Context, opts Options) (_ *Bed, err error) {
	cfg, chosen, spares, exe, stderr, budget := opts.Bench, opts.Targets, opts.Spares, opts.Pgtenant, opts.Notes, opts.PoolBudget
	if stderr == nil {
		stderr = io.Discard
	}
	// Check the flags before starting anything.
	probe := cfg
	probe.Targets = []bench.Target{{Label: Router, DSN: "postgres://{tenant}@127.0.0.1/app"}}
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	if exe == "" {
		return nil, errors.New("testbed: Options.Pgtenant is required: the routers run as `pgtenant serve`")
	}
	s := &Bed{stderr: stderr}
	bouncerBin, haveBouncer := localproc.HavePgBouncer()
	names := chosen
	switch {
	case names == nil && haveBouncer:
		names = labels
	case names == nil:
		names = slices.DeleteFunc(slices.Clone(labels), needsBouncer)
		s.notef("pgbouncer is not installed (%s, or on PATH): skipping %s, %s and %s; install it with `apt-get install pgbouncer` (or make deps)",
			localproc.DefaultPgBouncer, BouncerSession, BouncerTx, RouterBouncer)
	case !haveBouncer && slices.ContainsFunc(names, needsBouncer):
		return nil, fmt.Errorf("--self-targets %s: pgbouncer is not installed (%s, or on PATH); install it with `apt-get install pgbouncer` (or make deps)",
			strings.Join(names, ","), localproc.DefaultPgBouncer)
	}
	has := func(label string) bool { return slices.Contains(names, label) }

	// Children inherit the raised limit: PgBouncer and the routers hold a
	// descriptor per client and per server connection. Say up front what
	// will not fit, rather than fail half way through.
	var softFiles uint64
	if opts.Preflight != nil {
		softFiles = opts.Preflight(cfg)
	}
	for _, w := range fileWarnings(cfg, names, softFiles) {
		s.notef("warning: %s", w)
	}
	maxConns, need := maxConnections(cfg, names, budget)
	if opts.MaxConnections > 0 {
		maxConns = opts.MaxConnections
	}
	if need > maxConns {
		s.notef("warning: Postgres gets max_connections %d, not the %d this run may need: direct, pgbouncer-session, router and router-pooled-session "+
			"hold a server connection per client connection (%d x %d), and transaction pools one per client busy at once; connections beyond it fail with 53300. "+
			"Choose transaction-pooled targets (--self-targets %s,%s,%s) or fewer connections (--tenants, --conns-per-tenant)",
			maxConns, need, max(cfg.Tenants, 1), max(cfg.ConnsPerTenant, 1), BouncerTx, RouterPooledTx, RouterBouncer)
	}

	defer func() {
		if err != nil {
			s.Close()
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
	if _, err := admin.Exec(ctx, "CREATE ROLE "+sharedRole+" LOGIN PASSWORD '"+rolePassword+"'"); err != nil {
		return nil, fmt.Errorf("create role %s: %w", sharedRole, err)
	}

	var session, tx *localproc.PgBouncer
	var pools []string
	if has(BouncerSession) {
		if session, err = s.startBouncer(ctx, cfg, localproc.PoolSession); err != nil {
			return nil, err
		}
		pools = append(pools, "session pooling on "+session.Addr())
	}
	if has(BouncerTx) || has(RouterBouncer) {
		if tx, err = s.startBouncer(ctx, cfg, localproc.PoolTransaction); err != nil {
			return nil, err
		}
		pools = append(pools, "transaction pooling on "+tx.Addr())
	}
	if len(pools) > 0 {
		s.notef("PgBouncer (%s): %s", bouncerBin, strings.Join(pools, ", "))
	}

	secret, key := randomHex(16), catalog.NewKey()
	env := routerEnv(secret, s.cluster.AdminDSN("postgres"), key)
	// Tenants are created through the first router chosen, or the plain
	// one if no router is chosen, stopped again once it has done that.
	routers := map[string]*localproc.Router{}
	creatorLabel := ""
	for _, l := range routerLabels {
		if !has(l) && (l != Router || slices.ContainsFunc(names, isRouter)) {
			continue
		}
		var via *localproc.PgBouncer
		if l == RouterBouncer {
			via = tx
		}
		r, err := s.startRouter(ctx, exe, l, routerConfig(cfg, via, poolMode(l), spares, budget), env)
		if err != nil {
			return nil, err
		}
		routers[l] = r
		if creatorLabel == "" {
			creatorLabel = l
		}
		how := ""
		switch {
		case via != nil:
			how = ", upstream through PgBouncer " + via.Addr()
		case poolMode(l) != "":
			budget, perTenant := routerPool(cfg, budget)
			how = fmt.Sprintf(", pooling upstream connections itself: pool.mode %s, max_server_connections %d, max_per_tenant %d",
				poolMode(l), budget, perTenant)
		}
		s.notef("router (pgtenant serve) %s on %s (pid %d%s)", l, r.Addr(), r.PID(), how)
	}

	routerDSN := func(addr string) string {
		return "postgres://" + bench.TenantPlaceholder + ":" + secret + "@" + addr + "/app?sslmode=disable"
	}
	grant := has(Direct) || has(BouncerSession) || has(BouncerTx)
	if err := s.createTenants(ctx, cfg, creatorLabel, routerDSN(routers[creatorLabel].Addr()), admin, grant); err != nil {
		return nil, err
	}
	if spares > 0 {
		if err := s.waitSpares(ctx, admin, spares); err != nil {
			return nil, err
		}
	}
	if r := routers[Router]; r != nil && !has(Router) {
		s.notef("stopping %s: no router is among the targets, it only created the tenants", Router)
		if err := s.stopRouter(ctx, r); err != nil {
			s.notef("warning: stopping %s: %v", Router, err)
		}
		delete(routers, Router)
	}

	tenantDSN := func(port uint16) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s%s?sslmode=disable", sharedRole, rolePassword, port, local.DefaultPrefix, bench.TenantPlaceholder)
	}
	for _, l := range names {
		var t bench.Target
		switch l {
		case Direct:
			t = bench.Target{DSN: tenantDSN(s.cluster.Port())}
		case BouncerSession:
			t = bench.Target{DSN: tenantDSN(session.Port()), PID: session.PID()}
		case BouncerTx:
			t = bench.Target{DSN: tenantDSN(tx.Port()), PID: tx.PID()}
		case Router, RouterPooledSession, RouterPooledTx, RouterBouncer:
			t = bench.Target{DSN: routerDSN(routers[l].Addr()), PID: routers[l].PID()}
		}
		t.Label = l
		s.targets = append(s.targets, t)
		if isRouter(l) {
			s.routerTargets = append(s.routerTargets, t)
		}
	}
	s.coldBaseline = bench.Target{Label: CreateDatabase, Cold: s.createDatabase}
	return s, nil
}

// needsBouncer reports whether target label needs PgBouncer.
func needsBouncer(label string) bool {
	return label == BouncerSession || label == BouncerTx || label == RouterBouncer
}

// poolMode is router target label's pool.mode, or "" for a router without
// a pool section (router, router-pgbouncer).
func poolMode(label string) string {
	switch label {
	case RouterPooledSession:
		return "session"
	case RouterPooledTx:
		return "transaction"
	}
	return ""
}

// routerPool sizes a pooled router's pool for cfg: max_per_tenant is the
// connections per tenant, as PgBouncer's default_pool_size (startBouncer),
// so that no client queues in session mode; max_server_connections, the
// budget over all tenants, has room for every client connection at once
// (C, session mode) plus Concurrency more, for Cold's new tenants and the
// warm-up, whose pools keep their connection idle until the budget needs it
// for another tenant.
//
// A positive budget is taken as it is (Options.PoolBudget), the ceiling
// capped at it; in a fairness run the ceiling is the budget itself: the
// run measures how the budget is shared between a heavy tenant and small
// ones, which a ceiling per tenant would decide instead.
func routerPool(cfg bench.Config, budget int) (maxServer, maxPerTenant int) {
	conns := max(cfg.ConnsPerTenant, 1)
	if budget > 0 {
		if slices.Contains(cfg.Scenarios, bench.Fairness) {
			return budget, budget
		}
		return budget, min(conns, budget)
	}
	return max(cfg.Tenants, 1)*conns + concurrency(cfg), conns
}

// concurrency is cfg's Concurrency with bench's default.
func concurrency(cfg bench.Config) int {
	if cfg.Concurrency <= 0 {
		return 64
	}
	return cfg.Concurrency
}

// poolConns sizes each router's catalog and admin pools: a tenant's
// creation holds a connection of each, so pools smaller than Concurrency
// would queue Cold's creations inside the router. No bigger: under a small
// max_connections (--self-max-connections) they take from the pool budget's
// room.
func poolConns(cfg bench.Config) int { return max(2, concurrency(cfg)) }

// idleOnly reports whether every scenario of cfg but Cold is Idle, in
// which only warm-up and the probe run queries, Concurrency at a time.
// No scenario means Steady.
func idleOnly(cfg bench.Config) bool {
	return len(cfg.Scenarios) > 0 &&
		!slices.ContainsFunc(cfg.Scenarios, func(sc bench.Scenario) bool { return sc != bench.Idle && sc != bench.Cold })
}

// txServerConns estimates the server connections a transaction pool of
// one target (pgbouncer-transaction, router-pooled-tx, or router-pgbouncer,
// whose tenants' roles get pools of their own) opens and keeps: up to conns per tenant per
// database while its clients run queries at once (C in all), but in Idle
// only the warm-up and probe, Concurrency at a time, which leaves about one
// per database plus Concurrency.
func txServerConns(cfg bench.Config) int {
	tenants, c := max(cfg.Tenants, 1), max(cfg.Tenants, 1)*max(cfg.ConnsPerTenant, 1)
	if idleOnly(cfg) {
		return min(c, tenants+concurrency(cfg))
	}
	return c
}

// maxConnections returns the max_connections to start the cluster with
// for cfg and the chosen targets, and what the run may need at most (more
// than that when it was capped). Targets run one at a time, but what the
// poolers and routers keep open lingers, so the needs add up, with C =
// tenants x conns per tenant and K = Concurrency:
//
//   - direct and router hold a backend per client connection: 2C covers one
//     target's C and the previous one's still exiting;
//   - pgbouncer-session and router-pooled-session keep their C server
//     connections after their rounds;
//   - each transaction-pooled target keeps txServerConns: C, or in an
//     idle-only run about tenants + K;
//   - each PgBouncer keeps an auth_query connection per database;
//   - Cold's N new tenants per target: the cold baseline's logins, and per
//     creation in a router an admin session in the new database and the
//     tenant's first upstream session (3K), behind router-pgbouncer a
//     pool and an auth_query connection per new database (2N), and in a
//     pooled router the new tenant's server connection, kept (N); a pooled
//     router keeps no more than its budget (routerPool) in all;
//   - each router's catalog and admin pools (poolConns each); and 64
//     for superusers and the set-up.
//
// The value is capped at maxConnectionsCap (5000): every slot costs
// shared memory (lock table, process entries) and every backend is a
// process, and 5000 is about what a 24 GiB machine starts and runs next to
// the benchmark. A run that holds more than that through direct,
// pgbouncer-session or router needs a bigger machine or a transaction
// pool; the caller warns.
func maxConnections(cfg bench.Config, targets []string, poolBudget int) (maxConns, need int) {
	has := func(l string) bool { return slices.Contains(targets, l) }
	tenants, c, k := max(cfg.Tenants, 1), max(cfg.Tenants, 1)*max(cfg.ConnsPerTenant, 1), concurrency(cfg)
	need = 64
	if has(Direct) || has(Router) {
		need += 2 * c
	}
	if has(BouncerSession) {
		need += c + tenants
	}
	if has(BouncerTx) || has(RouterBouncer) {
		need += tenants // the transaction PgBouncer's auth_query connections
	}
	for _, l := range []string{BouncerTx, RouterBouncer} {
		if has(l) {
			need += txServerConns(cfg)
		}
	}
	routers := 0
	for _, l := range routerLabels {
		if has(l) {
			routers++
		}
	}
	need += max(routers, 1) * 2 * poolConns(cfg) // one creates the tenants even when none is chosen
	newTenants := 0
	if slices.Contains(cfg.Scenarios, bench.Cold) {
		newTenants = cfg.NewTenants
		if newTenants <= 0 {
			newTenants = tenants
		}
		need += 3 * k
		if has(RouterBouncer) {
			need += 2 * newTenants
		}
	}
	budget, _ := routerPool(cfg, poolBudget)
	if has(RouterPooledSession) {
		need += min(budget, c+newTenants)
	}
	if has(RouterPooledTx) {
		need += min(budget, txServerConns(cfg)+newTenants)
	}
	return min(need, maxConnectionsCap), need
}

// fileWarnings says which processes of a --self run for cfg and the
// chosen targets may need more open files than limit, the soft limit they
// inherit from this one, with the numbers and what to change; nil when
// everything fits or the limit is unknown (0). A router holds two
// descriptors per session (client and upstream), router-pooled-tx one
// per client and one per server connection (txServerConns); PgBouncer one
// per client and one per server connection (txServerConns and the
// auth_query ones for the transaction pool); on top of that each keeps ownFiles and a
// router its pools. This process's own need is the caller's (Preflight).
func fileWarnings(cfg bench.Config, targets []string, limit uint64) []string {
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
	for _, l := range routerLabels {
		switch {
		case !has(l):
		case l == RouterPooledTx:
			procs = append(procs, proc{l + " (pgtenant serve)", 1, ownFiles + 2*poolConns(cfg) + txServerConns(cfg)})
		default:
			procs = append(procs, proc{l + " (pgtenant serve)", 2, ownFiles + 2*poolConns(cfg)})
		}
	}
	if has(BouncerSession) {
		procs = append(procs, proc{"PgBouncer in session mode", 2, ownFiles + tenants})
	}
	if has(BouncerTx) || has(RouterBouncer) {
		servers := tenants
		for _, l := range []string{BouncerTx, RouterBouncer} {
			if has(l) {
				servers += txServerConns(cfg)
			}
		}
		procs = append(procs, proc{"PgBouncer in transaction mode", 1, ownFiles + servers})
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
func (s *Bed) startBouncer(ctx context.Context, cfg bench.Config, mode string) (*localproc.PgBouncer, error) {
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
		MaxClientConn:   2*max(c, concurrency(cfg)) + 100,
		DefaultPoolSize: conns,
	})
	if err != nil {
		return nil, err
	}
	s.bouncers = append(s.bouncers, b)
	return b, nil
}

// routerConfig is the router's configuration file. Secrets are not in
// it but in the environment (routerEnv). via, when set, is the
// PgBouncer the router reaches Postgres through; mode, when set, the
// pool.mode of its own pool (poolMode), sized by routerPool, the reset
// query and timeouts left at their defaults.
func routerConfig(cfg bench.Config, via *localproc.PgBouncer, mode string, spares, poolBudget int) string {
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
	fmt.Fprintf(&b, "catalog:\n  max_conns: %d\n", poolConns(cfg))
	fmt.Fprintf(&b, "provider:\n  local:\n    max_conns: %d\n    spares: %d\n", poolConns(cfg), spares)
	if via != nil {
		fmt.Fprintf(&b, "upstream:\n  dial_override: %s\n", via.Addr())
		// PgBouncer refuses startup parameters it does not track.
		fmt.Fprintf(&b, "  forward_params: [%s]\n", strings.Join(router.NeonPoolerParams, ", "))
	}
	if mode != "" {
		budget, perTenant := routerPool(cfg, poolBudget)
		fmt.Fprintf(&b, "pool:\n  mode: %s\n  max_server_connections: %d\n  max_per_tenant: %d\n", mode, budget, perTenant)
	}
	return b.String()
}

// routerEnv is the routers' environment: ours without any pgtenant
// secret or systemd variable, plus the secrets of this run.
func routerEnv(secret, adminDSN, key string) []string {
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
func (s *Bed) startRouter(ctx context.Context, exe, name, config string, env []string) (*localproc.Router, error) {
	path := filepath.Join(s.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	r, err := localproc.StartRouter(ctx, localproc.RouterConfig{Binary: exe, Config: path, LogPath: filepath.Join(s.dir, name+".log"), Env: env})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.routers = append(s.routers, r)
	return r, nil
}

// stopRouter stops r, one of s.routers, and forgets it.
func (s *Bed) stopRouter(ctx context.Context, r *localproc.Router) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	s.routers = slices.DeleteFunc(s.routers, func(x *localproc.Router) bool { return x == r })
	return r.Stop(ctx)
}

// createTenants connects once to each tenant through the router label
// (at routerDSN), which creates its database, then, with grant, lets
// sharedRole connect to every one.
func (s *Bed) createTenants(ctx context.Context, cfg bench.Config, label, routerDSN string, admin *pgx.Conn, grant bool) error {
	n := max(cfg.Tenants, 1)
	prefix := cfg.TenantPrefix
	if prefix == "" {
		prefix = "bench_"
	}
	t0 := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(createConcurrency)
	for i := range n {
		tenant := prefix + strconv.Itoa(i)
		g.Go(func() error {
			cctx, cancel := context.WithTimeout(gctx, startTimeout)
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
			if _, err := admin.Exec(ctx, "GRANT CONNECT ON DATABASE "+db+" TO "+sharedRole); err != nil {
				return fmt.Errorf("grant %s access to %s: %w", sharedRole, db, err)
			}
		}
		access = "; " + sharedRole + " may connect to each"
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
func (s *Bed) createDatabase(ctx context.Context, tenant string) error {
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

// Targets returns the chosen targets, in Labels order, with their DSNs and
// the PIDs of the processes serving them. Cold's are Run's business.
func (s *Bed) Targets() []bench.Target { return slices.Clone(s.targets) }

// Run runs cfg (whose Targets it ignores) against the test bed's targets.
// Cold creates tenants, which only the routers do, so each run of
// consecutive Cold scenarios goes to create-database (the baseline, a bare
// CREATE DATABASE per new tenant) and the routers, and the rest to every
// chosen target; the reports are joined in scenario order.
func (s *Bed) Run(ctx context.Context, cfg bench.Config) (*bench.Report, error) {
	var rep *bench.Report
	for _, seg := range coldApart(cfg.Scenarios) {
		c := cfg
		c.Scenarios, c.Targets = seg, s.targets
		if seg[0] == bench.Cold {
			c.Targets = append([]bench.Target{s.coldBaseline}, s.routerTargets...)
			s.notef("cold: %s (a bare CREATE DATABASE ... TEMPLATE %s per new tenant, as the superuser, on a fresh login) against the routers, "+
				"which do the same and more; Postgres and PgBouncer do not create databases", CreateDatabase, local.DefaultTemplate)
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

// Against names the targets scs run against, for a header line: cold has
// targets of its own.
func (s *Bed) Against(scs []bench.Scenario) string {
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

// Close stops the routers, then PgBouncer, then Postgres, and removes the
// directory. Problems are reported as notes (warnings): the run's outcome
// stands. A half-started Bed closes cleanly.
func (s *Bed) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	for _, r := range s.routers {
		if err := r.Stop(ctx); err != nil {
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

func (s *Bed) notef(format string, args ...any) {
	fmt.Fprintf(s.stderr, "pgtenant bench --self: "+format+"\n", args...)
}

// joinLabels is how `pgtenant bench` lists targets: "a vs b".
func joinLabels(ts []bench.Target) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.Label
	}
	return strings.Join(s, " vs ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// waitSpares waits until the routers have n spare databases ready, so that
// cold measures a router in its steady state with spares.
func (s *Bed) waitSpares(ctx context.Context, admin *pgx.Conn, n int) error {
	t0 := time.Now()
	wctx, cancel := context.WithTimeout(ctx, startTimeout)
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
			return fmt.Errorf("the routers made %d of %d spare databases in %v", ready, n, startTimeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
