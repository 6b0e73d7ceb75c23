package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant serve", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "YAML config file (every key: config.example.yaml)")
	listen := fs.String("listen", "", "address to listen on (overrides listen)")
	logFormat := fs.String("log-format", "", "log format, text or json (overrides log.format)")
	logLevel := fs.String("log-level", "", "log level: debug, info, warn, error (overrides log.level)")
	templateSQL := fs.String("template-sql", "", "SQL file run once in the template database when it is created (overrides provider.local.template_sql)")
	adminListen := fs.String("admin-listen", "", "address of the admin HTTP listener: /metrics, /healthz, /readyz and the /v1 API (overrides admin.listen)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pgtenant serve --config FILE [flags]\n\nSecrets come from the environment: %s, %s, %s, %s, %s.\nSIGHUP reloads the configuration (see config.example.yaml for what it applies).\n\n",
			envPassword, envAdminDSN, envCatalogDSN, envCatalogKey, envAdminToken)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	// load reads the file, the environment and the flags; SIGHUP calls it
	// again (reload.go).
	load := func() (fileConfig, error) {
		fc, err := loadConfig(*path)
		if err != nil {
			return fc, err
		}
		override(fs, "listen", &fc.Listen, *listen)
		override(fs, "log-format", &fc.Log.Format, *logFormat)
		override(fs, "log-level", &fc.Log.Level, *logLevel)
		override(fs, "template-sql", &fc.Provider.Local.TemplateSQL, *templateSQL)
		override(fs, "admin-listen", &fc.Admin.Listen, *adminListen)
		if err := fc.validate(); err != nil {
			return fc, fmt.Errorf("invalid configuration:\n%w", err)
		}
		return fc, nil
	}
	fc, err := load()
	if err != nil {
		return err
	}
	log, level, err := newLevelLogger(stderr, fc.Log.Format, fc.Log.Level)
	if err != nil {
		return err
	}
	fc.hup = &reloader{load: load, level: level}
	return runRouter(ctx, fc, log, func(addr net.Addr) {
		fmt.Fprintf(stdout, "pgtenant: routing tenants on %s\n", addr)
	}, nil)
}

// override sets *dst to v when the flag was given on the command line.
func override(fs *pflag.FlagSet, name string, dst *string, v string) {
	if fs.Changed(name) {
		*dst = v
	}
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log.level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// upstreamParts is how the router reaches a provider's upstreams.
type upstreamParts struct {
	prov     provision.Provider
	upstream proxy.UpstreamConfig
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	// catalogDSN is the catalog's database when catalog.dsn is empty.
	catalogDSN string
	close      func()
}

// neonPoolerParams are the startup parameters Neon's pooler (PgBouncer)
// tracks; it refuses any other (neon-api.md 8.2).
var neonPoolerParams = []string{"client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"}

// buildProvider makes the provider fc names and the upstream settings that
// go with it. ensureTemplate (for serving) creates the local provider's
// template database when it is missing.
func buildProvider(ctx context.Context, fc fileConfig, log *slog.Logger, ensureTemplate bool) (*upstreamParts, error) {
	up := proxy.UpstreamConfig{TLS: fc.Upstream.TLS, EndpointOption: fc.Upstream.EndpointOption, ForwardParams: fc.Upstream.ForwardParams}
	if fc.Upstream.CAFile != "" {
		pem, err := os.ReadFile(fc.Upstream.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.ca_file: %w", err)
		}
		up.RootCAs = x509.NewCertPool()
		if !up.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.ca_file %s: no PEM certificates in it", fc.Upstream.CAFile)
		}
	}
	parts := &upstreamParts{upstream: up, close: func() {}}
	if o := fc.Upstream.DialOverride; o != "" {
		d := fc.keepAlive().Dialer()
		parts.dial = func(ctx context.Context, network, _ string) (net.Conn, error) { return d.DialContext(ctx, network, o) }
	}

	switch fc.Provider.Kind {
	case "neon":
		nc, err := fc.neonConfig()
		if err != nil {
			return nil, err
		}
		nc.Log = log
		p, err := neon.New(nc)
		if err != nil {
			return nil, err
		}
		parts.prov = p
		parts.close = p.CloseIdleConnections
		if parts.upstream.TLS == "" {
			parts.upstream.TLS = proxy.TLSVerifyFull // Neon refuses plaintext
		}
		if parts.upstream.ForwardParams == nil {
			parts.upstream.ForwardParams = neonPoolerParams
		}
		return parts, nil
	}

	lc := fc.Provider.Local
	admin, err := openPool(ctx, "provider.local.admin_dsn", lc.AdminDSN, lc.MaxConns)
	if err != nil {
		return nil, err
	}
	prov := local.New(local.Config{
		Host:     lc.Host,
		Port:     lc.Port,
		Template: lc.Template,
		Prefix:   lc.Prefix,
		Strategy: lc.Strategy,
		Spares:   lc.Spares,
	}, admin)
	parts.prov, parts.catalogDSN, parts.close = prov, lc.AdminDSN, admin.Close
	if !ensureTemplate {
		return parts, nil
	}
	var setupSQL string
	if lc.TemplateSQL != "" {
		b, err := os.ReadFile(lc.TemplateSQL)
		if err != nil {
			admin.Close()
			return nil, fmt.Errorf("template SQL: %w", err)
		}
		setupSQL = string(b)
	}
	created, err := prov.EnsureTemplate(ctx, setupSQL)
	if err != nil {
		admin.Close()
		return nil, err
	}
	switch {
	case created:
		log.Info("template database created", "template", lc.Template)
	case setupSQL != "":
		log.Info("template database exists; template SQL not applied again (it runs once, when the template is created)",
			"template", lc.Template, "template_sql", lc.TemplateSQL)
	}
	if lc.Spares > 0 {
		// Spare databases are kept ready while the router runs.
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); prov.RunSpares(sctx, log) }()
		parts.close = func() { cancel(); <-done; admin.Close() }
	}
	return parts, nil
}

// runRouter wires the packages together from fc and serves until ctx ends.
// ready is called once the listener is up. parts, when not nil, replaces
// the provider fc describes (dev's fake Neon).
func runRouter(ctx context.Context, fc fileConfig, log *slog.Logger, ready func(net.Addr), parts *upstreamParts) error {
	key, err := catalog.ParseKey(fc.Catalog.Key)
	if err != nil {
		return fmt.Errorf("catalog.key (%s): %w", envCatalogKey, err)
	}
	if parts == nil {
		if parts, err = buildProvider(ctx, fc, log, true); err != nil {
			return err
		}
	}
	defer parts.close()
	catDSN := fc.Catalog.DSN
	if catDSN == "" {
		catDSN = parts.catalogDSN
	}
	catPool, err := openPool(ctx, "catalog.dsn", catDSN, fc.Catalog.MaxConns)
	if err != nil {
		return err
	}
	defer catPool.Close()
	cat, err := openCatalog(ctx, catPool, key)
	if err != nil {
		return err
	}

	reg := newRegistry() // surface.go
	res := resolver.New(resolver.Config{
		Metrics:     resolver.NewMetrics(reg),
		CacheSize:   fc.Cache.Size,
		TTL:         fc.Cache.TTL,
		NegativeTTL: fc.Cache.NegativeTTL,
		FillTimeout: fc.Cache.FillTimeout,
		Log:         log,

		MaxConcurrentCreates: fc.Limits.MaxConcurrentCreates,
	}, cat, parts.prov)
	defer res.Close()

	pcfg, err := fc.proxyConfig()
	if err != nil {
		return err
	}
	pcfg.Log = log
	pcfg.Metrics = proxy.NewMetrics(reg)
	pcfg.Upstream = parts.upstream
	pcfg.DialUpstream = parts.dial
	srv, err := proxy.New(pcfg, res)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fc.Listen)
	if err != nil {
		return err
	}
	// Block list, admin listener, SIGHUP (surface.go); stopped after Serve
	// has drained, so /readyz says 503 throughout.
	stopSurface, err := startSurface(ctx, fc, log, surfaceParts{reg: reg, cat: cat, ping: catPool, res: res, srv: srv, prov: parts.prov, pattern: pcfg.Tenant.Pattern})
	if err != nil {
		_ = ln.Close()
		return err
	}
	defer stopSurface()
	log.Info("router listening", "addr", ln.Addr().String(), "auth", pcfg.Auth.String(), "provider", parts.prov.Name())
	ready(ln.Addr())
	return srv.Serve(ctx, ln)
}

// openCatalog opens the catalog and says what to do when the key is not
// the one the catalog was written with.
func openCatalog(ctx context.Context, pool *pgxpool.Pool, key []byte) (*catalog.Catalog, error) {
	cat, err := catalog.Open(ctx, pool, key)
	if errors.Is(err, catalog.ErrKeyMismatch) {
		return nil, fmt.Errorf("%w at %s: set %s to the key it was created with, or point catalog.dsn (%s) at another database",
			err, hostOf(pool.Config()), envCatalogKey, envCatalogDSN)
	}
	return cat, err
}

// openPool connects a pool and checks that it can reach the server, so that
// a wrong DSN fails at start with a clear message rather than at the first
// client. Errors never contain the DSN's password (pgconn redacts it).
func openPool(ctx context.Context, what, dsn string, maxConns int32) (*pgxpool.Pool, error) {
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

func runGenkey(stdout io.Writer) error {
	fmt.Fprintln(stdout, catalog.NewKey())
	return nil
}

// quote puts s in single quotes for a shell if it needs them.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " '\"$`\\!&;|<>()*?[]{}~#") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
