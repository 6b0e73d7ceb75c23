package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Spares: databases cloned ahead of demand. A spare is a database and a
// NOLOGIN role of the same name, spareNamePrefix + random hex, made exactly
// as a tenant's (cloneFor) and marked ready last, with a comment on the
// database, so that a half-made spare (a crash, a failed step) is never
// claimed. Create claims one by renaming both to the tenant's name and
// giving the role its password, in one transaction: a new tenant then costs
// a few catalog updates instead of a clone of the template (CREATE DATABASE
// and the hand-over session dominate Create).
//
// Spares follow the template's schema: the migrate runner records the
// version it brought the template to in a comment on the template database
// (SetTemplateVersion), a spare's ready mark carries the version read
// before it was cloned, and only spares marked with the template's current
// version are claimed. RunSpares drops the others and refills. (A spare
// cloned just after a migration but marked with the version before is
// dropped too: wasted, never stale.)
const (
	spareNamePrefix = "pgtenant_spare_"
	// spareReady starts the comment that marks a spare complete; the
	// template's name ends it (providers with other templates may share
	// the server).
	spareReady = "pgtenant spare, ready, from template "
	// spareRetry is how long RunSpares waits after a failed refill.
	spareRetry = 5 * time.Second
	// spareRecheck is how often RunSpares recounts spares without being
	// woken (another router instance may have claimed some).
	spareRecheck = 30 * time.Second
)

// claimSpare renames a ready spare to name and lets it log in with
// verifier. It reports false, leaving everything as it was, when no spare is
// free or the claim fails (name is taken, say): Create then clones the
// template as without spares.
func (p *Provider) claimSpare(ctx context.Context, c *pgxpool.Conn, name, verifier string) bool {
	v, err := templateVersion(ctx, c, p.cfg.template())
	if err != nil {
		return false
	}
	mark := spareMark(p.cfg.template(), v)
	rows, err := c.Query(ctx, `SELECT d.datname, pg_catalog.shobj_description(d.oid, 'pg_database') = $2 FROM pg_catalog.pg_database d
		WHERE d.datname LIKE $1 AND pg_catalog.shobj_description(d.oid, 'pg_database') LIKE $3
		ORDER BY d.datname`, spareNamePrefix+"%", mark, likeEscape(spareReady+p.cfg.template())+"%")
	if err != nil {
		return false
	}
	var spares []string
	stale := false
	var name1 string
	var current bool
	if _, err := pgx.ForEachRow(rows, []any{&name1, &current}, func() error {
		if current {
			spares = append(spares, name1)
		} else {
			stale = true
		}
		return nil
	}); err != nil {
		return false
	}
	if stale {
		p.wake() // RunSpares drops them and makes current ones
	}
	for _, spare := range spares {
		// Another instance may be claiming the same spare: the lock
		// decides, without waiting.
		var locked bool
		if err := c.QueryRow(ctx, "SELECT pg_catalog.pg_try_advisory_lock($1::int4, $2::int4)",
			int32(lockClass), lockKey(spare)).Scan(&locked); err != nil {
			return false
		}
		if !locked {
			continue
		}
		// One simple-protocol batch: one transaction, so a failure (the
		// tenant's role exists already, say) leaves the spare intact.
		_, err := c.Exec(ctx, "ALTER DATABASE "+ident(spare)+" RENAME TO "+ident(name)+"; "+
			"ALTER ROLE "+ident(spare)+" RENAME TO "+ident(name)+"; "+
			"ALTER ROLE "+ident(name)+" WITH LOGIN PASSWORD "+quoteLiteral(verifier)+"; "+
			"COMMENT ON DATABASE "+ident(name)+" IS NULL")
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		_, uerr := c.Exec(uctx, "SELECT pg_catalog.pg_advisory_unlock($1::int4, $2::int4)", int32(lockClass), lockKey(spare))
		if uerr != nil {
			// Keep no lock on a pooled connection.
			_ = c.Conn().Close(uctx)
		}
		cancel()
		if err == nil {
			p.wake()
			return true
		}
		if uerr != nil {
			return false
		}
		if ctx.Err() != nil || isDuplicate(err, "42710") || isDuplicate(err, "42P04") {
			return false // name taken: the adopting path handles it
		}
		// Claimed by another instance meanwhile (3D000), or busy: next.
	}
	return false
}

// spareMark is the comment (COMMENT ON DATABASE) that marks a spare cloned
// from template at schema version v as ready. Version 0 (a template never
// migrated) keeps the mark spares had before versions.
func spareMark(template string, v int64) string {
	if v == 0 {
		return spareReady + template
	}
	return spareReady + template + " at schema version " + strconv.FormatInt(v, 10)
}

// templateVersionMark starts the template database's comment that records
// its schema version.
const templateVersionMark = "pgtenant template at schema version "

// templateVersion reads the schema version SetTemplateVersion recorded on
// template; 0 when none is.
func templateVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, template string) (int64, error) {
	var comment *string
	err := q.QueryRow(ctx, `SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database
		WHERE datname = $1`, template).Scan(&comment)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && comment == nil {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, ok := strings.CutPrefix(*comment, templateVersionMark)
	if !ok {
		return 0, nil
	}
	return strconv.ParseInt(v, 10, 64)
}

// SetTemplateVersion records on the template database (as its comment) the
// schema version it is at, so that spares cloned before it are no longer
// handed out. The migrate runner calls it after migrating the template
// (migrate.Template.Migrated).
func (p *Provider) SetTemplateVersion(ctx context.Context, v int64) error {
	if err := p.cfg.Validate(); err != nil {
		return err
	}
	if _, err := p.admin.Exec(ctx, "COMMENT ON DATABASE "+ident(p.cfg.template())+" IS "+
		quoteLiteral(templateVersionMark+strconv.FormatInt(v, 10))); err != nil {
		return fmt.Errorf("local: record template %q at schema version %d: %w", p.cfg.template(), v, err)
	}
	p.wake()
	return nil
}

// likeEscape escapes s for a LIKE pattern.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(s)
}

// wake tells RunSpares a spare was taken.
func (p *Provider) wake() {
	select {
	case p.claimed <- struct{}{}:
	default:
	}
}

// RunSpares keeps Config.Spares spares ready until ctx ends, making one at
// a time (so that refilling competes little with tenants' own work). Errors
// are logged to log and retried. It returns at once when Spares is zero.
// Several router instances may run it on one server: each counts the
// spares all of them made.
func (p *Provider) RunSpares(ctx context.Context, log *slog.Logger) {
	if p.cfg.Spares <= 0 {
		return
	}
	for {
		wait := spareRecheck
		err := p.dropStaleSpares(ctx)
		n := 0
		if err == nil {
			n, err = p.countSpares(ctx)
		}
		if err == nil && n < p.cfg.Spares {
			if err = p.makeSpare(ctx); err == nil {
				continue
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("local: making a spare database", "err", err)
			wait = spareRetry
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.claimed:
		case <-t.C:
		}
		t.Stop()
	}
}

// countSpares counts the ready spares.
func (p *Provider) countSpares(ctx context.Context) (int, error) {
	return ReadySpares(ctx, p.admin, p.cfg.template())
}

// dropStaleSpares drops the ready spares cloned from an older version of
// the template than its current one. A spare being claimed meanwhile
// (renamed) is no longer there to drop.
func (p *Provider) dropStaleSpares(ctx context.Context) error {
	c, err := p.admin.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	v, err := templateVersion(ctx, c, p.cfg.template())
	if err != nil {
		return err
	}
	rows, err := c.Query(ctx, `SELECT d.datname FROM pg_catalog.pg_database d
		WHERE d.datname LIKE $1 AND pg_catalog.shobj_description(d.oid, 'pg_database') LIKE $2
		AND pg_catalog.shobj_description(d.oid, 'pg_database') <> $3`,
		spareNamePrefix+"%", likeEscape(spareReady+p.cfg.template())+"%", spareMark(p.cfg.template(), v))
	if err != nil {
		return err
	}
	stale, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, name := range stale {
		if err := p.dropSpare(c, name); err != nil {
			return fmt.Errorf("drop spare cloned from an older schema version: %w", err)
		}
	}
	return nil
}

// ReadySpares counts the ready spare databases cloned from template at its
// current schema version on the server q is connected to (a *pgx.Conn or
// *pgxpool.Pool).
func ReadySpares(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, template string) (int, error) {
	v, err := templateVersion(ctx, q, template)
	if err != nil {
		return 0, err
	}
	var n int
	err = q.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_database d
		WHERE d.datname LIKE $1 AND pg_catalog.shobj_description(d.oid, 'pg_database') = $2`,
		spareNamePrefix+"%", spareMark(template, v)).Scan(&n)
	return n, err
}

// makeSpare makes one spare and marks it ready.
func (p *Provider) makeSpare(ctx context.Context) error {
	if err := p.cfg.Validate(); err != nil {
		return err
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := spareNamePrefix + hex.EncodeToString(b)
	c, err := p.admin.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	// Read before the clone: a migration of the template in between makes
	// the spare newer than its mark (dropped as stale), never older.
	v, err := templateVersion(ctx, c, p.cfg.template())
	if err != nil {
		return err
	}
	if _, err := c.Exec(ctx, "CREATE ROLE "+ident(name)+" NOLOGIN"); err != nil {
		return fmt.Errorf("create role: %w", err)
	}
	if err := p.cloneFor(ctx, c, name); err != nil {
		return errors.Join(err, p.dropSpare(c, name))
	}
	if _, err := c.Exec(ctx, "COMMENT ON DATABASE "+ident(name)+" IS "+quoteLiteral(spareMark(p.cfg.template(), v))); err != nil {
		return errors.Join(fmt.Errorf("mark ready: %w", err), p.dropSpare(c, name))
	}
	return nil
}

// dropSpare removes what makeSpare made of name, best effort.
func (p *Provider) dropSpare(c *pgxpool.Conn, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)); err != nil {
		return fmt.Errorf("drop unfinished spare: %w", err)
	}
	if _, err := c.Exec(ctx, "DROP ROLE IF EXISTS "+ident(name)); err != nil {
		return fmt.Errorf("drop unfinished spare's role: %w", err)
	}
	return nil
}
