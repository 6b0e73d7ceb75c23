package migrate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
)

// Config configures a Migrator. Catalog is required; the rest may be zero.
type Config struct {
	// Catalog holds the registered migrations, the databases' states and
	// the per-database locks, and the tenants' routes.
	Catalog *catalog.Catalog
	// Files are the migration files, in version order (Load). Status works
	// without them; Up and EnsureTenant need them.
	Files []Migration
	// ConnectTenant opens a session in tenant's database as the tenant's
	// own role; ep is its catalog route (with password). A provider whose
	// routes go through a pooler points it at the direct endpoint here.
	// Nil means ConnectEndpoint(nil): plaintext to ep.
	ConnectTenant func(ctx context.Context, tenant string, ep provision.Endpoint) (*pgx.Conn, error)
	// Template, when set, is migrated before any tenant by Up, so that
	// tenants created afterwards are born at the target.
	Template *Template
	// Templates are further templates, migrated after Template and before
	// any tenant, in order (Neon branch mode: one template branch per
	// project).
	Templates []Template
	// LockTimeout and StatementTimeout are set on every migration session
	// (lock_timeout, statement_timeout). Zero: the server's setting.
	LockTimeout, StatementTimeout time.Duration
	// Log gets one line per database that failed. Nil: discarded.
	Log *slog.Logger
}

// Template is a database that new tenants are cloned from.
type Template struct {
	// Name identifies it in the catalog's migration state.
	Name string
	// Connect opens a session in it as the role that should own what the
	// migrations create (local: (*local.Provider).ConnectTemplate). The
	// session is closed as soon as the template is migrated.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Migrated, when set, is called once the template is at version (also
	// when nothing was applied), after its session is closed; local
	// records it so that spares cloned before are not handed out
	// ((*local.Provider).SetTemplateVersion). Its error fails the template.
	Migrated func(ctx context.Context, version int64) error
}

// ConnectEndpoint returns a Config.ConnectTenant that logs in to the route
// with the route's own credentials, over TLS configured by tlsFor(host), or
// in plaintext if tlsFor is nil or returns nil.
func ConnectEndpoint(tlsFor func(host string) *tls.Config) func(context.Context, string, provision.Endpoint) (*pgx.Conn, error) {
	return func(ctx context.Context, _ string, ep provision.Endpoint) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig("sslmode=disable")
		if err != nil {
			return nil, err
		}
		cfg.Host, cfg.Port, cfg.Database, cfg.User, cfg.Password = ep.Host, ep.Port, ep.Database, ep.User, ep.Password
		if tlsFor != nil {
			cfg.TLSConfig = tlsFor(ep.Host)
		}
		cfg.RuntimeParams["application_name"] = "pgtenant migrate"
		return pgx.ConnectConfig(ctx, cfg)
	}
}

// Migrator migrates tenant databases. It is safe for concurrent use, and
// several Migrators, in this process or others sharing the catalog, may run
// at once: each database is migrated by one at a time.
type Migrator struct {
	cfg Config
	log *slog.Logger
}

// New returns a Migrator. It does not connect anywhere.
func New(cfg Config) *Migrator {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTenant == nil {
		cfg.ConnectTenant = ConnectEndpoint(nil)
	}
	return &Migrator{cfg: cfg, log: log}
}

// ErrNoFiles is returned by Up and EnsureTenant of a Migrator without
// Config.Files.
var ErrNoFiles = errors.New("migrate: no migration files (set migrations.dir or --dir)")

// Result is what migrating one database did.
type Result struct {
	From, To int64 // its version before and after
	Applied  int   // migrations applied (DryRun: that would be)
}

// EnsureTenant brings tenant to the fleet's target version (the last
// registered migration; files not yet registered by Up are not applied),
// under its migration lock: if another runner is migrating it, EnsureTenant
// waits for it and then finds little or nothing to do. If the catalog
// already records tenant at the target it returns at once, without
// connecting to the tenant. It fails if the files do not match the
// registered ones (*catalog.ChecksumError for an edited one) and if the
// tenant is not in the catalog (wrapping provision.ErrTenantNotFound).
func (m *Migrator) EnsureTenant(ctx context.Context, tenant string) (Result, error) {
	return m.CatchUp(ctx, tenant, nil)
}

// CatchUp is EnsureTenant that also says, before applying anything, that
// tenant is behind: it calls behind (when not nil) with the tenant's version
// and the target once it holds the tenant's migration lock and has read its
// version table, and only if there is something to apply. The router's
// catch-up on connect uses it to refuse a client while the migration runs.
func (m *Migrator) CatchUp(ctx context.Context, tenant string, behind func(from, to int64)) (Result, error) {
	if len(m.cfg.Files) == 0 {
		return Result{}, ErrNoFiles
	}
	fresh, err := m.cfg.Catalog.CheckMigrations(ctx, registrable(m.cfg.Files))
	if err != nil {
		return Result{}, err
	}
	var target int64
	for _, f := range m.cfg.Files[:len(m.cfg.Files)-len(fresh)] {
		target = f.Version
	}
	if target == 0 {
		return Result{}, nil // nothing registered
	}
	return m.ensureTenant(ctx, tenant, target, false, behind)
}

func (m *Migrator) ensureTenant(ctx context.Context, tenant string, to int64, dry bool, behind func(from, to int64)) (Result, error) {
	st, ok, err := m.cfg.Catalog.MigrationState(ctx, catalog.MigrationTenant, tenant)
	if err != nil {
		return Result{}, err
	}
	if ok && st.Status == catalog.MigrationOK && st.Version >= to {
		return Result{From: st.Version, To: st.Version}, nil
	}
	connect := func(ctx context.Context) (*pgx.Conn, error) {
		ep, ok, err := m.cfg.Catalog.Lookup(ctx, tenant)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("tenant %q: %w", tenant, provision.ErrTenantNotFound)
		}
		return m.cfg.ConnectTenant(ctx, tenant, ep)
	}
	return m.migrate(ctx, catalog.MigrationTenant, tenant, connect, to, dry, behind)
}

// migrate brings one database to version to under its lock, recording its
// state in the catalog (unless dry, which only reads). behind, when not nil,
// is called before the first migration is applied.
func (m *Migrator) migrate(ctx context.Context, kind, name string, connect func(context.Context) (*pgx.Conn, error), to int64, dry bool, behind func(from, to int64)) (res Result, err error) {
	lock, err := m.cfg.Catalog.LockMigration(ctx, kind, name)
	if err != nil {
		return Result{}, err
	}
	defer lock.Unlock(ctx)
	record := func(st catalog.MigrationState) {
		if dry {
			return
		}
		// Also when ctx is done: the state must say how it ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := lock.SetState(rctx, st); rerr != nil && err == nil {
			err = rerr
		}
	}
	fail := func(v int64, e error) (Result, error) {
		record(catalog.MigrationState{Version: v, Status: catalog.MigrationFailed, Error: e.Error()})
		return res, e
	}

	conn, err := connect(ctx)
	if err != nil {
		st, ok, _ := m.cfg.Catalog.MigrationState(ctx, kind, name)
		if ok {
			res.From, res.To = st.Version, st.Version
		}
		return fail(res.From, fmt.Errorf("connect: %w", err))
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	s := &session{conn: conn, files: m.cfg.Files}
	applied, err := s.readApplied(ctx)
	if err != nil {
		return fail(0, err)
	}
	res.From = version(s.files, applied)
	res.To = res.From
	if err := s.check(ctx, applied); err != nil {
		return fail(res.From, err)
	}
	todo := plan(s.files, applied, to)
	if dry {
		res.Applied = len(todo)
		return res, nil
	}
	if len(todo) == 0 {
		record(catalog.MigrationState{Version: res.From, Status: catalog.MigrationOK})
		return res, err
	}
	record(catalog.MigrationState{Version: res.From, Status: catalog.MigrationRunning})
	if behind != nil {
		behind(res.From, to)
	}
	if err := setTimeouts(ctx, conn, m.cfg.LockTimeout, m.cfg.StatementTimeout); err != nil {
		return fail(res.From, err)
	}
	if _, err := conn.Exec(ctx, versionTableDDL); err != nil {
		return fail(res.From, fmt.Errorf("create %s: %w", versionTable, err))
	}
	for _, f := range todo {
		ran, err := s.apply(ctx, f)
		if err != nil {
			return fail(res.To, err)
		}
		if ran {
			res.Applied++
		}
		applied[f.Version] = appliedRow{version: f.Version, state: rowDone}
		res.To = version(s.files, applied)
	}
	record(catalog.MigrationState{Version: res.To, Status: catalog.MigrationOK})
	return res, err
}

// UpOptions are the options of one Up run. The zero value migrates the
// template and every tenant to the last file, 4 at a time, with no canary
// wave, stopping at the first failure.
type UpOptions struct {
	// To is the version to migrate to; zero means the last file's.
	To int64
	// Concurrency is how many tenants are migrated at once. Zero or
	// negative means 4.
	Concurrency int
	// Canary is how many tenants (the first in ID order) form a first
	// wave, run to its end before the others start. Zero: no canary wave.
	Canary int
	// Tenants, when not empty, are the only tenants migrated, and the
	// template is left alone.
	Tenants []string
	// MaxFailShare stops a wave, and all later ones, as soon as more than
	// this share of its tenants failed: tenants already running finish,
	// the others are not started. Zero stops at the first failure.
	MaxFailShare float64
	// DryRun applies and records nothing: files are checked against the
	// catalog and each database's version table is read to count what
	// would be applied.
	DryRun bool
	// Progress, when set, is called after each database is done with the
	// counts so far; calls are serialised.
	Progress func(Progress)
}

func (o *UpOptions) concurrency() int {
	if o.Concurrency <= 0 {
		return 4
	}
	return o.Concurrency
}

// Progress is a snapshot of a running Up.
type Progress struct {
	Done   int // tenants finished at the target (or, dry, checked)
	Failed int // tenants that failed
	Total  int // tenants in the run
}

// Report is the outcome of Up.
type Report struct {
	Target   int64
	DryRun   bool
	Template *Result // the first template's; nil: not migrated (no template, or UpOptions.Tenants)
	// Templates are the results of every template migrated, in order
	// (Config.Template, then Config.Templates).
	Templates []Result
	Total     int // tenants in the run
	Done      int // tenants at the target (dry: checked)
	Applied   int // migrations applied over all databases (dry: to apply)
	Failed    []Failure
	NotRun    int    // tenants not started because a wave stopped or ctx ended
	Stopped   string // why the run stopped early; empty if it did not
}

// OK reports whether every tenant in the run is at the target.
func (r *Report) OK() bool { return len(r.Failed) == 0 && r.NotRun == 0 && r.Stopped == "" }

// Failure is one database that failed.
type Failure struct {
	Kind, Name string
	Version    int64 // where it stays
	Err        error
}

// Up registers the files in the catalog (unless DryRun) and migrates the
// template, then the canary wave, then the other tenants, as o says. Each
// database ends at a version it committed: a failed migration leaves it at
// the one before. Run it again to resume. The error is for what stops the
// run before any database is touched (the catalog, an edited file, To
// beyond the files) and for ctx ending; failures of single databases are in
// the Report.
func (m *Migrator) Up(ctx context.Context, o UpOptions) (*Report, error) {
	files := m.cfg.Files
	if len(files) == 0 {
		return nil, ErrNoFiles
	}
	rep := &Report{Target: files[len(files)-1].Version, DryRun: o.DryRun}
	if o.To != 0 {
		if o.To < 0 || o.To > rep.Target {
			return nil, fmt.Errorf("migrate: --to %d: the migrations go from %d to %d", o.To, files[0].Version, rep.Target)
		}
		rep.Target = o.To
	}
	var err error
	if o.DryRun {
		_, err = m.cfg.Catalog.CheckMigrations(ctx, registrable(files))
	} else {
		err = m.cfg.Catalog.RegisterMigrations(ctx, registrable(files))
	}
	if err != nil {
		return nil, err
	}

	tenants := o.Tenants
	if len(tenants) == 0 {
		for _, t := range m.templates() {
			res, err := m.migrate(ctx, catalog.MigrationTemplate, t.Name, t.Connect, rep.Target, o.DryRun, nil)
			if err == nil && t.Migrated != nil && !o.DryRun {
				if err = t.Migrated(ctx, res.To); err != nil {
					err = fmt.Errorf("record the template's version: %w", err)
				}
			}
			rep.Templates = append(rep.Templates, res)
			rep.Template = &rep.Templates[0]
			rep.Applied += res.Applied
			if err != nil {
				rep.Failed = append(rep.Failed, Failure{Kind: catalog.MigrationTemplate, Name: t.Name, Version: res.To, Err: err})
				rep.Stopped = "the template failed"
				m.log.Warn("migrate: template failed", "template", t.Name, "version", res.To, "err", err)
				return rep, ctx.Err()
			}
		}
		// Listed after the template is current: a tenant created from now
		// on is born at the target.
		if tenants, err = m.readyTenants(ctx); err != nil {
			return nil, err
		}
	}
	rep.Total = len(tenants)
	r := &run{m: m, o: &o, rep: rep}
	canary := min(max(o.Canary, 0), len(tenants))
	for _, wave := range [][]string{tenants[:canary], tenants[canary:]} {
		if rep.Stopped != "" || ctx.Err() != nil {
			rep.NotRun += len(wave)
			continue
		}
		r.wave(ctx, wave)
	}
	if ctx.Err() != nil && rep.Stopped == "" {
		rep.Stopped = "interrupted"
	}
	return rep, ctx.Err()
}

// templates are Config.Template and Config.Templates, in order.
func (m *Migrator) templates() []Template {
	var out []Template
	if m.cfg.Template != nil {
		out = append(out, *m.cfg.Template)
	}
	return append(out, m.cfg.Templates...)
}

func (m *Migrator) readyTenants(ctx context.Context) ([]string, error) {
	var out []string
	after := ""
	for {
		page, err := m.cfg.Catalog.List(ctx, after, 1000)
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			if e.State == "ready" {
				out = append(out, e.Tenant)
			}
		}
		if len(page) < 1000 {
			return out, nil
		}
		after = page[len(page)-1].Tenant
	}
}

// run is one Up's bookkeeping.
type run struct {
	m   *Migrator
	o   *UpOptions
	mu  sync.Mutex
	rep *Report // guarded by mu while a wave runs
}

// wave migrates tenants, o.concurrency() at a time, until they are done or
// more than o.MaxFailShare of them failed.
func (r *run) wave(ctx context.Context, tenants []string) {
	allowed := r.o.MaxFailShare * float64(len(tenants))
	failed := 0
	stop := false // guarded by r.mu
	sem := make(chan struct{}, r.o.concurrency())
	var wg sync.WaitGroup
	for i, tenant := range tenants {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		r.mu.Lock()
		halt := stop || ctx.Err() != nil
		if halt {
			r.rep.NotRun += len(tenants) - i
		}
		r.mu.Unlock()
		if halt {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			res, err := r.m.ensureTenant(ctx, tenant, r.rep.Target, r.o.DryRun, nil)
			r.mu.Lock()
			defer r.mu.Unlock()
			r.rep.Applied += res.Applied
			switch {
			case err != nil && ctx.Err() != nil:
				r.rep.NotRun++ // interrupted, not failed
			case err != nil:
				r.m.log.Warn("migrate: tenant failed", "tenant", tenant, "version", res.To, "err", err)
				r.rep.Failed = append(r.rep.Failed, Failure{Kind: catalog.MigrationTenant, Name: tenant, Version: res.To, Err: err})
				failed++
				if float64(failed) > allowed && !stop {
					stop = true
					r.rep.Stopped = fmt.Sprintf("%d of the wave's %d tenants failed (more than max fail share %g)", failed, len(tenants), r.o.MaxFailShare)
				}
			default:
				r.rep.Done++
			}
			if r.o.Progress != nil {
				r.o.Progress(Progress{Done: r.rep.Done, Failed: len(r.rep.Failed), Total: r.rep.Total})
			}
		})
	}
	wg.Wait()
}

// registrable is what the catalog records of files.
func registrable(files []Migration) []catalog.Migration {
	out := make([]catalog.Migration, len(files))
	for i, f := range files {
		out[i] = catalog.Migration{Version: f.Version, File: f.File, Checksum: f.Checksum}
	}
	return out
}
