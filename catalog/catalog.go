package catalog

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/provision"
)

// KeySize is the length in bytes of a catalog key (AES-256).
const KeySize = 32

// ErrKeyMismatch means the catalog key cannot decrypt what is in the
// catalog: the router was given a different key than the one the catalog was
// written with (or a row was tampered with).
var ErrKeyMismatch = errors.New("catalog: catalog key does not match the key the catalog was written with")

// schemaLock names the advisory lock held while creating the schema. Tenant
// locks are "pgtenant:<tenant>", so the two can never share a name.
const schemaLock = "pgtenant/schema"

// keyCheck is encrypted under the catalog key into pgtenant.meta when the
// catalog is created, so Open can refuse a different key up front.
// Its additional data contains a colon, which the default tenant pattern
// rejects, so it is no tenant's additional data.
const (
	keyCheck   = "pgtenant catalog key check"
	keyCheckAD = "pgtenant:key_check"
)

var ddl = []string{
	`CREATE SCHEMA IF NOT EXISTS pgtenant`,
	`CREATE TABLE IF NOT EXISTS pgtenant.tenants (
		tenant       text PRIMARY KEY,
		provider     text NOT NULL,
		provider_id  text NOT NULL DEFAULT '',
		host         text NOT NULL,
		port         integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
		database     text NOT NULL,
		username     text NOT NULL,
		password_enc bytea, -- AES-256-GCM: nonce || ciphertext || tag, AD = tenant; NULL once deleted
		state        text NOT NULL DEFAULT 'ready'
		             CHECK (state IN ('provisioning', 'ready', 'failed', 'deleted')),
		created_at   timestamptz NOT NULL DEFAULT now(),
		updated_at   timestamptz NOT NULL DEFAULT now()
	)`,
	`CREATE TABLE IF NOT EXISTS pgtenant.meta (
		name  text PRIMARY KEY,
		value bytea NOT NULL
	)`,
}

// Catalog is the persistent tenant table shared by every router instance:
// pgtenant.tenants in a Postgres control database. Passwords are stored
// encrypted with AES-256-GCM. A Catalog is safe for concurrent use; it does
// not own the pool (the caller closes it).
type Catalog struct {
	pool   *pgxpool.Pool
	aead   cipher.AEAD                  // random nonce prepended by Seal; safe for concurrent use
	limits atomic.Pointer[CreateLimits] // nil: none (limits.go)
}

// Entry is one catalog row as listed by Catalog.List, without the password.
type Entry struct {
	Tenant     string
	Provider   string // provider name, e.g. "local" or "neon"
	ProviderID string
	Host       string
	Port       uint16
	Database   string
	User       string
	State      string // "ready" or "deleted" (the schema also admits "provisioning" and "failed")
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// ParseKey decodes a catalog key: 32 bytes in standard base64 (as printed by
// NewKey). Surrounding white space is ignored. The error never repeats s.
func ParseKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("catalog: catalog key is not standard base64; want 32 random bytes in standard base64 (44 characters, see NewKey)")
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("catalog: catalog key decodes to %d bytes; want 32 random bytes in standard base64 (44 characters, see NewKey)", len(key))
	}
	return key, nil
}

// NewKey returns a fresh random catalog key in the form ParseKey accepts.
func NewKey() string {
	key := make([]byte, KeySize)
	_, _ = rand.Read(key) // never fails (crypto/rand crashes the program instead)
	return base64.StdEncoding.EncodeToString(key)
}

// Open returns the catalog kept in pool's database, creating schema
// pgtenant and its tables if they are missing. Several instances may call it
// at once: the DDL runs under an advisory lock. key is the 32-byte AES-256
// key (see ParseKey); if the catalog was created with another key,
// Open fails with ErrKeyMismatch. The pool stays owned by the caller.
//
// If the tables already exist the role only needs SELECT, INSERT and UPDATE
// on them.
func Open(ctx context.Context, pool *pgxpool.Pool, key []byte) (*Catalog, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("catalog: catalog key is %d bytes; want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("catalog: catalog key: %w", err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("catalog: catalog key: %w", err)
	}
	c := &Catalog{pool: pool, aead: aead}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return c.migrate(ctx, tx) }); err != nil {
		return nil, fmt.Errorf("catalog: open catalog: %w", err)
	}
	return c, nil
}

// migrate creates the schema if needed and checks the key, in tx.
func (c *Catalog) migrate(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.tenants') IS NOT NULL
		AND to_regclass('pgtenant.meta') IS NOT NULL`).Scan(&exists)
	if err != nil {
		return err
	}
	if !exists {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
			return err
		}
		for _, q := range ddl {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
		}
	}
	if err := migrateBlocked(ctx, tx); err != nil {
		return err
	}
	if err := migratePoolModes(ctx, tx); err != nil {
		return err
	}
	if err := migrateInstances(ctx, tx); err != nil {
		return err
	}
	if err := migrateCredentials(ctx, tx); err != nil {
		return err
	}
	if err := migrateMigrations(ctx, tx); err != nil { // migrations.go
		return err
	}
	if err := migratePlacements(ctx, tx); err != nil { // placement.go
		return err
	}
	// The first instance to get here records the key check; the rest compare.
	if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.meta (name, value) VALUES ('key_check', $1)
		ON CONFLICT (name) DO NOTHING`, c.aead.Seal(nil, nil, []byte(keyCheck), []byte(keyCheckAD))); err != nil {
		return err
	}
	var check []byte
	if err := tx.QueryRow(ctx, `SELECT value FROM pgtenant.meta WHERE name = 'key_check'`).Scan(&check); err != nil {
		return err
	}
	if pt, err := c.aead.Open(nil, nil, check, []byte(keyCheckAD)); err != nil || string(pt) != keyCheck {
		return ErrKeyMismatch
	}
	return nil
}

// Lookup returns tenant's endpoint with its decrypted password. ok is false
// if the catalog has no ready route for tenant. It only reads. Safe for
// concurrent use.
func (c *Catalog) Lookup(ctx context.Context, tenant string) (ep provision.Endpoint, ok bool, err error) {
	ep, ok, err = c.lookup(ctx, c.pool, tenant)
	if err != nil {
		return provision.Endpoint{}, false, fmt.Errorf("catalog lookup: %w", err)
	}
	return ep, ok, nil
}

// Ensure returns tenant's endpoint, creating the tenant if the catalog has
// none. On a miss it takes a per-tenant advisory lock in a transaction, looks
// again (another router instance may have created the tenant meanwhile),
// and otherwise calls create once and records its endpoint under provider's
// name before committing. So however many instances share the catalog, one
// create runs per tenant at a time, and a tenant is created once.
//
// A tenant placed on another provider (Place) is not created: Ensure
// returns a *PlacedError naming it, before create runs.
//
// With CreateLimits set, a creation beyond them is refused with a
// *provision.LimitError before create runs.
//
// created reports whether this call ran create. Errors of create are
// returned unchanged. create runs while a catalog connection and
// transaction stay open, so it should be bounded by ctx; if the commit fails
// after create succeeded, the next Ensure calls create again, which providers
// handle by adopting the existing database.
func (c *Catalog) Ensure(ctx context.Context, tenant, provider string,
	create func(context.Context) (provision.Endpoint, error),
) (ep provision.Endpoint, created bool, err error) {
	if ep, ok, err := c.Lookup(ctx, tenant); err != nil || ok {
		return ep, false, err
	}
	tx, err := c.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return provision.Endpoint{}, false, fmt.Errorf("catalog ensure: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // no-op after Commit
	if err := lockTenant(ctx, tx, tenant); err != nil {
		return provision.Endpoint{}, false, fmt.Errorf("catalog ensure: %w", err)
	}
	// Read committed: this statement sees rows committed while we waited.
	if ep, ok, err := c.lookup(ctx, tx, tenant); err != nil || ok {
		if err != nil {
			err = fmt.Errorf("catalog ensure: %w", err)
		}
		return ep, false, err
	}
	if err := checkPlacement(ctx, tx, tenant, provider); err != nil { // placement.go
		var pe *PlacedError
		if !errors.As(err, &pe) {
			err = fmt.Errorf("catalog ensure: %w", err)
		}
		return provision.Endpoint{}, false, err
	}
	if err := c.admit(ctx, tx); err != nil { // limits.go
		var le *provision.LimitError
		if !errors.As(err, &le) {
			err = fmt.Errorf("catalog ensure: %w", err)
		}
		return provision.Endpoint{}, false, err
	}
	ep, err = create(ctx)
	if err != nil {
		return provision.Endpoint{}, false, err
	}
	ep.Provider = provider
	_, err = tx.Exec(ctx, `INSERT INTO pgtenant.tenants
			(tenant, provider, provider_id, host, port, database, username, password_enc, tls, state)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'ready')
		ON CONFLICT (tenant) DO UPDATE SET
			provider = excluded.provider, provider_id = excluded.provider_id,
			host = excluded.host, port = excluded.port, database = excluded.database,
			username = excluded.username, password_enc = excluded.password_enc, tls = excluded.tls,
			state = 'ready', created_at = now(), updated_at = now()`,
		tenant, provider, ep.ProviderID, ep.Host, int32(ep.Port), ep.Database, ep.User,
		c.seal(tenant, ep.Password), ep.TLS)
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		return provision.Endpoint{}, false, fmt.Errorf("catalog ensure: record tenant %q: %w", tenant, err)
	}
	return ep, true, nil
}

// Delete marks tenant deleted and forgets its password and its own secret
// (pgtenant.credentials), so Lookup misses and
// the next Ensure creates it again. It touches only the catalog: deleting the
// database is the provider's job, and other routers' caches keep the route
// until their TTL ends. It waits for a creation of tenant in progress. It
// returns an error wrapping provision.ErrTenantNotFound if the catalog has no
// live row for tenant.
func (c *Catalog) Delete(ctx context.Context, tenant string) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if err := lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE pgtenant.tenants
			SET state = 'deleted', password_enc = NULL, updated_at = now()
			WHERE tenant = $1 AND state <> 'deleted'`, tenant)
		if err == nil && tag.RowsAffected() == 0 {
			return provision.ErrTenantNotFound
		}
		if err != nil {
			return err
		}
		// A tenant created again under the name must not open to the old
		// tenant's own secret.
		_, err = tx.Exec(ctx, `DELETE FROM pgtenant.credentials WHERE tenant = $1`, tenant)
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog delete %q: %w", tenant, err)
	}
	return nil
}

// List returns up to limit catalog rows, deleted ones included, whose tenant
// sorts after after ("" starts at the beginning), in tenant order. Pass the
// last Tenant returned as after to get the next page. limit <= 0 means 100.
// Passwords are never read.
func (c *Catalog) List(ctx context.Context, after string, limit int) ([]Entry, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := c.pool.Query(ctx, `SELECT tenant, provider, provider_id, host, port, database, username,
			state, created_at, updated_at
		FROM pgtenant.tenants WHERE tenant > $1 ORDER BY tenant LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("catalog list: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Entry, error) {
		var e Entry
		var port int32
		err := row.Scan(&e.Tenant, &e.Provider, &e.ProviderID, &e.Host, &port, &e.Database, &e.User,
			&e.State, &e.CreatedAt, &e.UpdatedAt)
		e.Port = uint16(port)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog list: %w", err)
	}
	return entries, nil
}

// querier is what lookup needs from a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (c *Catalog) lookup(ctx context.Context, q querier, tenant string) (provision.Endpoint, bool, error) {
	var ep provision.Endpoint
	var port int32
	var enc []byte
	err := q.QueryRow(ctx, `SELECT host, port, database, username, password_enc, provider_id, provider, tls
		FROM pgtenant.tenants WHERE tenant = $1 AND state = 'ready'`, tenant).
		Scan(&ep.Host, &port, &ep.Database, &ep.User, &enc, &ep.ProviderID, &ep.Provider, &ep.TLS)
	if errors.Is(err, pgx.ErrNoRows) {
		return provision.Endpoint{}, false, nil
	}
	if err != nil {
		return provision.Endpoint{}, false, err
	}
	ep.Port = uint16(port)
	if ep.Password, err = c.open(tenant, enc); err != nil {
		return provision.Endpoint{}, false, err
	}
	return ep, true, nil
}

// lockTenant takes tenant's transaction-scoped advisory lock, waiting for
// any other holder (another instance creating or deleting the tenant).
func lockTenant(ctx context.Context, tx pgx.Tx, tenant string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "pgtenant:"+tenant)
	return err
}

// seal encrypts password for tenant's row: random nonce || ciphertext || tag,
// authenticated together with the tenant ID.
func (c *Catalog) seal(tenant, password string) []byte {
	return c.aead.Seal(nil, nil, []byte(password), []byte(tenant))
}

// open reverses seal. Failure means a wrong key or a row whose ciphertext
// was written for another tenant (or altered).
func (c *Catalog) open(tenant string, enc []byte) (string, error) {
	pt, err := c.aead.Open(nil, nil, enc, []byte(tenant))
	if err != nil {
		return "", fmt.Errorf("%w (the password of tenant %q does not decrypt)", ErrKeyMismatch, tenant)
	}
	return string(pt), nil
}

// MoveRoutes points the routes of provider stored with port from at port to,
// in the catalog that conn reaches, and returns how many it changed. A local
// server that had to move to another port keeps its tenants this way. A
// database without a catalog yet has no routes to move.
func MoveRoutes(ctx context.Context, conn *pgx.Conn, provider string, from, to uint16) (int64, error) {
	tag, err := conn.Exec(ctx, `UPDATE pgtenant.tenants SET port = $1 WHERE provider = $2 AND port = $3`,
		int32(to), provider, int32(from))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		return 0, nil // undefined table or schema: no catalog yet
	}
	if err != nil {
		return 0, fmt.Errorf("catalog: move routes to port %d: %w", to, err)
	}
	return tag.RowsAffected(), nil
}
