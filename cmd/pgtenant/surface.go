package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// envAdminToken carries the admin API's bearer token (admin.token).
const envAdminToken = "PGTENANT_ADMIN_TOKEN"

// newRegistry is the Prometheus registry of one router process: the Go
// runtime, the process and a build-info gauge; runRouter adds the proxy's
// and resolver's metrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgtenant_build_info", Help: "Always 1; the version label says which pgtenant runs.",
	}, []string{"version"})
	info.WithLabelValues(version).Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), info)
	return reg
}

// surfaceParts is what the production surface (admin listener, block-list
// refresh, SIGHUP) works on.
type surfaceParts struct {
	reg     *prometheus.Registry
	cat     *catalog.Catalog
	ping    *pgxpool.Pool // the catalog's
	res     *resolver.Resolver
	srv     *proxy.Server
	prov    provision.Provider
	pattern *regexp.Regexp // tenant.pattern; nil: the default
	blocks  *blockList     // set by startSurface
}

// blockList is the block list a router applies: the catalog's, shared by
// every instance and changed through the admin API, plus the file's
// blocked_tenants (this instance only; SIGHUP reloads it).
type blockList struct {
	cat    *catalog.Catalog
	static atomic.Pointer[[]string]
}

func newBlockList(cat *catalog.Catalog, static []string) *blockList {
	b := &blockList{cat: cat}
	b.setStatic(static)
	return b
}

func (b *blockList) setStatic(l []string) { l = slices.Clone(l); b.static.Store(&l) }

// Block and Unblock change the catalog's list.
func (b *blockList) Block(ctx context.Context, tenant string) error { return b.cat.Block(ctx, tenant) }

func (b *blockList) Unblock(ctx context.Context, tenant string) error {
	return b.cat.Unblock(ctx, tenant)
}

// BlockedList is the union of both lists, sorted.
func (b *blockList) BlockedList(ctx context.Context) ([]string, error) {
	l, err := b.cat.BlockedList(ctx)
	if err != nil {
		return nil, err
	}
	l = append(l, *b.static.Load()...)
	slices.Sort(l)
	return slices.Compact(l), nil
}

// startSurface applies the block list, starts the admin listener (if
// admin.listen is set), the periodic block-list refresh and, for serve, the
// SIGHUP reload. stop ends them all; call it after the proxy's Serve has
// returned, so that /readyz answers 503 throughout the drain.
func startSurface(ctx context.Context, fc fileConfig, log *slog.Logger, p surfaceParts) (stop func(), err error) {
	p.blocks = newBlockList(p.cat, fc.BlockedTenants)
	bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = adminapi.RefreshBlocked(bctx, p.blocks, p.srv)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("block list: %w", err)
	}

	var srv *http.Server
	var ln net.Listener
	if fc.Admin.Listen != "" {
		h, err := adminapi.New(adminapi.Config{
			Token:         fc.Admin.Token,
			Gatherer:      p.reg,
			Catalog:       p.cat,
			Blocks:        p.blocks,
			Ping:          catalogPing{p.ping},
			Resolver:      p.res,
			Router:        p.srv,
			Provider:      p.prov,
			TenantPattern: p.pattern,
			Log:           log.With("component", "admin"),
		})
		if err != nil {
			return nil, err
		}
		if ln, err = net.Listen("tcp", fc.Admin.Listen); err != nil {
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		srv = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		api := "on"
		if fc.Admin.Token == "" {
			api = "off (no admin.token / " + envAdminToken + ")"
		}
		log.Info("admin listening", "addr", ln.Addr().String(), "api", api)
	}

	sctx, cancelLoops := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if srv != nil {
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener failed", "err", err)
			}
		})
	}
	wg.Go(func() { refreshBlockedLoop(sctx, fc.Admin.BlockedRefresh, log, p) })
	if fc.hup != nil {
		h := &hupHandler{cur: fc, rl: fc.hup, log: log, parts: p}
		loop := h.notifyHUP()
		wg.Go(func() { loop(sctx) })
	}
	return func() {
		cancelLoops()
		if srv != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := srv.Shutdown(sctx); err != nil {
				_ = srv.Close()
			}
			cancel()
		}
		wg.Wait()
	}, nil
}

// refreshBlockedLoop applies the shared block list every interval, so a
// tenant blocked through another router instance is refused here too (and
// its live sessions here ended) within one interval. Failures are logged
// when they start and when they stop, not at every tick.
func refreshBlockedLoop(ctx context.Context, interval time.Duration, log *slog.Logger, p surfaceParts) {
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
		_, err := adminapi.RefreshBlocked(rctx, p.blocks, p.srv) // the proxy logs the sessions it ends
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				log.Warn("block list refresh failed; keeping the last one", "err", err)
			}
			failing = true
			continue
		case failing:
			log.Info("block list refresh works again")
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
