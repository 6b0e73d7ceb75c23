package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Schema migrations of the tenant databases (package migrate runs them):
// pgtenant.migrations is the registered migration files, whose last version
// is the fleet's target, and pgtenant.migration_state is where each
// database (every tenant's, and each template's) stands. The state here is
// a report: each database's own version table is the truth, and a runner
// reconciles this table with it.
const migrationsDDL = `CREATE TABLE IF NOT EXISTS pgtenant.migrations (
	version       bigint PRIMARY KEY CHECK (version > 0),
	file          text NOT NULL,
	checksum      text NOT NULL, -- hex SHA-256 of the file
	registered_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgtenant.migration_state (
	kind       text NOT NULL CHECK (kind IN ('tenant', 'template')),
	name       text NOT NULL, -- tenant ID or template name
	version    bigint NOT NULL DEFAULT 0,
	status     text NOT NULL CHECK (status IN ('ok', 'failed', 'running')),
	error      text NOT NULL DEFAULT '',
	started_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (kind, name)
)`

// migrationsLock names the advisory lock held while registering migrations.
// Tenant locks are "pgtenant:<tenant>", migration locks "pgtenant/migrate:...".
const migrationsLock = "pgtenant/migrations"

// migrateMigrations creates the two tables in tx if they are missing, as
// migrateBlocked does pgtenant.blocked.
func migrateMigrations(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.migrations') IS NOT NULL
		AND to_regclass('pgtenant.migration_state') IS NOT NULL`).Scan(&exists)
	if err != nil || exists {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, migrationsDDL); err != nil {
		return fmt.Errorf("create pgtenant.migrations: %w", err)
	}
	return nil
}

// Migration is a registered migration file.
type Migration struct {
	Version  int64
	File     string // base name, e.g. "0002_add_orders.sql"
	Checksum string // hex SHA-256
}

// Kinds of database in MigrationState.
const (
	MigrationTenant   = "tenant"
	MigrationTemplate = "template"
)

// Statuses in MigrationState.
const (
	MigrationOK      = "ok"      // at Version, no error
	MigrationFailed  = "failed"  // stopped at Version by Error
	MigrationRunning = "running" // a runner holds the database's lock (or crashed holding it)
)

// MigrationState is where one database stands, as last recorded by a
// migration runner.
type MigrationState struct {
	Kind      string // MigrationTenant or MigrationTemplate
	Name      string // tenant ID or template name
	Version   int64  // highest version applied with every earlier one; 0: none
	Status    string // MigrationOK, MigrationFailed or MigrationRunning
	Error     string // why it failed; empty otherwise
	StartedAt time.Time
	UpdatedAt time.Time
}

// ChecksumError refuses a migration file that differs from the one
// registered (or applied) under its version: applied migrations must not
// change.
type ChecksumError struct {
	Version    int64
	File       string // the file as it is now
	Registered string // checksum on record
	Got        string // checksum of the file now
	// Where is what holds the registered checksum: "the catalog", or a
	// database's version table.
	Where string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("migration %s (version %d) was edited after it was registered: its SHA-256 is now %s…, %s has %s…; "+
		"restore the file and put the change in a new migration", e.File, e.Version, shortSum(e.Got), e.Where, shortSum(e.Registered))
}

func shortSum(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// CheckMigrations compares files (in version order) with the registered
// migrations without changing anything, and returns those not registered
// yet. It refuses, with a *ChecksumError, a file whose checksum differs
// from the registered one, and, with an error saying what to do, a file
// renamed, a registered migration missing from files, and a new file
// numbered below the last registered one (tenants past it would never run
// it).
func (c *Catalog) CheckMigrations(ctx context.Context, files []Migration) (unregistered []Migration, err error) {
	reg, err := c.Migrations(ctx)
	if err != nil {
		return nil, err
	}
	return checkMigrations(reg, files)
}

func checkMigrations(reg, files []Migration) ([]Migration, error) {
	byVersion := make(map[int64]Migration, len(files))
	for _, f := range files {
		byVersion[f.Version] = f
	}
	var errs []error
	var last int64
	for _, r := range reg {
		last = max(last, r.Version)
		f, ok := byVersion[r.Version]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("migration %s (version %d) is registered in the catalog but missing from the directory: restore it", r.File, r.Version))
		case f.Checksum != r.Checksum:
			errs = append(errs, &ChecksumError{Version: r.Version, File: f.File, Registered: r.Checksum, Got: f.Checksum, Where: "the catalog"})
		case f.File != r.File:
			errs = append(errs, fmt.Errorf("migration version %d was registered as %s but is now named %s: rename it back", r.Version, r.File, f.File))
		}
		delete(byVersion, r.Version)
	}
	var out []Migration
	for _, f := range files {
		if _, isNew := byVersion[f.Version]; !isNew {
			continue
		}
		if f.Version < last {
			errs = append(errs, fmt.Errorf("migration %s is new but numbered below the last registered version %d: renumber it above %d", f.File, last, last))
			continue
		}
		out = append(out, f)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("catalog: migrations: %w", err)
	}
	return out, nil
}

// RegisterMigrations checks files as CheckMigrations does and registers the
// new ones, making the last of files the fleet's target version. Runners
// registering at once are serialised by an advisory lock. Safe for
// concurrent use.
func (c *Catalog) RegisterMigrations(ctx context.Context, files []Migration) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, migrationsLock); err != nil {
			return err
		}
		reg, err := migrations(ctx, tx)
		if err != nil {
			return err
		}
		fresh, err := checkMigrations(reg, files)
		if err != nil {
			return err
		}
		for _, f := range fresh {
			if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.migrations (version, file, checksum) VALUES ($1, $2, $3)`,
				f.Version, f.File, f.Checksum); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !strings.HasPrefix(err.Error(), "catalog:") {
		err = fmt.Errorf("catalog: register migrations: %w", err)
	}
	return err
}

// Migrations returns the registered migrations in version order; the last
// one's version is the fleet's target.
func (c *Catalog) Migrations(ctx context.Context) ([]Migration, error) {
	ms, err := migrations(ctx, c.pool)
	if err != nil {
		return nil, fmt.Errorf("catalog: migrations: %w", err)
	}
	return ms, nil
}

func migrations(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]Migration, error) {
	rows, err := q.Query(ctx, `SELECT version, file, checksum FROM pgtenant.migrations ORDER BY version`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Migration, error) {
		var m Migration
		err := row.Scan(&m.Version, &m.File, &m.Checksum)
		return m, err
	})
}

// MigrationStates returns every recorded state, templates first, then
// tenants in ID order. Tenants deleted from the catalog are left out, and
// so are states recorded before their tenant was created (again).
func (c *Catalog) MigrationStates(ctx context.Context) ([]MigrationState, error) {
	rows, err := c.pool.Query(ctx, `SELECT s.kind, s.name, s.version, s.status, s.error, s.started_at, s.updated_at
		FROM pgtenant.migration_state s
		LEFT JOIN pgtenant.tenants t ON s.kind = 'tenant' AND t.tenant = s.name
		WHERE s.kind = 'template' OR (t.state = 'ready' AND s.updated_at >= t.created_at)
		ORDER BY s.kind DESC, s.name`)
	if err != nil {
		return nil, fmt.Errorf("catalog: migration states: %w", err)
	}
	states, err := pgx.CollectRows(rows, scanState)
	if err != nil {
		return nil, fmt.Errorf("catalog: migration states: %w", err)
	}
	return states, nil
}

// MigrationState returns the recorded state of one database; ok is false
// if none is recorded, or if the tenant was created (again) after it was
// recorded, so that it says nothing about the database there now.
func (c *Catalog) MigrationState(ctx context.Context, kind, name string) (st MigrationState, ok bool, err error) {
	rows, err := c.pool.Query(ctx, `SELECT s.kind, s.name, s.version, s.status, s.error, s.started_at, s.updated_at
		FROM pgtenant.migration_state s
		LEFT JOIN pgtenant.tenants t ON s.kind = 'tenant' AND t.tenant = s.name AND t.state = 'ready'
		WHERE s.kind = $1 AND s.name = $2 AND (s.kind = 'template' OR s.updated_at >= t.created_at)`, kind, name)
	if err != nil {
		return MigrationState{}, false, fmt.Errorf("catalog: migration state: %w", err)
	}
	st, err = pgx.CollectExactlyOneRow(rows, scanState)
	if errors.Is(err, pgx.ErrNoRows) {
		return MigrationState{}, false, nil
	}
	if err != nil {
		return MigrationState{}, false, fmt.Errorf("catalog: migration state: %w", err)
	}
	return st, true, nil
}

func scanState(row pgx.CollectableRow) (MigrationState, error) {
	var s MigrationState
	err := row.Scan(&s.Kind, &s.Name, &s.Version, &s.Status, &s.Error, &s.StartedAt, &s.UpdatedAt)
	return s, err
}

// MigrationLock is a held per-database migration lock: while one is held no
// other runner, in any process sharing the catalog, migrates that database.
// It is a session advisory lock on one catalog connection, which it keeps
// until Unlock; SetState writes through the same connection, so a runner
// with K databases in flight uses K catalog connections and cannot starve
// itself. A MigrationLock is not safe for concurrent use.
type MigrationLock struct {
	conn       *pgxpool.Conn
	key        string
	kind, name string
}

// LockMigration takes database (kind, name)'s migration lock, waiting while
// another runner holds it, until ctx ends. A runner that dies loses its
// catalog session and with it the lock.
func (c *Catalog) LockMigration(ctx context.Context, kind, name string) (*MigrationLock, error) {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("catalog: lock migration of %s %q: %w", kind, name, err)
	}
	l := &MigrationLock{conn: conn, key: "pgtenant/migrate:" + kind + ":" + name, kind: kind, name: name}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended($1, 0))`, l.key); err != nil {
		// The wait may have been cancelled mid-query: do not pool a
		// session that might hold the lock after all.
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
		return nil, fmt.Errorf("catalog: lock migration of %s %q: %w", kind, name, err)
	}
	return l, nil
}

// SetState records the database's state: Version, Status and Error of st
// (Kind and Name are the lock's). Status MigrationRunning also sets the
// start time.
func (l *MigrationLock) SetState(ctx context.Context, st MigrationState) error {
	_, err := l.conn.Exec(ctx, `INSERT INTO pgtenant.migration_state (kind, name, version, status, error)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, status = excluded.status,
			error = excluded.error, updated_at = now(),
			started_at = CASE WHEN excluded.status = 'running' THEN now() ELSE migration_state.started_at END`,
		l.kind, l.name, st.Version, st.Status, st.Error)
	if err != nil {
		return fmt.Errorf("catalog: record migration state of %s %q: %w", l.kind, l.name, err)
	}
	return nil
}

// Unlock releases the lock and the connection. It runs even when ctx is
// done; if unlocking fails the connection is closed, which releases it too.
func (l *MigrationLock) Unlock(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var ok bool
	if err := l.conn.QueryRow(uctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, l.key).Scan(&ok); err != nil || !ok {
		_ = l.conn.Conn().Close(uctx)
	}
	l.conn.Release()
}
