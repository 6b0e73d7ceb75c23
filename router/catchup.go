package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// Values of migrations.on_connect.
const (
	OnConnectOff     = "off"
	OnConnectMigrate = "migrate"
	OnConnectRefuse  = "refuse"
)

const (
	// catchupTargetEvery is how often the fleet's target version is read
	// from the catalog again: a migration registered by `pgtenant migrate`
	// reaches connecting tenants this late at most.
	catchupTargetEvery = 5 * time.Second
	// catchupTimeout bounds one tenant's catch-up migration.
	catchupTimeout = 10 * time.Minute
	// catchupCurrentMax caps the tenants remembered as current.
	catchupCurrentMax = 1 << 16
)

// Outcomes of pgtenant_migrate_catchups_total. current and refused count
// connects; checked, migrated and failed count catch-up runs, each shared by
// the connects that waited for it.
const (
	catchupCurrent  = "current"  // known current in memory: no catalog query
	catchupChecked  = "checked"  // a run found nothing to apply
	catchupMigrated = "migrated" // a run applied migrations
	catchupFailed   = "failed"   // a run failed
	catchupRefused  = "refused"  // on_connect refuse told a client to retry
)

// catchup is the proxy's resolver when migrations.on_connect may be on: it
// resolves through the real resolver, then makes sure the tenant is at the
// fleet's target version (the last migration registered in the catalog)
// before its session starts. A tenant found current is remembered with its
// version, so that it costs a map lookup per connect until the target
// moves; the target is read from the catalog at most every
// catchupTargetEvery. One run per tenant at a time in this process; the
// catalog's per-database lock serialises runs across instances.
type catchup struct {
	res     *resolver.Resolver
	cat     *catalog.Catalog
	connect func(context.Context, string, provision.Endpoint) (*pgx.Conn, error)
	log     *slog.Logger
	runs    *prometheus.CounterVec
	known   prometheus.Counter        // runs{outcome="current"}, counted on every connect of a current tenant
	current *lru.Cache[string, int64] // tenant -> version it is known to be at

	state atomic.Pointer[catchupState]

	base   context.Context // ends on close: runs stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // background runs

	mu struct {
		sync.Mutex
		target     int64     // fleet's target version; guarded by mu
		targetAt   time.Time // when target was read; guarded by mu
		refreshing bool      // a caller reads the target; guarded by mu
		flights    map[string]*catchupFlight
	}
}

// catchupState is what a reload swaps: the mode and the migrator with the
// loaded files.
type catchupState struct {
	mode string
	ms   MigrationSettings
	m    *migrate.Migrator // nil when mode is off
	last int64             // last loaded file's version
}

// catchupFlight is one tenant's run; done closes when res and err are set,
// behind when the run starts applying.
type catchupFlight struct {
	done, behind chan struct{}
	behindOnce   sync.Once
	to           int64
	res          migrate.Result
	err          error
}

var _ proxy.Resolver = (*catchup)(nil)

func newCatchup(ctx context.Context, ms MigrationSettings, res *resolver.Resolver, cat *catalog.Catalog,
	connect func(context.Context, string, provision.Endpoint) (*pgx.Conn, error), reg prometheus.Registerer, log *slog.Logger,
) (*catchup, error) {
	current, err := lru.New[string, int64](catchupCurrentMax)
	if err != nil {
		return nil, err
	}
	c := &catchup{
		res: res, cat: cat, connect: connect, log: log, current: current,
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtenant_migrate_catchups_total",
			Help: "Catch-up of tenants behind the fleet's schema version on connect (migrations.on_connect), by outcome: current (known current, no catalog query), checked, migrated, failed (runs), refused (connects told to retry).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{catchupCurrent, catchupChecked, catchupMigrated, catchupFailed, catchupRefused} {
		c.runs.WithLabelValues(o)
	}
	reg.MustRegister(c.runs)
	c.known = c.runs.WithLabelValues(catchupCurrent)
	c.mu.flights = map[string]*catchupFlight{}
	c.base, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	st, err := c.load(ctx, ms)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.state.Store(st)
	if st.m != nil {
		if err := c.readTarget(ctx); err != nil {
			c.cancel()
			return nil, fmt.Errorf("migrations.on_connect: %w", err)
		}
	}
	return c, nil
}

// load reads the migration files of ms.Dir, when ms.OnConnect is on, and
// checks them against the registered ones.
func (c *catchup) load(ctx context.Context, ms MigrationSettings) (*catchupState, error) {
	st := &catchupState{mode: ms.onConnect(), ms: ms}
	if st.mode == OnConnectOff {
		return st, nil
	}
	files, err := migrate.Load(ms.Dir)
	if err != nil {
		return nil, fmt.Errorf("migrations.dir: %w", err)
	}
	if _, err := c.cat.CheckMigrations(ctx, migrateRegistrable(files)); err != nil {
		return nil, fmt.Errorf("migrations.dir %s: %w", ms.Dir, err)
	}
	st.last = files[len(files)-1].Version
	st.m = migrate.New(migrate.Config{
		Catalog:          c.cat,
		Files:            files,
		ConnectTenant:    c.connect,
		LockTimeout:      ms.LockTimeout,
		StatementTimeout: ms.StatementTimeout,
		Log:              c.log,
	})
	return st, nil
}

func migrateRegistrable(files []migrate.Migration) []catalog.Migration {
	out := make([]catalog.Migration, len(files))
	for i, f := range files {
		out[i] = catalog.Migration{Version: f.Version, File: f.File, Checksum: f.Checksum}
	}
	return out
}

// reload applies a reloaded migrations section: the files are read and
// checked again. On error the running state stays.
func (c *catchup) reload(ctx context.Context, ms MigrationSettings) error {
	st, err := c.load(ctx, ms)
	if err != nil {
		return err
	}
	c.state.Store(st)
	if st.m != nil {
		return c.readTarget(ctx)
	}
	return nil
}

// Resolve resolves tenant and, with on_connect on, brings it to the fleet's
// target version first (migrate) or refuses the client while it is brought
// there (refuse). Safe for concurrent use.
func (c *catchup) Resolve(ctx context.Context, tenant string) (resolver.Route, error) {
	rt, err := c.res.Resolve(ctx, tenant)
	st := c.state.Load()
	if err != nil || st.mode == OnConnectOff {
		return rt, err
	}
	target := c.target(ctx, st)
	if target == 0 {
		return rt, nil // nothing registered
	}
	if v, ok := c.current.Get(tenant); ok && v >= target {
		c.known.Inc()
		return rt, nil
	}
	f := c.start(st, tenant, target)
	behind := f.behind
	if st.mode != OnConnectRefuse {
		behind = nil // migrate: wait for the run
	}
	refuse := func() (resolver.Route, error) {
		c.runs.WithLabelValues(catchupRefused).Inc()
		return rt, &proxy.ClientError{Code: "57P03",
			Msg:  fmt.Sprintf("tenant %s is being migrated to schema version %d; retry in a moment", tenant, f.to),
			Hint: "The router brings tenants behind the fleet's schema version up to date on their first connect (migrations.on_connect: refuse)."}
	}
	select {
	case <-f.done:
		if behind != nil && f.res.Applied > 0 {
			// Refused whether or not the run beat this select: a client
			// of a tenant found behind is told to retry, always.
			return refuse()
		}
	case <-behind:
		return refuse()
	case <-ctx.Done():
		return rt, &proxy.ClientError{Code: "57P03",
			Msg:  fmt.Sprintf("tenant %s is being migrated to schema version %d; retry in a moment", tenant, f.to),
			Hint: "The migration is still running.", Err: ctx.Err()}
	}
	if f.err != nil {
		return rt, &proxy.ClientError{Code: "57P03",
			Msg:  fmt.Sprintf("tenant %s could not be migrated to schema version %d", tenant, f.to),
			Hint: "Its schema is behind the fleet's; an operator can see why with `pgtenant migrate status`. Retry later.", Err: f.err}
	}
	return rt, nil
}

// Invalidate forgets tenant's cached route.
func (c *catchup) Invalidate(tenant string) { c.res.Invalidate(tenant) }

// start returns tenant's run, starting one unless one is under way.
func (c *catchup) start(st *catchupState, tenant string, to int64) *catchupFlight {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.mu.flights[tenant]; f != nil {
		return f
	}
	f := &catchupFlight{done: make(chan struct{}), behind: make(chan struct{}), to: to}
	c.mu.flights[tenant] = f
	c.wg.Go(func() { c.run(st, tenant, f) })
	return f
}

// run migrates tenant in the background: a client that gives up does not
// stop it, the router's close does.
func (c *catchup) run(st *catchupState, tenant string, f *catchupFlight) {
	ctx, cancel := context.WithTimeout(c.base, catchupTimeout)
	defer cancel()
	f.res, f.err = st.m.CatchUp(ctx, tenant, func(int64, int64) { f.behindOnce.Do(func() { close(f.behind) }) })
	switch {
	case f.err != nil:
		c.runs.WithLabelValues(catchupFailed).Inc()
		if !errors.Is(f.err, context.Canceled) {
			c.log.Warn("migrations.on_connect: tenant not migrated", "tenant", tenant, "version", f.res.To, "err", f.err)
		}
	case f.res.Applied > 0:
		c.runs.WithLabelValues(catchupMigrated).Inc()
		c.log.Info("migrations.on_connect: tenant migrated", "tenant", tenant, "from", f.res.From, "to", f.res.To)
	default:
		c.runs.WithLabelValues(catchupChecked).Inc()
	}
	if f.err == nil {
		c.current.Add(tenant, f.res.To)
	}
	c.mu.Lock()
	delete(c.mu.flights, tenant)
	c.mu.Unlock()
	close(f.done)
}

// target is the fleet's target version, read again from the catalog when
// older than catchupTargetEvery, by one caller while the others use the
// last one.
func (c *catchup) target(ctx context.Context, st *catchupState) int64 {
	c.mu.Lock()
	t := c.mu.target
	stale := !c.mu.refreshing && time.Since(c.mu.targetAt) >= catchupTargetEvery
	if stale {
		c.mu.refreshing = true
	}
	c.mu.Unlock()
	if !stale {
		return t
	}
	if err := c.readTarget(ctx); err != nil {
		c.log.Warn("migrations.on_connect: cannot read the fleet's schema version from the catalog; using the last one", "version", t, "err", err)
	}
	c.mu.Lock()
	c.mu.refreshing = false
	t = c.mu.target
	c.mu.Unlock()
	if t > st.last {
		// Registered by a `pgtenant migrate up` with files this router
		// has not loaded: read the directory again.
		if err := c.reload(ctx, st.ms); err != nil {
			c.log.Warn("migrations.on_connect: the fleet's schema version is past the loaded files, and reading migrations.dir again failed", "version", t, "err", err)
		}
	}
	return t
}

func (c *catchup) readTarget(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reg, err := c.cat.Migrations(rctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.targetAt = time.Now() // also on error: retried in catchupTargetEvery, not per connect
	if err != nil {
		return err
	}
	c.mu.target = 0
	if len(reg) > 0 {
		c.mu.target = reg[len(reg)-1].Version
	}
	return nil
}

// close stops the runs under way and waits for them.
func (c *catchup) close() {
	c.cancel()
	c.wg.Wait()
}
