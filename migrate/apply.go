package migrate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
)

// versionTable is each database's record of its applied migrations.
const versionTable = "public.pgtenant_migrations"

const versionTableDDL = `CREATE TABLE IF NOT EXISTS ` + versionTable + ` (
	version     bigint PRIMARY KEY,
	file        text NOT NULL,
	checksum    text NOT NULL,
	state       text NOT NULL CHECK (state IN ('started', 'done')), -- started: outside a transaction, not finished
	backend_pid integer,
	error       text NOT NULL DEFAULT '',
	started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
	finished_at timestamptz
)`

// Row states in the version table.
const (
	rowStarted = "started"
	rowDone    = "done"
)

// appliedRow is one row of the version table.
type appliedRow struct {
	version  int64
	file     string
	checksum string
	state    string
	pid      int32
}

// AttentionError means a migration that ran outside a transaction was
// started and not finished in a database: it may be partly applied, and
// nothing more is run there until an operator has resolved it (see the
// package documentation).
type AttentionError struct {
	Version int64
	File    string
	// Running is set when the session that started it is still active.
	Running bool
	PID     int32
}

func (e *AttentionError) Error() string {
	if e.Running {
		return fmt.Sprintf("migration %s is still running outside a transaction (backend PID %d)", e.File, e.PID)
	}
	return fmt.Sprintf("migration %s needs attention: ran outside a transaction and may be partly applied; "+
		"finish it by hand and set its row in %s to state 'done', or undo it and delete the row", e.File, versionTable)
}

// session is one database's connection during a migration.
type session struct {
	conn  *pgx.Conn
	files []Migration // the known files, in version order
}

// readApplied reads the version table; a database without one has applied
// nothing.
func (s *session) readApplied(ctx context.Context) (map[int64]appliedRow, error) {
	rows, err := s.conn.Query(ctx, `SELECT version, file, checksum, state, coalesce(backend_pid, 0) FROM `+versionTable)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return map[int64]appliedRow{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", versionTable, err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (appliedRow, error) {
		var r appliedRow
		err := row.Scan(&r.version, &r.file, &r.checksum, &r.state, &r.pid)
		return r, err
	})
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return map[int64]appliedRow{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", versionTable, err)
	}
	out := make(map[int64]appliedRow, len(list))
	for _, r := range list {
		out[r.version] = r
	}
	return out, nil
}

// version is the highest version v such that every file up to v is done.
func version(files []Migration, applied map[int64]appliedRow) int64 {
	var v int64
	for _, f := range files {
		if r, ok := applied[f.Version]; !ok || r.state != rowDone {
			break
		}
		v = f.Version
	}
	return v
}

// check refuses a database whose record contradicts the files: a done
// migration whose checksum differs, or one left started.
func (s *session) check(ctx context.Context, applied map[int64]appliedRow) error {
	for _, f := range s.files {
		r, ok := applied[f.Version]
		if !ok {
			continue
		}
		if r.checksum != f.Checksum {
			return &catalog.ChecksumError{Version: f.Version, File: f.File, Registered: r.checksum, Got: f.Checksum, Where: "the database's " + versionTable}
		}
		if r.state == rowStarted {
			ae := &AttentionError{Version: f.Version, File: f.File, PID: r.pid}
			if r.pid != 0 {
				// Still there: the runner that started it died, or it is
				// another's (a lock lost with the catalog session).
				_ = s.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity
					WHERE pid = $1 AND datname = current_database() AND state <> 'idle')`, r.pid).Scan(&ae.Running)
			}
			return ae
		}
	}
	return nil
}

// plan returns the files up to to that the database has not applied.
func plan(files []Migration, applied map[int64]appliedRow, to int64) []Migration {
	var out []Migration
	for _, f := range files {
		if f.Version > to {
			break
		}
		if _, ok := applied[f.Version]; !ok {
			out = append(out, f)
		}
	}
	return out
}

// apply runs f and records it in the version table. It reports false if
// another runner recorded f first (it then did nothing).
func (s *session) apply(ctx context.Context, f Migration) (bool, error) {
	if f.NoTransaction {
		return s.applyNoTx(ctx, f)
	}
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // no-op after Commit
	// The row first: a second runner blocks on its key until this commits
	// or rolls back.
	if _, err := tx.Exec(ctx, `INSERT INTO `+versionTable+` (version, file, checksum, state, backend_pid, finished_at)
		VALUES ($1, $2, $3, 'done', pg_backend_pid(), clock_timestamp())`, f.Version, f.File, f.Checksum); err != nil {
		if isUnique(err) {
			return false, nil
		}
		return false, fmt.Errorf("record %s: %w", f.File, err)
	}
	if _, err := tx.Conn().PgConn().Exec(ctx, f.SQL).ReadAll(); err != nil {
		return false, fmt.Errorf("%s: %w", f.File, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("%s: commit: %w", f.File, err)
	}
	return true, nil
}

func (s *session) applyNoTx(ctx context.Context, f Migration) (bool, error) {
	if _, err := s.conn.Exec(ctx, `INSERT INTO `+versionTable+` (version, file, checksum, state, backend_pid)
		VALUES ($1, $2, $3, 'started', pg_backend_pid())`, f.Version, f.File, f.Checksum); err != nil {
		if isUnique(err) {
			return false, nil
		}
		return false, fmt.Errorf("record %s: %w", f.File, err)
	}
	for i, stmt := range splitStatements(f.SQL) {
		if _, err := s.conn.PgConn().Exec(ctx, stmt).ReadAll(); err != nil {
			err = fmt.Errorf("%s: statement %d: %w", f.File, i+1, err)
			// Keep the row started, with the error, for the operator.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = s.conn.Exec(uctx, `UPDATE `+versionTable+` SET error = $2 WHERE version = $1`, f.Version, err.Error())
			cancel()
			return false, err
		}
	}
	if _, err := s.conn.Exec(ctx, `UPDATE `+versionTable+` SET state = 'done', finished_at = clock_timestamp()
		WHERE version = $1`, f.Version); err != nil {
		return false, fmt.Errorf("record %s done: %w", f.File, err)
	}
	return true, nil
}

func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// setTimeouts sets the session's lock_timeout and statement_timeout (zero:
// the server's).
func setTimeouts(ctx context.Context, conn *pgx.Conn, lock, stmt time.Duration) error {
	for name, d := range map[string]time.Duration{"lock_timeout": lock, "statement_timeout": stmt} {
		if d <= 0 {
			continue
		}
		ms := strconv.FormatInt(max(d.Milliseconds(), 1), 10)
		if _, err := conn.Exec(ctx, "SET "+name+" = "+ms); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}
