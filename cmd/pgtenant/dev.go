package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/internal/localproc"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// devPassword is the app secret `pgtenant dev` uses unless told otherwise;
// it is printed at start, since dev listens on loopback only.
const devPassword = "pgtenant-dev"

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant dev", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", ".pgtenant/dev", "directory for the Postgres cluster, the catalog key and logs; reused across restarts")
	listen := fs.String("listen", "127.0.0.1:6432", "address the router listens on")
	password := fs.String("password", devPassword, "app secret clients log in with (or "+router.EnvPassword+")")
	templateSQL := fs.String("template-sql", "", "SQL file run once in the template database when it is created (later changes: --migrations)")
	migrations := fs.String("migrations", "", "directory of migration files NNNN_name.sql: applied at start to the template and every tenant, and to a tenant behind on its connect (migrations.on_connect migrate)")
	provider := fs.String("provider", "local", "local: a database per tenant on the local Postgres; neon-fake: a branch per tenant through an in-process fake of the Neon API (backed by the local Postgres, reached over TLS with SNI), with the real Neon client; supabase-fake: a Supabase project per tenant through an in-process fake of the Management API and pooler, with the real Supabase client; aurora-fake, rds-fake: a cluster or instance per tenant through an in-process fake of the RDS API (devaws.go), with the real AWS SDK")
	opDelay := fs.Duration("neon-op-delay", 200*time.Millisecond, "neon-fake: how long each simulated Neon operation (create_branch, start_compute) takes")
	sbDelay := fs.Duration("supabase-create-delay", 2*time.Second, "supabase-fake: how long a new project stays COMING_UP")
	awsDelay := fs.Duration("aws-create-delay", 3*time.Second, "aurora-fake, rds-fake: how long a simulated cluster or instance takes to become available (real ones: about 10-15 minutes)")
	pgPort := fs.Int("pg-port", 0, "port of the local Postgres (0: the one used last time, else a free one)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	// Session mode, not transaction: people try things in dev with psql,
	// and a SET or temporary table outside a transaction does not outlive
	// its statement in transaction mode. Session mode still shows the pool
	// at work: a client's server connection is reset and kept when it
	// leaves, and the next client gets it logged in.
	poolMode := fs.String("pool-mode", router.PoolModeSession, "connection pooling: off, session or transaction (transaction mode keeps no session state between transactions but the client's settings and protocol-level prepared statements)")
	adminListen := fs.String("admin-listen", devAdminListen, "address of the admin HTTP listener (/metrics, /healthz, /readyz, /v1 API; token in <data-dir>/admin.token); \"\": off. If the default is taken, a free port is used")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: pgtenant dev [flags]\n\nStarts a local Postgres (initdb on first run) and the router in front of it.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !fs.Changed("password") && os.Getenv(router.EnvPassword) != "" {
		*password = os.Getenv(router.EnvPassword)
	}
	if *password == "" {
		return errors.New("--password: the app secret must not be empty")
	}
	switch *poolMode {
	case router.PoolModeOff, router.PoolModeSession, router.PoolModeTransaction:
	default:
		return fmt.Errorf("--pool-mode %q: want off, session or transaction", *poolMode)
	}
	switch *provider {
	case "local", "neon-fake", "supabase-fake", "aurora-fake", "rds-fake":
	default:
		return fmt.Errorf("--provider %q: want local, neon-fake, supabase-fake, aurora-fake or rds-fake", *provider)
	}
	log, _, err := router.NewLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	// Fail before starting Postgres if the router's address is taken.
	if ln, err := net.Listen("tcp", *listen); err != nil {
		return fmt.Errorf("cannot listen on %s (is another pgtenant running?): %w; pick another address: %s", *listen, err, devListenHint(*listen, os.Getenv("MAKELEVEL") != ""))
	} else {
		_ = ln.Close()
	}
	adminAddr, err := devAdminAddr(*adminListen, fs.Changed("admin-listen")) // devadmin.go
	if err != nil {
		return err
	}

	fmt.Fprintf(stdout, "pgtenant dev: starting Postgres in %s ...\n", dir)
	cl, err := localproc.StartCluster(ctx, localproc.ClusterConfig{
		Dir:      dir,
		Port:     *pgPort,
		Settings: map[string]string{"max_connections": "300"},
		Log:      log,
	})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := cl.Stop(sctx); err != nil {
			log.Warn("stopping Postgres", "err", err)
		}
	}()

	if cl.MovedFrom() != 0 && *provider == "local" {
		if err := devMoveRoutes(ctx, cl, log); err != nil {
			return err
		}
	}

	key, err := devCatalogKey(filepath.Join(dir, "catalog.key"))
	if err != nil {
		return err
	}
	fc := router.DefaultConfig()
	fc.Listen = *listen
	fc.DrainTimeout = 0 // Ctrl-C in dev: end sessions (57P01) at once
	fc.Log.Format, fc.Log.Level = *logFormat, *logLevel
	fc.Auth.Password = *password
	fc.Provider.Local.AdminDSN = cl.AdminDSN("postgres")
	fc.Provider.Local.TemplateSQL = *templateSQL
	fc.Catalog.Key = key
	fc.Admin.Listen = adminAddr
	fc.Pool.Mode = *poolMode
	if *migrations != "" {
		if *provider != "local" {
			return fmt.Errorf("%w: --migrations works with --provider local only", errUsage)
		}
		fc.Migrations.Dir, fc.Migrations.OnConnect = *migrations, router.OnConnectMigrate
	}
	if fc.Admin.Token, err = devAdminToken(filepath.Join(dir, "admin.token")); err != nil {
		return err
	}
	// TLS with a local CA kept in dir; plaintext clients still work.
	if fc.TLS.CertFile, fc.TLS.KeyFile, err = devTLS(dir, *listen); err != nil {
		return err
	}
	fc.TLS.Mode = proxy.TLSModeAllow

	var parts *router.Upstream
	var fake devFake
	switch *provider {
	case "aurora-fake", "rds-fake":
		af, err := startAWSFake(ctx, cl, rds.Kind(strings.TrimSuffix(*provider, "-fake")), *awsDelay, log) // devaws.go
		if err != nil {
			return err
		}
		defer af.close()
		fake, parts = af, af.parts
	case "neon-fake":
		var sql string
		if *templateSQL != "" {
			b, err := os.ReadFile(*templateSQL)
			if err != nil {
				return fmt.Errorf("template SQL: %w", err)
			}
			sql = string(b)
		}
		nf, err := startNeonFake(ctx, cl, sql, *opDelay, log)
		if err != nil {
			return err
		}
		defer nf.close()
		fake, parts = nf, nf.parts
	}
	var sbFake *supabaseFake // devsupabase.go
	if *provider == "supabase-fake" {
		if sbFake, err = startSupabaseFake(ctx, cl, *sbDelay, log); err != nil {
			return err
		}
		defer sbFake.close()
		parts = sbFake.parts
	}

	// If Postgres dies, stop the router and say so.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-cl.Done():
			cancel()
		case <-rctx.Done():
		}
	}()

	r, err := router.New(rctx, fc, router.Options{Log: log, Version: version, Upstream: parts})
	if err == nil && *migrations != "" {
		if err = devMigrate(rctx, r, fc.Migrations, stdout, log); err != nil {
			r.Close()
		}
	}
	if err == nil {
		printDevBanner(stdout, cl, dir, r.Addr().String(), *password, fake, sbFake, adminAddr, fc.Admin.Token, fc.Pool)
		err = r.Serve(rctx)
	}
	select {
	case <-cl.Done():
		if ctx.Err() == nil {
			return fmt.Errorf("postgres exited unexpectedly (see %s): %v", filepath.Join(dir, "postgres.log"), cl.Err())
		}
	default:
	}
	if err == nil {
		if sbFake != nil {
			fmt.Fprintln(stdout, "pgtenant dev: stopped; the supabase-fake kept its projects in memory, so its tenants and their data are gone (the next run starts with none)")
		} else if fake != nil {
			fmt.Fprintf(stdout, "pgtenant dev: stopped; the %s kept its tenants in memory, so the tenants and their data are gone (the next run starts with none)\n", *provider)
		} else {
			fmt.Fprintln(stdout, "pgtenant dev: stopped; tenants and their data stay in", dir)
		}
	}
	return err
}

// devListenHint is how to run dev on another address than the taken
// listen: in make's ARGS form under make (MAKELEVEL is set in the
// environment of the commands make runs), else as a flag.
func devListenHint(listen string, underMake bool) string {
	next := "127.0.0.1:6433"
	if host, port, err := net.SplitHostPort(listen); err == nil {
		if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65535 {
			next = net.JoinHostPort(host, strconv.Itoa(p+1))
		}
	}
	if underMake {
		return fmt.Sprintf(`make dev ARGS="--listen %s"`, next)
	}
	return "--listen " + next
}

// selfName is the command the user ran pgtenant as (./bin/pgtenant, or
// pgtenant from PATH), for the commands dev prints to copy.
func selfName() string {
	if len(os.Args) == 0 || os.Args[0] == "" {
		return "pgtenant"
	}
	return quote(os.Args[0])
}

// devFake is an in-process fake provider API dev runs (neon-fake,
// aurora-fake, rds-fake; supabase-fake has its own parameter).
type devFake interface {
	banner(w io.Writer) // one line describing it
	what() string       // what a tenant gets, for the banner
	close()
}

func printDevBanner(w io.Writer, cl *localproc.Cluster, dir, addr, password string, fake devFake, sbFake *supabaseFake, adminAddr, adminToken string, pool router.PoolSettings) {
	var b strings.Builder
	fmt.Fprintf(&b, "\npgtenant dev is running.\n")
	fmt.Fprintf(&b, "  router    %s   (app secret: %s)\n", addr, password)
	fmt.Fprintf(&b, "  postgres  %s:%d   (data dir: %s; admin password in admin.password)\n", cl.Host(), cl.Port(), dir)
	if adminAddr != "" {
		fmt.Fprintf(&b, "  admin     http://%s   (/metrics, /readyz; /v1 API token: %s, kept in admin.token)\n", adminAddr, adminToken)
		fmt.Fprintf(&b, "            e.g. %s=%s %s tenants list --admin http://%s\n", router.EnvAdminToken, quote(adminToken), selfName(), adminAddr)
	}
	if pool.On() {
		fmt.Fprintf(&b, "  pool      %s mode, up to %d server connections per upstream (--pool-mode; a client picks its own with options='-c pgtenant.pool_mode=...')\n",
			pool.Mode, pool.MaxServerConnections)
		if adminAddr != "" {
			fmt.Fprintf(&b, "            e.g. %s=%s %s pools --admin http://%s\n", router.EnvAdminToken, quote(adminToken), selfName(), adminAddr)
		}
	} else {
		fmt.Fprintf(&b, "  pool      off: each client connection has an upstream connection of its own (--pool-mode)\n")
	}
	what := "database"
	if fake != nil {
		fake.banner(&b)
		what = fake.what()
	}
	if sbFake != nil {
		sbFake.banner(&b)
		what = "Supabase project (fake, in memory: gone when dev stops)"
	}
	fmt.Fprintf(&b, "\nConnect as a tenant; its %s is created on the first connect:\n\n", what)
	fmt.Fprintf(&b, "  psql %s\n\n", quote(fmt.Sprintf("postgres://tenant_42:%s@%s/app", password, addr)))
	fmt.Fprintf(&b, "Over TLS, checking the router's certificate against the dev CA (%s):\n\n", devCAPath(dir))
	fmt.Fprintf(&b, "  psql %s\n\n", quote(fmt.Sprintf("postgres://tenant_42:%s@%s/app?sslmode=verify-full&sslrootcert=%s", password, addr, uriValue(devCAPath(dir)))))
	fmt.Fprintf(&b, "Any tenant name of 1-48 lower-case letters, digits, '_' or '-' works. Ctrl-C stops everything.\n")
	fmt.Fprint(w, b.String())
}

// devCatalogKey reads the dev catalog key, creating it on first run. The key
// encrypts the tenants' passwords in the catalog; losing it orphans them.
func devCatalogKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	key := catalog.NewKey()
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write catalog key: %w", err)
	}
	return key, nil
}

// devMoveRoutes points the catalog's local routes at the cluster's new
// port: the cluster had to move (its recorded port was taken), and every
// stored route still names the old one.
func devMoveRoutes(ctx context.Context, cl *localproc.Cluster, log *slog.Logger) error {
	conn, err := pgx.Connect(ctx, cl.AdminDSN("postgres"))
	if err != nil {
		return fmt.Errorf("update the catalog's routes to port %d: %w", cl.Port(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	n, err := catalog.MoveRoutes(ctx, conn, "local", cl.MovedFrom(), cl.Port())
	if err != nil {
		return err
	}
	log.Warn("postgres moved to another port; stored routes updated", "from", cl.MovedFrom(), "to", cl.Port(), "routes", n)
	return nil
}

// devMigrate applies the migrations of ms.Dir to the template, then to every
// tenant, and prints a one-line summary.
func devMigrate(ctx context.Context, r *router.Router, ms router.MigrationSettings, stdout io.Writer, log *slog.Logger) error {
	files, err := migrate.Load(ms.Dir)
	if err != nil {
		return err
	}
	cfg := r.MigrateConfig(files, ms, log)
	rep, err := migrate.New(cfg).Up(ctx, migrate.UpOptions{Concurrency: ms.Concurrency})
	if err != nil {
		return fmt.Errorf("--migrations %s: %w", ms.Dir, err)
	}
	fmt.Fprintf(stdout, "pgtenant dev: migrations %s: target version %d; template and %d of %d tenants at it, %d migrations applied",
		ms.Dir, rep.Target, rep.Done, rep.Total, rep.Applied)
	if !rep.OK() {
		fmt.Fprintf(stdout, "; %d failed, %d not run (see the log; pgtenant migrate status)", len(rep.Failed), rep.NotRun)
	}
	fmt.Fprintln(stdout)
	return nil
}
