package neontest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Backend objects. Roles are cluster-wide in Postgres but per branch in
// Neon (every branch has its own neondb_owner), so each branch's role R and
// database D live in the cluster as "<branch id>__R" and "<branch id>__D"
// (localName). Databases belong to the admin; each branch role may connect
// only to its own branch's databases (CONNECT is revoked from PUBLIC), and
// the database's owner role owns everything inside it, so the application
// can migrate its schema.

const (
	// templatePrefix names the template database every project's first
	// database is cloned from: templatePrefix + a hash of the setup SQL, so
	// changing the SQL makes a new template.
	templatePrefix = "neontest_tmpl_"
	// templateOwner is the NOLOGIN role owning the template's contents
	// (schema public and what the setup SQL creates); a new project's owner
	// role takes them over (REASSIGN OWNED). It owns no database.
	templateOwner = "neontest_tmpl_owner"
	maxIdentLen   = 63
	// busyGrace is how long a clone waits for sessions on its source
	// database to end before it terminates them.
	busyGrace = time.Second
	busyLimit = 20 * time.Second
)

// BackendConfig configures NewBackendConfig.
type BackendConfig struct {
	// AdminDSN is a connection string logging in to a running Postgres 13+
	// server as a superuser, e.g. localproc.Cluster.AdminDSN("postgres") (tests:
	// pgtest.Shared(t).AdminDSN("postgres")). Required. Secret.
	AdminDSN string
	// TemplateSQL is run once, as the owner of the template database, when
	// the template is built; every new project's default database starts as
	// a copy of it, owned by the project's role. Empty means an empty
	// schema, as on Neon.
	TemplateSQL string
	// Log receives warnings (e.g. sessions terminated to clone a
	// database). Nil discards them.
	Log *slog.Logger
}

// String describes c without the admin DSN (which holds a password).
func (c BackendConfig) String() string {
	return fmt.Sprintf("neontest.BackendConfig{AdminDSN: xxxxx, TemplateSQL: %d bytes}", len(c.TemplateSQL))
}

// LogValue implements slog.LogValuer without the admin DSN.
func (c BackendConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("template_sql_bytes", len(c.TemplateSQL)))
}

// Backend is the Postgres server behind a Server's branches. It holds a
// small admin pool. Safe for concurrent use; one Backend may serve several
// Servers, each of which drops what it created when it closes.
type Backend struct {
	pool     *pgxpool.Pool
	connCfg  *pgconn.Config // the admin DSN's, copied for other sessions
	network  string         // "tcp" or "unix", and
	addr     string         // the server's address, for cancel requests
	secret   []byte         // derives local roles' internal passwords
	template string
	log      *slog.Logger
}

// NewBackend connects to the Postgres server at adminDSN (a superuser DSN
// of a running cluster, e.g. pgtest.Shared(t).AdminDSN("postgres")) and
// makes sure its template database exists, with an empty schema.
func NewBackend(ctx context.Context, adminDSN string) (*Backend, error) {
	return NewBackendConfig(ctx, BackendConfig{AdminDSN: adminDSN})
}

// NewBackendConfig is NewBackend with options (template SQL, logger). It
// blocks until the template database exists or ctx ends.
func NewBackendConfig(ctx context.Context, cfg BackendConfig) (*Backend, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pcfg, err := pgxpool.ParseConfig(cfg.AdminDSN)
	if err != nil {
		return nil, errors.New("neontest: backend: cannot parse the admin DSN") // the error would echo it
	}
	pcfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("neontest: backend: %w", err)
	}
	sum := sha256.Sum256([]byte(cfg.TemplateSQL))
	b := &Backend{
		pool:     pool,
		connCfg:  pcfg.ConnConfig.Config.Copy(),
		network:  "tcp",
		addr:     net.JoinHostPort(pcfg.ConnConfig.Host, strconv.Itoa(int(pcfg.ConnConfig.Port))),
		secret:   make([]byte, 32),
		template: templatePrefix + hex.EncodeToString(sum[:6]),
		log:      log,
	}
	if host := pcfg.ConnConfig.Host; strings.HasPrefix(host, "/") { // a socket directory
		b.network, b.addr = "unix", filepath.Join(host, ".s.PGSQL."+strconv.Itoa(int(pcfg.ConnConfig.Port)))
	}
	_, _ = rand.Read(b.secret)
	if err := b.ensureTemplate(ctx, cfg.TemplateSQL); err != nil {
		pool.Close()
		return nil, fmt.Errorf("neontest: backend: template: %w", err)
	}
	return b, nil
}

// Close closes the admin pool. Call it after the Servers using b are
// closed. The template database stays, for the next Backend.
func (b *Backend) Close() { b.pool.Close() }

func (b *Backend) ensureTemplate(ctx context.Context, setupSQL string) error {
	var super bool
	if err := b.pool.QueryRow(ctx, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		return err
	}
	if !super {
		return errors.New("the admin DSN must log in as a superuser")
	}
	_, err := b.pool.Exec(ctx, "CREATE ROLE "+ident(templateOwner)+" NOLOGIN")
	if err != nil && !isCode(err, "42710", "23505") {
		return fmt.Errorf("create template owner: %w", err)
	}
	var exists bool
	err = b.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)", b.template).Scan(&exists)
	if err != nil || exists {
		return err
	}
	// Built under a scratch name and renamed, so a half-built template is
	// never used; concurrent builders race harmlessly on the rename.
	build := b.template + "_b" + randString(lowerAlnum, 6)
	if _, err := b.pool.Exec(ctx, "CREATE DATABASE "+ident(build)); err != nil {
		return err
	}
	err = b.runIn(ctx, build,
		"REVOKE CONNECT, TEMPORARY ON DATABASE "+ident(build)+" FROM PUBLIC",
		"ALTER SCHEMA public OWNER TO "+ident(templateOwner),
		"SET ROLE "+ident(templateOwner),
		setupSQL)
	if err == nil {
		err = retryBusy(ctx, func() error {
			_, err := b.pool.Exec(ctx, "ALTER DATABASE "+ident(build)+" RENAME TO "+ident(b.template))
			return err
		})
		if isCode(err, "42P04") { // another builder won
			err = nil
		} else if err == nil {
			return nil
		}
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, _ = b.pool.Exec(dctx, "DROP DATABASE IF EXISTS "+ident(build)+" WITH (FORCE)")
	return err
}

// runIn runs each non-empty statement (simple protocol) in database db on
// an admin session of its own.
func (b *Backend) runIn(ctx context.Context, db string, sqls ...string) error {
	cfg := b.connCfg.Copy()
	cfg.Database = db
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	for _, sql := range sqls {
		if strings.TrimSpace(sql) == "" {
			continue
		}
		if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
			return err
		}
	}
	return nil
}

// internalPassword is the password of a local role. Clients never see it:
// they authenticate to the compute proxy with the Neon password, and the
// proxy logs in to Postgres with this one.
func (b *Backend) internalPassword(localRole string) string {
	m := hmac.New(sha256.New, b.secret)
	m.Write([]byte(localRole))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (b *Backend) createRole(ctx context.Context, name string) error {
	creds, err := scramCreds(b.internalPassword(name))
	if err != nil {
		return err
	}
	enc := base64.StdEncoding.EncodeToString
	verifier := "SCRAM-SHA-256$" + strconv.Itoa(creds.Iters) + ":" + enc([]byte(creds.Salt)) +
		"$" + enc(creds.StoredKey) + ":" + enc(creds.ServerKey)
	_, err = b.pool.Exec(ctx, "CREATE ROLE "+ident(name)+" LOGIN PASSWORD '"+verifier+"'")
	return err
}

// dbPlan is one database of a branch being created (local names).
type dbPlan struct {
	name, from, owner string      // the new database, its source, its owner role
	reassign          [][2]string // its contents' owners: old role -> new role
}

// createBranch creates a branch's local roles and databases: each database
// is cloned from its source (the template, or the parent branch's copy), is
// closed to everyone but the branch's roles, and its contents are handed
// over from the source's roles. record is called for each object as soon
// as it exists.
func (b *Backend) createBranch(ctx context.Context, roles []string, dbs []dbPlan, record func(db bool, name string)) error {
	for _, r := range roles {
		if err := b.createRole(ctx, r); err != nil {
			return fmt.Errorf("create role %s: %w", r, err)
		}
		record(false, r)
	}
	for _, d := range dbs {
		if err := b.clone(ctx, d.name, d.from); err != nil {
			return fmt.Errorf("create database %s: %w", d.name, err)
		}
		record(true, d.name)
		stmts := []string{"REVOKE CONNECT, TEMPORARY ON DATABASE " + ident(d.name) + " FROM PUBLIC"}
		if len(roles) > 0 {
			stmts = append(stmts, "GRANT CONNECT, TEMPORARY ON DATABASE "+ident(d.name)+" TO "+identList(roles))
		}
		stmts = append(stmts, "GRANT ALL ON DATABASE "+ident(d.name)+" TO "+ident(d.owner))
		for _, r := range d.reassign {
			stmts = append(stmts, "REASSIGN OWNED BY "+ident(r[0])+" TO "+ident(r[1]))
		}
		if err := b.runIn(ctx, d.name, stmts...); err != nil {
			return fmt.Errorf("set up database %s: %w", d.name, err)
		}
	}
	return nil
}

// clone runs CREATE DATABASE name TEMPLATE from. Postgres refuses while
// anyone is connected to from (55006, after waiting 5s itself), so clone
// first waits up to busyGrace for sessions on from to end (a closed
// session's backend takes a moment to exit) and then terminates the rest:
// the fake's one departure from Neon, whose branching never disturbs the
// parent's sessions.
func (b *Backend) clone(ctx context.Context, name, from string) error {
	b.quiesce(ctx, from)
	return retryBusy(ctx, func() error {
		_, err := b.pool.Exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE "+ident(from))
		return err
	})
}

// quiesce waits until no session uses database db, terminating them after
// busyGrace. Errors are left for the CREATE DATABASE that follows.
func (b *Backend) quiesce(ctx context.Context, db string) {
	const others = "FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()"
	deadline := time.Now().Add(busyGrace)
	for {
		var n int
		if err := b.pool.QueryRow(ctx, "SELECT count(*) "+others, db).Scan(&n); err != nil || n == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.log.Warn("neon fake: terminating sessions on a parent branch's database to branch from it", "database", db, "sessions", n)
			_, _ = b.pool.Exec(ctx, "SELECT pg_catalog.pg_terminate_backend(pid) "+others, db)
			return
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// drop drops databases (with FORCE, breaking sessions) and then roles.
// Missing objects are fine. It keeps going after an error and returns the
// first.
func (b *Backend) drop(ctx context.Context, dbs, roles []string) error {
	var first error
	for _, d := range dbs {
		if _, err := b.pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(d)+" WITH (FORCE)"); err != nil && first == nil {
			first = fmt.Errorf("drop database %s: %w", d, err)
		}
	}
	for _, r := range roles {
		_, err := b.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(r))
		if isCode(err, "2BP01") { // still holds privileges somewhere
			if _, err = b.pool.Exec(ctx, "DROP OWNED BY "+ident(r)); err == nil {
				_, err = b.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(r))
			}
		}
		if err != nil && first == nil {
			first = fmt.Errorf("drop role %s: %w", r, err)
		}
	}
	return first
}

// connect logs in to database db as role (local names) with params as
// run-time parameters, for the compute proxy.
func (b *Backend) connect(ctx context.Context, db, role string, params map[string]string) (*pgconn.PgConn, error) {
	cfg := b.connCfg.Copy()
	cfg.Database = db
	cfg.User = role
	cfg.Password = b.internalPassword(role)
	cfg.RuntimeParams = params
	cfg.OnNotice = nil
	cfg.OnNotification = nil
	return pgconn.ConnectConfig(ctx, cfg)
}

// cancel forwards a CancelRequest (the whole packet, length word included)
// to the server; BackendKeyData reaches clients unchanged, so the key is
// the server's own.
func (b *Backend) cancel(ctx context.Context, packet []byte) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, b.network, b.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	_, err = c.Write(packet)
	if err == nil {
		var one [1]byte
		_, _ = c.Read(one[:]) // the server closes the connection once it has acted
	}
	return err
}

// localName maps a branch's role or database name to its cluster-wide
// name, "<branch id>__<name>", shortened with a hash of name if it would
// exceed Postgres' 63 bytes.
func localName(branchID, name string) string {
	n := branchID + "__" + name
	if len(n) <= maxIdentLen {
		return n
	}
	sum := sha256.Sum256([]byte(name))
	keep := maxIdentLen - len(branchID) - 2 - 9
	short := name[:keep]
	for !utf8.ValidString(short) {
		short = short[:len(short)-1]
	}
	return branchID + "__" + short + "_" + hex.EncodeToString(sum[:4])
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func identList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = ident(n)
	}
	return strings.Join(q, ", ")
}

func isCode(err error, codes ...string) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	for _, c := range codes {
		if pe.Code == c {
			return true
		}
	}
	return false
}

// retryBusy retries f while it fails with 55006 (object in use), with
// jittered backoff, for at most busyLimit or until ctx ends.
func retryBusy(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(busyLimit)
	backoff := 10 * time.Millisecond
	for {
		err := f()
		if !isCode(err, "55006") || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(backoff/2 + mrand.N(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}
