package router

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
)

// migrationRunner runs the admin API's migrations (admin.Migrations): one
// up run at a time on this router, in the background, with the files of
// migrations.dir as they are when the run is asked for. Routers sharing the
// catalog may run at once: the catalog's per-database locks keep them from
// migrating one database twice.
type migrationRunner struct {
	log      *slog.Logger
	settings MigrationSettings
	upstream *Upstream
	cat      *catalog.Catalog // the router's, for status reads
	catDSN   string
	key      []byte
	ctx      context.Context // of the runs; ends when the router stops

	mu      sync.Mutex
	closed  bool
	running bool
	last    *adminapi.MigrationRun // guarded by mu while running
	wg      sync.WaitGroup
}

var _ adminapi.Migrations = (*migrationRunner)(nil)

// files loads migrations.dir; a router without one has nothing to run.
func (m *migrationRunner) files() ([]migrate.Migration, error) {
	if m.settings.Dir == "" {
		return nil, &adminapi.MigrationError{HTTPStatus: http.StatusConflict,
			Msg: "this router has no migration files: set migrations.dir in its configuration and restart it"}
	}
	files, err := migrate.Load(m.settings.Dir)
	if err != nil {
		return nil, &adminapi.MigrationError{HTTPStatus: http.StatusConflict, Msg: "migrations.dir: " + err.Error()}
	}
	return files, nil
}

// refused turns the catalog's refusal of edited files into a 409.
func refused(err error) error {
	if ce, ok := errors.AsType[*catalog.ChecksumError](err); ok {
		return &adminapi.MigrationError{HTTPStatus: http.StatusConflict, Msg: ce.Error()}
	}
	return err
}

// Start starts an up run in the background (admin.Migrations). Its
// catalog sessions (one per database in flight, holding its lock) come
// from a pool of its own, so that a large run does not starve the router's
// route lookups.
func (m *migrationRunner) Start(ctx context.Context, req adminapi.MigrationRequest) (adminapi.MigrationRun, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return adminapi.MigrationRun{}, &adminapi.MigrationError{HTTPStatus: http.StatusServiceUnavailable, Msg: "the router is shutting down"}
	case m.running:
		return adminapi.MigrationRun{}, adminapi.ErrMigrationRunning
	}
	files, err := m.files()
	if err != nil {
		return adminapi.MigrationRun{}, err
	}
	if last := files[len(files)-1].Version; req.To > last {
		return adminapi.MigrationRun{}, &adminapi.MigrationError{HTTPStatus: http.StatusBadRequest,
			Msg: fmt.Sprintf("to: %d: the migrations go from %d to %d", req.To, files[0].Version, last)}
	}
	ms := m.settings
	if req.Concurrency == nil {
		req.Concurrency = &ms.Concurrency
	}
	if req.Canary == nil {
		req.Canary = &ms.Canary
	}
	if req.MaxFailShare == nil {
		req.MaxFailShare = &ms.MaxFailShare
	}
	pool, err := OpenPool(ctx, "catalog.dsn", m.catDSN, int32(*req.Concurrency+2))
	if err != nil {
		return adminapi.MigrationRun{}, err
	}
	cat, err := OpenCatalog(ctx, pool, m.key)
	if err == nil {
		_, err = cat.CheckMigrations(ctx, catalogFiles(files))
	}
	if err != nil {
		pool.Close()
		return adminapi.MigrationRun{}, refused(err)
	}
	mig := migrate.New(m.upstream.MigrateConfig(cat, files, ms, m.log))
	run := &adminapi.MigrationRun{ID: strings.ToLower(rand.Text()[:12]), State: "running", StartedAt: time.Now().UTC(), Request: req}
	m.last, m.running = run, true
	o := migrate.UpOptions{To: req.To, Concurrency: *req.Concurrency, Canary: *req.Canary, Tenants: req.Tenants,
		MaxFailShare: *req.MaxFailShare, DryRun: req.DryRun, Progress: func(p migrate.Progress) {
			m.mu.Lock()
			run.Progress = adminapi.MigrationProgress{Done: p.Done, Failed: p.Failed, Total: p.Total}
			m.mu.Unlock()
		}}
	m.wg.Go(func() {
		defer pool.Close()
		rep, err := mig.Up(m.ctx, o)
		m.finish(run, rep, err)
	})
	return *run, nil
}

// finish records how run ended.
func (m *migrationRunner) finish(run *adminapi.MigrationRun, rep *migrate.Report, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running = false
	now := time.Now().UTC()
	run.FinishedAt = &now
	switch {
	case rep == nil:
		run.State, run.Error = "error", err.Error()
	case err == nil && rep.OK():
		run.State = "ok"
	default:
		run.State = "failed"
		if err != nil {
			run.Error = err.Error()
		}
	}
	if rep != nil {
		run.Report = adminapi.NewMigrationReport(rep)
		run.Progress = adminapi.MigrationProgress{Done: rep.Done, Failed: len(rep.Failed), Total: rep.Total}
	}
	m.log.Info("migration run finished", "run", run.ID, "state", run.State, "err", run.Error)
}

// Last returns the running run or the last finished (admin.Migrations).
func (m *migrationRunner) Last() (adminapi.MigrationRun, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last == nil {
		return adminapi.MigrationRun{}, false
	}
	return *m.last, true
}

// Status reads the fleet's state from the catalog (admin.Migrations),
// checking migrations.dir's files against it when there is one.
func (m *migrationRunner) Status(ctx context.Context) (*migrate.Status, error) {
	var files []migrate.Migration
	if m.settings.Dir != "" {
		var err error
		if files, err = m.files(); err != nil {
			return nil, err
		}
	}
	st, err := migrate.New(migrate.Config{Catalog: m.cat, Files: files}).Status(ctx)
	return st, refused(err)
}

// close refuses new runs and waits for the running one, which ends (to be
// resumed by the next run) once ctx has ended.
func (m *migrationRunner) close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.wg.Wait()
}

func catalogFiles(files []migrate.Migration) []catalog.Migration {
	out := make([]catalog.Migration, len(files))
	for i, f := range files {
		out[i] = catalog.Migration{Version: f.Version, File: f.File, Checksum: f.Checksum}
	}
	return out
}
