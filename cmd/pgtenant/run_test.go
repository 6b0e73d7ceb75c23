package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) {
	if os.Getenv(asPgtenantEnv) == "1" {
		main() // a child started by TestBenchSelf: be pgtenant, not the tests; exits
	}
	pgtest.Main(m)
}

var psqlLine = regexp.MustCompile(`psql '?(postgres://[^' ]+)'?`)

// verifyFullLine is dev's psql line over TLS, checked against its CA.
var verifyFullLine = regexp.MustCompile(`psql '?(postgres://[^' ]+sslmode=verify-full[^' ]*)'?`)

// startRun runs `pgtenant args...` until the returned stop is called, and
// returns the first match of re in its standard output.
func startRun(t *testing.T, re *regexp.Regexp, args ...string) (match []string, stderr *syncBuf, stop func() error) {
	t.Helper()
	match, _, stderr, stop = startRunOut(t, re, args...)
	return match, stderr, stop
}

// startRunOut is startRun that also returns all of the standard output,
// complete once stop has returned.
func startRunOut(t *testing.T, re *regexp.Regexp, args ...string) (match []string, stdout, stderr *syncBuf, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	stdout, stderr = &syncBuf{}, &syncBuf{}
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, stderr)
		_ = pw.CloseWithError(io.EOF)
		done <- err
	}()
	found := make(chan []string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			_, _ = stdout.Write([]byte(sc.Text() + "\n"))
			if m := re.FindStringSubmatch(sc.Text()); m != nil && len(found) == 0 {
				found <- m
			}
		}
		close(found)
	}()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
			<-scanned // the last lines are in stdout
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case m, ok := <-found:
		if !ok {
			err := stop()
			t.Fatalf("pgtenant %s exited before printing %s: %v\nstderr:\n%s", args[0], re, err, stderr.String())
		}
		return m, stdout, stderr, stop
	case <-time.After(3 * time.Minute):
		t.Fatalf("pgtenant %s printed no %s; stderr:\n%s", args[0], re, stderr.String())
	}
	return nil, nil, nil, nil
}

type syncBuf struct {
	mu  chan struct{}
	buf strings.Builder
}

func (b *syncBuf) lock() {
	if b.mu == nil {
		b.mu = make(chan struct{}, 1)
	}
	b.mu <- struct{}{}
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.String()
}

func query(t *testing.T, dsn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// TestDev runs `pgtenant dev` as the README says, connects with the printed
// line, restarts it and finds the tenant's data again.
// devDir is a directory for a dev run's files (its data in dir/data),
// removed with the data when t ends.
func devDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgtenant-dev-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// As root, dir (0700) is closed to the postgres user, so the data
		// went to a directory under /var/lib linked from data/pgdata: the
		// same path a checkout under root's home takes.
		if target, err := filepath.EvalSymlinks(filepath.Join(dir, "data", "pgdata")); err == nil {
			os.RemoveAll(target)
		}
		os.RemoveAll(dir)
	})
	return dir
}

func TestDev(t *testing.T) {
	pgtest.Shared(t) // skips (outside CI) when Postgres is not installed
	dir := devDir(t)
	schema := filepath.Join(dir, "schema.sql")
	if err := os.WriteFile(schema, []byte("CREATE TABLE notes (body text);"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"dev", "--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--template-sql", schema}

	m, stdout, stderr, stop := startRunOut(t, psqlLine, args...)
	dsn := m[1]
	if !strings.Contains(dsn, "tenant_42:"+devPassword+"@") {
		t.Fatalf("printed DSN %q lacks the tenant and dev secret", dsn)
	}
	if got := query(t, dsn, "SELECT current_database()"); got != "t_tenant_42" {
		t.Fatalf("current_database = %q", got)
	}
	query(t, dsn, "INSERT INTO notes VALUES ('survives restarts') RETURNING body")
	// Dev pools in session mode, and its banner says how to look.
	pm := regexp.MustCompile(`(?m)^  pool      session mode.*\n\s+e\.g\. ` + router.EnvAdminToken + `=(\S+) \S+ pools --admin (\S+)$`).FindStringSubmatch(stdout.String())
	if pm == nil {
		t.Fatalf("banner lacks the pool lines:\n%s", stdout.String())
	}
	var pools strings.Builder
	if err := run(context.Background(), []string{"pools", "--admin", pm[2], "--token", pm[1]}, &pools, io.Discard); err != nil ||
		!strings.Contains(pools.String(), "mode: session") || !strings.Contains(pools.String(), "tenant_42 ") {
		t.Fatalf("pools: %v\n%s", err, pools.String())
	}
	if err := stop(); err != nil {
		t.Fatalf("dev stopped with %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "via=created") {
		t.Errorf("no session line for the created tenant:\n%s", stderr.String())
	}
	// The banner's commands name the binary as it was run (here the test
	// binary), so that they can be pasted; the stop line says what stays.
	if want := " " + quote(os.Args[0]) + " tenants list --admin http://"; !strings.Contains(stdout.String(), want) {
		t.Errorf("banner lacks %q:\n%s", want, stdout.String())
	}
	if !strings.Contains(stdout.String(), "stopped; tenants and their data stay in "+filepath.Join(dir, "data")) {
		t.Errorf("stop line:\n%s", stdout.String())
	}

	caPEM, err := os.ReadFile(filepath.Join(dir, "data", "ca.crt"))
	if err != nil {
		t.Fatalf("dev keeps no CA in its data dir: %v", err)
	}

	// After a restart, over TLS: the banner's verify-full line, whose CA
	// is kept across restarts.
	m, stderr, stop = startRun(t, verifyFullLine, args...)
	if got := query(t, m[1], "SELECT body FROM notes"); got != "survives restarts" {
		t.Fatalf("after restart: %q", got)
	}
	if psql, err := exec.LookPath("psql"); err == nil {
		out, err := exec.Command(psql, "-X", "-A", "-t", "-c", "SELECT current_database()", m[1]).CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != "t_tenant_42" {
			t.Fatalf("psql %s: %q, %v", m[1], got, err)
		}
	}
	if again, err := os.ReadFile(filepath.Join(dir, "data", "ca.crt")); err != nil || !bytes.Equal(again, caPEM) {
		t.Errorf("dev made a new CA on restart (%v): clients trusting the old one would fail", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "via=catalog") {
		t.Errorf("restarted dev did not route from the catalog:\n%s", stderr.String())
	}

	// Someone else took the recorded port: Postgres moves to another one
	// after a while, and the stored route must follow it.
	port, err := os.ReadFile(filepath.Join(dir, "data", "port"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:"+strings.TrimSpace(string(port)))
	if err != nil {
		t.Fatalf("take the recorded port: %v", err)
	}
	defer ln.Close()
	m, stderr, stop = startRun(t, psqlLine, args...)
	if got := query(t, m[1], "SELECT body FROM notes"); got != "survives restarts" {
		t.Fatalf("after moving port: %q", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), `stored routes updated" from=`+strings.TrimSpace(string(port))) || !strings.Contains(stderr.String(), "routes=1") {
		t.Errorf("dev did not say it updated the stored route:\n%s", stderr.String())
	}
}

// TestServe runs `pgtenant serve` against an existing server, configured by
// file and environment as in production.
func TestServe(t *testing.T) {
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	t.Setenv(router.EnvPassword, "serve-secret")
	t.Setenv(router.EnvAdminDSN, c.AdminDSN("postgres"))
	t.Setenv(router.EnvCatalogDSN, c.AdminDSN(db))
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	cfg := writeFile(t, "listen: 127.0.0.1:0\nprovider:\n  local:\n    prefix: s_\n")

	m, _, stop := startRun(t, regexp.MustCompile(`routing tenants on (\S+)`), "serve", "--config", cfg)
	dsn := "postgres://acme:serve-secret@" + m[1] + "/app?sslmode=disable"
	if got := query(t, dsn, "SELECT current_database()"); got != "s_acme" {
		t.Fatalf("current_database = %q", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// The admin side sees and deletes it.
	tenants := func(args ...string) (string, error) {
		var out strings.Builder
		err := run(context.Background(), append([]string{"tenants"}, append(args, "--config", cfg)...), &out, io.Discard)
		return out.String(), err
	}
	out, err := tenants("list")
	if err != nil || !strings.Contains(out, "acme") || !strings.Contains(out, "s_acme") {
		t.Fatalf("tenants list: %v\n%s", err, out)
	}
	out, err = tenants("show", "acme")
	if err != nil || !strings.Contains(out, "s_acme") || strings.Contains(out, "serve-secret") {
		t.Fatalf("tenants show: %v\n%s", err, out)
	}
	if _, err := tenants("delete", "acme"); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("delete without --yes: %v", err)
	}
	if out, err := tenants("delete", "acme", "--yes"); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("tenants delete: %v\n%s", err, out)
	}
	if _, err := tenants("show", "acme"); err == nil {
		t.Fatal("show after delete found the tenant")
	}
	if got := query(t, c.AdminDSN("postgres"), "SELECT count(*)::text FROM pg_database WHERE datname = 's_acme'"); got != "0" {
		t.Fatalf("database still exists after delete (%s)", got)
	}
}

// TestDevNeonFake runs the whole Neon flow of the README on one machine:
// the real Neon client against the in-process fake, TLS with SNI to its
// compute proxy, a branch per tenant.
func TestDevNeonFake(t *testing.T) {
	pgtest.Shared(t)
	dir, err := os.MkdirTemp("", "pgtenant-neonfake-test-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	m, stdout, stderr, stop := startRunOut(t, psqlLine, "dev", "--provider", "neon-fake", "--neon-op-delay", "20ms",
		"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0")
	if got := query(t, m[1], "SELECT 'ok'"); got != "ok" {
		t.Fatal(got)
	}
	if err := stop(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "via=created") || !strings.Contains(stderr.String(), "provider=neon") {
		t.Errorf("log:\n%s", stderr.String())
	}
	// The fake is in memory: the stop line must not promise the tenants.
	if out := stdout.String(); !strings.Contains(out, "tenants and their data are gone") || strings.Contains(out, "stay in") {
		t.Errorf("stop line:\n%s", out)
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	t.Setenv(router.EnvPassword, "")
	t.Setenv(router.EnvAdminDSN, "")
	t.Setenv(router.EnvCatalogKey, "")
	err := run(context.Background(), []string{"serve"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), router.EnvPassword) {
		t.Fatalf("serve without secrets: %v", err)
	}
}

// A catalog opened with another key fails at start, saying what to do.
func TestServeWrongCatalogKey(t *testing.T) {
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	t.Setenv(router.EnvPassword, "serve-secret")
	t.Setenv(router.EnvAdminDSN, c.AdminDSN("postgres"))
	t.Setenv(router.EnvCatalogDSN, c.AdminDSN(db))
	cfg := writeFile(t, "listen: 127.0.0.1:0\nprovider:\n  local:\n    prefix: k_\n")

	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	_, _, stop := startRun(t, regexp.MustCompile(`routing tenants on (\S+)`), "serve", "--config", cfg)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	err := run(context.Background(), []string{"serve", "--config", cfg}, io.Discard, io.Discard)
	if !errors.Is(err, catalog.ErrKeyMismatch) || !strings.Contains(err.Error(), router.EnvCatalogKey) {
		t.Fatalf("serve with another key: %v", err)
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
