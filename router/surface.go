package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/proxy"
)

// EnvAdminToken carries the admin API's bearer token (admin.token).
const EnvAdminToken = "PGTENANT_ADMIN_TOKEN"

// NewRegistry is the Prometheus registry of one router process: the Go
// runtime, the process and a build-info gauge labelled with version; New
// adds the proxy's and resolver's metrics.
func NewRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgtenant_build_info", Help: "Always 1; the version label says which pgtenant runs.",
	}, []string{"version"})
	info.WithLabelValues(version).Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), info)
	return reg
}

// blockStore is where the shared block list is kept. *catalog.Catalog
// implements it.
type blockStore interface {
	Block(ctx context.Context, tenant string) error
	Unblock(ctx context.Context, tenant string) error
	BlockedList(ctx context.Context) ([]string, error)
}

// blockApplier is the proxy's side of the block list. *proxy.Server
// implements it.
type blockApplier interface {
	Sessions(tenant string) []proxy.SessionInfo
	SetBlocked(tenants []string)
}

// blockList owns the block list's rule: a router refuses the tenants of the
// store's list (shared by every instance, changed through the admin API)
// plus those of its file's blocked_tenants (this instance only; Reload
// replaces them), and nothing else. The proxy applies whatever refresh
// hands it last.
type blockList struct {
	store blockStore
	proxy blockApplier
	file  atomic.Pointer[[]string]
	mu    sync.Mutex // serialises refreshes, so an older list never lands last
}

func newBlockList(store blockStore, p blockApplier, file []string) *blockList {
	b := &blockList{store: store, proxy: p}
	b.setFile(file)
	return b
}

func (b *blockList) setFile(l []string) { l = slices.Clone(l); b.file.Store(&l) }

// Block stores the block and applies it here at once (admin.Blocks).
func (b *blockList) Block(ctx context.Context, tenant string) error {
	if err := b.store.Block(ctx, tenant); err != nil {
		return err
	}
	_, err := b.refresh(ctx)
	return err
}

// Unblock removes the stored block and applies that here at once.
func (b *blockList) Unblock(ctx context.Context, tenant string) error {
	if err := b.store.Unblock(ctx, tenant); err != nil {
		return err
	}
	_, err := b.refresh(ctx)
	return err
}

// refresh reads the store's list, adds the file's and hands the union to
// the proxy, which refuses those tenants' new connections and ends their
// live sessions. It returns how many live sessions of blocked tenants it
// found here (being ended). New calls it at start, the refresh loop
// periodically (so that a block made through another instance reaches this
// one), Reload and the admin API's block and unblock at once.
func (b *blockList) refresh(ctx context.Context) (ending int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	list, err := b.store.BlockedList(ctx)
	if err != nil {
		return 0, err
	}
	list = append(list, *b.file.Load()...)
	slices.Sort(list)
	list = slices.Compact(list)
	// Count before SetBlocked: the sessions it ends leave the registry at
	// once.
	for _, s := range b.proxy.Sessions("") {
		if _, ok := slices.BinarySearch(list, s.Tenant); ok {
			ending++
		}
	}
	b.proxy.SetBlocked(list)
	return ending, nil
}

// surface is the production surface around the proxy: the admin listener
// and the refresh loops of the block list, the per-tenant pool modes and
// the tenants' own secrets.
type surface struct {
	refresh      time.Duration // admin.blocked_refresh
	credsRefresh time.Duration // auth.per_tenant_refresh
	srv          *http.Server  // nil: no admin listener
	ln           net.Listener
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	ctx          context.Context  // of the loops; ends with stop
	migrations   *migrationRunner // POST /v1/migrations (migrationsapi.go); nil without admin listener
}

// startSurface applies the block list and the per-tenant pool modes and
// opens the admin listener (if admin.listen is set); run starts serving it
// and the refresh loops.
func (r *Router) startSurface(ctx context.Context, cfg Config, pcfg proxy.Config, hook func(*adminapi.Config)) (*surface, error) {
	bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err := r.blocks.refresh(bctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("block list: %w", err)
	}
	bctx, cancel = context.WithTimeout(ctx, 15*time.Second)
	err = r.modes.refresh(bctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("per-tenant pool modes: %w", err)
	}
	if r.creds.on {
		bctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		err = r.creds.refresh(bctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("tenants' own secrets: %w", err)
		}
	}
	s := &surface{refresh: cfg.Admin.BlockedRefresh, credsRefresh: cfg.Auth.PerTenantRefresh}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if cfg.Admin.Listen == "" {
		return s, nil
	}
	acfg := adminapi.Config{
		Token:       cfg.Admin.Token,
		Gatherer:    r.reg,
		Catalog:     r.cat,
		Blocks:      r.blocks,
		TenantModes: r.modes,
		Credentials: r.creds,
		Ping:        catalogPing{r.catPool},
		Resolver:    r.res,
		Router:      r.srv,
		Provider:    r.upstream.Provider,
		Providers:   r.upstream.deprovisioners(), // providers.go; nil with one provider
		Tenant:      pcfg.Tenant,
		PoolMode:    poolModeName(pcfg.Pool.Mode),
		Log:         r.log.With("component", "admin"),
	}
	if pcfg.Pool.Manager != nil {
		acfg.Pools = pcfg.Pool.Manager
	}
	pl := newPlacements(r.cat, r.res, r.upstream) // placement.go
	acfg.Placements, acfg.Routes = pl, pl
	key, err := catalog.ParseKey(cfg.Catalog.Key) // New checked it
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.migrations = &migrationRunner{log: r.log.With("component", "migrate"), settings: cfg.Migrations, upstream: r.upstream,
		cat: r.cat, catDSN: cmp.Or(cfg.Catalog.DSN, r.upstream.CatalogDSN), key: key, ctx: s.ctx}
	acfg.Migrations = s.migrations
	if hook != nil {
		hook(&acfg)
	}
	h, err := adminapi.New(acfg)
	if err != nil {
		s.cancel()
		return nil, err
	}
	if s.ln, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		s.cancel()
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	s.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
	}
	api := "on"
	if cfg.Admin.Token == "" {
		api = "off (no admin.token / " + EnvAdminToken + ")"
	}
	r.log.Info("admin listening", "addr", s.ln.Addr().String(), "api", api)
	return s, nil
}

// run serves the admin listener and runs the refresh loops until stop.
func (s *surface) run(ctx context.Context, r *Router) {
	if s.srv != nil {
		s.wg.Go(func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.log.Error("admin listener failed", "err", err)
			}
		})
	}
	s.wg.Go(func() {
		refreshLoop(s.ctx, s.refresh, r.log, "block list", func(ctx context.Context) error {
			_, err := r.blocks.refresh(ctx) // the proxy logs the sessions it ends
			return err
		})
	})
	s.wg.Go(func() { refreshLoop(s.ctx, s.refresh, r.log, "per-tenant pool modes", r.modes.refresh) })
	if r.creds.on {
		s.wg.Go(func() { refreshLoop(s.ctx, s.credsRefresh, r.log, "tenants' own secrets", r.creds.refresh) })
	}
}

// stop ends the loops and shuts the admin listener down; call it after the
// proxy's Serve has returned, so that /readyz answers 503 throughout the
// drain.
func (s *surface) stop() {
	s.cancel()
	if s.srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.srv.Shutdown(sctx); err != nil {
			_ = s.srv.Close()
		}
		cancel()
		_ = s.ln.Close() // Shutdown closes it only if Serve ran
	}
	if s.migrations != nil {
		s.migrations.close() // its run ended with s.ctx; the next one resumes it
	}
	s.wg.Wait()
}

// refreshLoop calls refresh every interval: the block list's and the
// per-tenant pool modes' (what), so that a change made through another
// router instance takes effect here within one interval. Failures are
// logged when they start and when they stop, not at every tick; the last
// state is kept meanwhile.
func refreshLoop(ctx context.Context, interval time.Duration, log *slog.Logger, what string, refresh func(context.Context) error) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, min(interval, 15*time.Second))
		err := refresh(rctx)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				log.Warn(what+" refresh failed; keeping the last one", "err", err)
			}
			failing = true
		case failing:
			log.Info(what + " refresh works again")
			failing = false
		}
	}
}

// catalogPing is /readyz's catalog check. A pool whose connections are all
// in use (a burst of first connects holds them while tenants are created)
// counts as reachable: pinging would queue behind that work and turn every
// router unready exactly when it is busiest.
type catalogPing struct{ pool *pgxpool.Pool }

func (p catalogPing) Ping(ctx context.Context) error {
	if st := p.pool.Stat(); st.AcquiredConns() > 0 && st.AcquiredConns() >= st.MaxConns() {
		return nil
	}
	return p.pool.Ping(ctx)
}
