package router

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/provision/static"
	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// Upstream is how a router reaches a provider's upstreams: the provider
// that creates tenants, how the proxy logs in to them and, for the local
// provider, the database the catalog lives in by default.
type Upstream struct {
	Provider provision.Provider
	Proxy    proxy.UpstreamConfig
	// Dial, when not nil, replaces the proxy's upstream dialer
	// (upstream.dial_override, a fake's compute proxy).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// CatalogDSN is the catalog's database when catalog.dsn is empty.
	CatalogDSN string
	// Close releases what the provider holds; the router calls it last.
	Close func()
	// Also are the providers of provider.also, which tenants can be placed
	// on (providers.go), each with its own upstream settings. Provider is
	// the default.
	Also []ProviderUpstream
}

// NeonPoolerParams are the startup parameters Neon's pooler (PgBouncer)
// tracks; it refuses any other (docs/neon-api.md §8.2).
var NeonPoolerParams = []string{"client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"}

// BuildUpstream makes the providers cfg names (provider.kind, the default,
// and provider.also) and the upstream settings that go with each. ensureTemplate (for serving) creates the local provider's
// template database when it is missing and keeps its spare databases
// filled until Close.
func BuildUpstream(ctx context.Context, cfg Config, log *slog.Logger, ensureTemplate bool) (*Upstream, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	choice, err := cfg.UpstreamTLS() // upstreamtls.go
	if err != nil {
		return nil, err
	}
	up := proxy.UpstreamConfig{TLS: choice.Mode, EndpointOption: cfg.Upstream.EndpointOption, ForwardParams: cfg.Upstream.ForwardParams}
	if cfg.Upstream.CAFile != "" {
		pem, err := os.ReadFile(cfg.Upstream.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.ca_file: %w", err)
		}
		up.RootCAs = x509.NewCertPool()
		if !up.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.ca_file %s: no PEM certificates in it", cfg.Upstream.CAFile)
		}
	}
	u := &Upstream{Proxy: up, Close: func() {}}
	if o := cfg.Upstream.DialOverride; o != "" {
		d := cfg.KeepAliveConfig().Dialer()
		u.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) { return d.DialContext(ctx, network, o) }
	}

	one, err := buildProvider(ctx, cfg, cfg.Provider.Kind, log, ensureTemplate)
	if err != nil {
		return nil, err
	}
	u.Provider, u.CatalogDSN, u.Close = one.provider, one.catalogDSN, one.close
	if cfg.Provider.Kind == "neon" && u.Proxy.ForwardParams == nil {
		u.Proxy.ForwardParams = NeonPoolerParams
	}
	if u.Proxy.RootCAs, err = cfg.rdsRoots(cfg.Provider.Kind, u.Proxy.RootCAs); err != nil { // aws.go
		u.Close()
		return nil, err
	}
	if err := buildAlso(ctx, cfg, log, ensureTemplate, u); err != nil { // providers.go
		u.Close()
		return nil, err
	}
	return u, nil
}

// builtProvider is a provider buildProvider made, and what goes with it.
type builtProvider struct {
	provider   provision.Provider
	catalogDSN string // the local provider's admin DSN; "" for the others
	close      func()
}

// buildProvider makes the provider kind names from its section of cfg.
func buildProvider(ctx context.Context, cfg Config, kind string, log *slog.Logger, ensureTemplate bool) (builtProvider, error) {
	switch kind {
	case "neon":
		nc, err := cfg.NeonConfig()
		if err != nil {
			return builtProvider{}, err
		}
		nc.Log = log
		p, err := neon.New(nc)
		if err != nil {
			return builtProvider{}, err
		}
		return builtProvider{provider: p, close: p.CloseIdleConnections}, nil
	case static.Name:
		p, err := static.New(cfg.StaticConfig())
		if err != nil {
			return builtProvider{}, fmt.Errorf("provider.static: %w", err)
		}
		return builtProvider{provider: p, close: func() {}}, nil
	case "supabase":
		sc := cfg.SupabaseConfig() // supabase.go
		sc.Log = log
		p, err := supabase.New(sc)
		if err != nil {
			return builtProvider{}, fmt.Errorf("provider.supabase: %w", err)
		}
		return builtProvider{provider: p, close: p.CloseIdleConnections}, nil
	case "aurora", "rds":
		return buildRDS(ctx, cfg, rds.Kind(kind), log) // aws.go
	case "local":
	default:
		return builtProvider{}, fmt.Errorf("provider %q is not supported (supported: %v)", kind, knownProviders)
	}

	lc := cfg.Provider.Local
	// Always set, so that Delete also finds tenants named under the other
	// scheme after provider.local.naming changed.
	namingKey, err := cfg.NamingKey() // naming.go
	if err != nil {
		return builtProvider{}, err
	}
	lcfg := local.Config{
		Host:      lc.Host,
		Port:      lc.Port,
		Template:  lc.Template,
		Prefix:    lc.Prefix,
		Naming:    lc.Naming,
		NamingKey: namingKey,
		Strategy:  lc.Strategy,
		Spares:    lc.Spares,
	}
	if err := lcfg.Validate(); err != nil {
		return builtProvider{}, fmt.Errorf("provider.local: %w", err)
	}
	admin, err := OpenPool(ctx, "provider.local.admin_dsn", lc.AdminDSN, lc.MaxConns)
	if err != nil {
		return builtProvider{}, err
	}
	prov := local.New(lcfg, admin)
	b := builtProvider{provider: prov, catalogDSN: lc.AdminDSN, close: admin.Close}
	if !ensureTemplate {
		return b, nil
	}
	var setupSQL string
	if lc.TemplateSQL != "" {
		sql, err := os.ReadFile(lc.TemplateSQL)
		if err != nil {
			admin.Close()
			return builtProvider{}, fmt.Errorf("template SQL: %w", err)
		}
		setupSQL = string(sql)
	}
	created, err := prov.EnsureTemplate(ctx, setupSQL)
	if err != nil {
		admin.Close()
		return builtProvider{}, err
	}
	switch {
	case created:
		log.Info("template database created", "template", lc.Template)
	case setupSQL != "":
		log.Warn("template database exists: template SQL NOT applied (it runs once, when the template is created); to change the schema of the template and existing tenants, use migration files: pgtenant dev --migrations DIR, or pgtenant migrate up (README: Evolving the schema)",
			"template", lc.Template, "template_sql", lc.TemplateSQL)
	}
	if lc.Spares > 0 {
		// Spare databases are kept ready while the router runs.
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); prov.RunSpares(sctx, log) }()
		b.close = func() { cancel(); <-done; admin.Close() }
	}
	return b, nil
}

// Options are what New takes besides the Config.
type Options struct {
	// Log is the router's logger. Nil discards.
	Log *slog.Logger
	// Level, when not nil, is Log's level; Reload sets it from log.level.
	Level *slog.LevelVar
	// Version labels the pgtenant_build_info metric.
	Version string
	// Upstream, when not nil, replaces the provider the Config describes
	// (dev's fake Neon, a test's counting provider). The router calls its
	// Close when it stops.
	Upstream *Upstream
	// ProxyHook and AdminHook, when set, adjust the proxy's and the admin
	// API's configuration after they are mapped from the Config: for
	// settings the file has no key for (embedding, tests).
	ProxyHook func(*proxy.Config)
	AdminHook func(*adminapi.Config)
}

// Router is a running router: the proxy on its listener, the resolver and
// catalog behind it, the provider, and the production surface (admin
// listener, block list, reload). New starts it listening; Serve serves
// until its context ends and then releases everything.
type Router struct {
	log      *slog.Logger
	level    *slog.LevelVar
	upstream *Upstream
	catPool  *pgxpool.Pool
	cat      *catalog.Catalog
	res      *resolver.Resolver
	catchup  *catchup // the proxy's resolver: res, plus migrations.on_connect (catchup.go)
	srv      *proxy.Server
	pool     *pool.Manager    // the Manager New made (pool.mode not off); closed after the drain
	poolCfg  proxy.PoolConfig // the proxy's, after ProxyHook
	reg      *prometheus.Registry
	ln       net.Listener
	blocks   *blockList
	modes    *tenantPoolModes
	creds    *tenantCredentials // tenants' own secrets (credentials.go)
	surface  *surface
	cluster  *cluster // nil: cluster off (cluster.go)

	mu  sync.Mutex
	cur Config // the configuration in force (Reload); guarded by mu

	closeOnce sync.Once
}

// New assembles a router from cfg and starts listening on cfg.Listen (and
// on admin.listen when set); nothing is served until Serve. cfg should
// have passed Validate; New checks again what it must. On error, whatever
// New opened is closed again.
func New(ctx context.Context, cfg Config, opts Options) (_ *Router, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	r := &Router{log: opts.Log, level: opts.Level, cur: cfg}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	key, err := catalog.ParseKey(cfg.Catalog.Key)
	if err != nil {
		return nil, fmt.Errorf("catalog.key (%s): %w", EnvCatalogKey, err)
	}
	if choice, err := cfg.UpstreamTLS(); err == nil && choice.Plaintext() {
		// Only where the upstream is; the choice carries no secret.
		where := choice.Upstream
		if where == "" {
			where = cfg.Provider.Kind + " endpoints"
		}
		r.log.Warn("upstream TLS is off toward a non-loopback upstream: tenants' queries and results cross the network in plaintext; set upstream.tls to require or verify-full",
			"upstream", where, "upstream.tls", cfg.Upstream.TLS)
	}
	r.upstream = opts.Upstream
	if r.upstream == nil {
		if r.upstream, err = BuildUpstream(ctx, cfg, r.log, true); err != nil {
			return nil, err
		}
	}
	catDSN := cfg.Catalog.DSN
	if catDSN == "" {
		catDSN = r.upstream.CatalogDSN
	}
	if r.catPool, err = OpenPool(ctx, "catalog.dsn", catDSN, cfg.Catalog.MaxConns); err != nil {
		return nil, err
	}
	if r.cat, err = OpenCatalog(ctx, r.catPool, key); err != nil {
		return nil, err
	}
	r.cat.SetCreateLimits(cfg.CreateLimits()) // tenants.go
	r.upstream.attachCatalog(r.cat)           // static routes registered through the admin API (providers.go)

	r.reg = NewRegistry(opts.Version)
	// Registered (a duplicate instance_id refused) before any cancel key
	// is handed out.
	if r.cluster, err = startCluster(ctx, cfg, r.cat, r.reg, r.log); err != nil {
		return nil, err
	}
	r.res = resolver.New(resolver.Config{
		Metrics:     resolver.NewMetrics(r.reg),
		CacheSize:   cfg.Cache.Size,
		TTL:         cfg.Cache.TTL,
		NegativeTTL: cfg.Cache.NegativeTTL,
		FillTimeout: cfg.Cache.FillTimeout,
		Log:         r.log,

		MaxConcurrentCreates: cfg.Limits.MaxConcurrentCreates,
		Create:               cfg.CreateMode(),          // tenants.go
		Providers:            r.upstream.provisioners(), // providers.go
		// Slow providers (provision.Estimator) create in the background.
		CreateWait:   cfg.Tenant.CreateWait,
		CreateBudget: cfg.Tenant.CreateBudget,
		CreateLease:  cfg.Tenant.CreateLease,
	}, r.cat, r.upstream.Provider)

	// Files checked against the catalog before the router serves anyone.
	if r.catchup, err = newCatchup(ctx, cfg.Migrations, r.res, r.cat, r.upstream.MigrateConnect(), r.reg, r.log); err != nil {
		return nil, err
	}

	pcfg, err := cfg.ProxyConfig()
	if err != nil {
		return nil, err
	}
	pcfg.Log = r.log
	pcfg.Metrics = proxy.NewMetrics(r.reg)
	pcfg.Upstream = r.upstream.Proxy
	pcfg.Upstreams = r.upstream.proxyUpstreams() // nil with one provider (providers.go)
	pcfg.DialUpstream = r.upstream.Dial
	if r.cluster != nil {
		pcfg.Forward = r.cluster.forwarding()
		pcfg.InstanceID = r.cluster.ID() // instance_id auto: the ID claimed at registration
	}
	pm := newPoolMetrics() // pool.go
	if cfg.Pool.On() {
		r.pool = pool.New(cfg.Pool.ManagerConfig(pm.observeWait))
		pcfg.Pool = cfg.Pool.ProxyConfig(r.pool)
	}
	if opts.ProxyHook != nil {
		opts.ProxyHook(&pcfg)
	}
	// The metrics follow the Manager in force, the hook's too (whose wait
	// histogram then stays empty unless it feeds it).
	r.poolCfg = pcfg.Pool
	if pm.mgr = pcfg.Pool.Manager; pm.mgr != nil {
		r.reg.MustRegister(pm)
	}
	// Where the kernel copies a listening socket's keepalives to the
	// sockets it accepts, the listener carries them (listen.go).
	pcfg.KeepAlive.SetByListener = listenerKeepAlive
	if r.srv, err = proxy.New(pcfg, r.catchup); err != nil {
		return nil, err
	}
	if r.cluster != nil {
		r.applyLimits()
		r.cluster.onChange(r.applyLimits) // the shares follow the live instances (limits.go)
	}
	if r.ln, err = listenClients(ctx, cfg, pcfg.KeepAlive.Config()); err != nil {
		return nil, err
	}
	// Block list, per-tenant pool modes, admin listener; stopped after Serve has drained, so
	// /readyz says 503 throughout.
	r.blocks = newBlockList(r.cat, r.srv, cfg.BlockedTenants)
	r.modes = &tenantPoolModes{store: r.cat, proxy: r.srv}
	r.creds = &tenantCredentials{on: cfg.Auth.PerTenant, log: r.log, store: r.cat, proxy: r.srv}
	if r.surface, err = r.startSurface(ctx, cfg, pcfg, opts.AdminHook); err != nil {
		return nil, err
	}
	r.log.Info("router listening", "addr", r.ln.Addr().String(), "auth", pcfg.Auth.String(), "provider", r.upstream.Provider.Name(), "also", len(r.upstream.Also),
		"pool", r.PoolMode())
	return r, nil
}

// applyLimits sets the proxy's limits from the configuration in force and,
// with a cluster, the live instances.
func (r *Router) applyLimits() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applyLimitsLocked()
}

func (r *Router) applyLimitsLocked() {
	if r.cluster == nil {
		r.srv.SetLimits(r.cur.ProxyLimits())
		return
	}
	r.srv.SetLimits(r.cur.clusterLimits(r.cluster.liveIDs(), r.cluster.ID()))
}

// InstanceID is the instance ID in the router's cancel keys: instance_id,
// or with instance_id auto the one claimed in the cluster's registry.
func (r *Router) InstanceID() uint8 {
	if r.cluster != nil {
		return r.cluster.ID()
	}
	return r.cur.InstanceID.fixed()
}

// Addr is the address the router listens on for clients.
func (r *Router) Addr() net.Addr { return r.ln.Addr() }

// AdminAddr is the admin listener's address, or nil when admin.listen is
// empty.
func (r *Router) AdminAddr() net.Addr {
	if r.surface.ln == nil {
		return nil
	}
	return r.surface.ln.Addr()
}

// Proxy, Resolver, Catalog, Provider and Registry are the router's parts,
// for callers that embed it (tests, dev).
func (r *Router) Proxy() *proxy.Server         { return r.srv }
func (r *Router) Resolver() *resolver.Resolver { return r.res }
func (r *Router) Catalog() *catalog.Catalog    { return r.cat }
func (r *Router) Provider() provision.Provider { return r.upstream.Provider }

// MigrateConfig is the migrate.Config of this router's provider and
// catalog (Upstream.MigrateConfig), for `pgtenant dev --migrations`.
func (r *Router) MigrateConfig(files []migrate.Migration, ms MigrationSettings, log *slog.Logger) migrate.Config {
	return r.upstream.MigrateConfig(r.cat, files, ms, log)
}
func (r *Router) Registry() *prometheus.Registry { return r.reg }

// Pool is the pool.Manager the proxy borrows server connections from, or
// nil when pooling is off.
func (r *Router) Pool() *pool.Manager { return r.poolCfg.Manager }

// PoolMode is the pool mode of clients that do not choose one: off,
// session or transaction.
func (r *Router) PoolMode() string { return poolModeName(r.poolCfg.Mode) }

// poolModeName is a proxy.PoolMode as pool.mode spells it.
func poolModeName(m proxy.PoolMode) string {
	if m == proxy.PoolOff {
		return PoolModeOff
	}
	return string(m)
}

// Serve serves clients until ctx ends, drains (see proxy.Server.Serve),
// then stops the admin listener and releases the server connection pool
// (pool.mode), the resolver, the catalog's pool and the provider. Call it
// once.
func (r *Router) Serve(ctx context.Context) error {
	defer r.close()
	r.surface.run(ctx, r)
	if r.cluster != nil {
		r.cluster.serve(r.srv)
	}
	return r.srv.Serve(ctx, r.ln)
}

// Close releases a router whose Serve was never called. After Serve it
// does nothing.
func (r *Router) Close() { r.close() }

func (r *Router) close() {
	r.closeOnce.Do(func() {
		if r.surface != nil {
			r.surface.stop()
		}
		if r.cluster != nil {
			r.cluster.stop() // after the drain: forwarded cancels reached its sessions until now
		}
		if r.ln != nil {
			_ = r.ln.Close() // Serve closed it already, unless it never ran
		}
		// After the drain: no client holds a server connection any more,
		// so Close closes them all.
		if r.pool != nil {
			r.pool.Close()
		}
		if r.catchup != nil {
			r.catchup.close() // its runs hold catalog sessions
		}
		if r.res != nil {
			r.res.Close()
		}
		if r.catPool != nil {
			r.catPool.Close()
		}
		if r.upstream != nil && r.upstream.Close != nil {
			r.upstream.Close()
		}
	})
}

// OpenCatalog opens the catalog and says what to do when the key is not
// the one the catalog was written with.
func OpenCatalog(ctx context.Context, pool *pgxpool.Pool, key []byte) (*catalog.Catalog, error) {
	cat, err := catalog.Open(ctx, pool, key)
	if errors.Is(err, catalog.ErrKeyMismatch) {
		return nil, fmt.Errorf("%w at %s: set %s to the key it was created with, or point catalog.dsn (%s) at another database",
			err, hostOf(pool.Config()), EnvCatalogKey, EnvCatalogDSN)
	}
	return cat, err
}

// OpenPool connects a pool and checks that it can reach the server, so that
// a wrong DSN fails at start with a clear message rather than at the first
// client; what names the setting in errors. Errors never contain the DSN's
// password (pgconn redacts it).
func OpenPool(ctx context.Context, what, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("%s: cannot connect to %s: %w", what, hostOf(cfg), err)
	}
	return pool, nil
}

func hostOf(cfg *pgxpool.Config) string {
	cc := cfg.ConnConfig
	return fmt.Sprintf("%s:%d/%s as %s", cc.Host, cc.Port, cc.Database, cc.User)
}
