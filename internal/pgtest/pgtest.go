package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pgtenant/pgtenant/internal/localproc"
)

const (
	startTimeout = 2 * time.Minute
	stopTimeout  = time.Minute
)

// testSettings make clusters fast and roomy; durability is irrelevant for
// data that is deleted when the test ends.
var testSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
	"max_connections":    "300",
}

// Start starts a fresh cluster for one test (fsync=off,
// synchronous_commit=off, full_page_writes=off, max_connections=300, each
// overridable by settings, later maps winning), stopped and deleted in
// t.Cleanup. The test fails if the cluster crashed before then.
func Start(t testing.TB, settings ...map[string]string) *localproc.Cluster {
	t.Helper()
	merged := maps.Clone(testSettings)
	for _, s := range settings {
		maps.Copy(merged, s)
	}
	dir, err := clusterDir()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: dir, Settings: merged})
	if err != nil {
		skipOrFatal(t, err)
		return nil // not reached: skipOrFatal ends the test
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c
}

// clusterDir makes a directory for a cluster. Not t.TempDir: that is 0700,
// and when the tests run as root postgres runs as another OS user that
// must be able to traverse the directory.
func clusterDir() (string, error) {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// skipOrFatal ends the test after a failed start: missing binaries skip it,
// unless CI is set, where nothing may pass by skipping.
func skipOrFatal(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, localproc.ErrNoPostgres) && !inCI() {
		t.Skipf("pgtest: skipping, no PostgreSQL to test against: %v", err)
		return
	}
	t.Fatalf("pgtest: start postgres: %v", err)
}

func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// shared is the cluster of Shared. It is the one piece of package state:
// its whole point is to outlive any single test, and Main must find it.
var shared struct {
	sync.Mutex
	mainCalled bool
	started    bool
	c          *localproc.Cluster
	dir        string
	err        error
}

// Shared returns one cluster shared by all tests of the test binary, started
// on first use with Start's settings. Tests must not change global state in
// it (roles, settings, template1); CreateDB gives each its own database. It
// requires the package's TestMain to call Main, which stops it. Safe for
// concurrent use.
func Shared(t testing.TB) *localproc.Cluster {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.mainCalled {
		t.Fatal("pgtest: Shared needs the package's TestMain to call pgtest.Main(m), which stops the shared cluster")
	}
	if !shared.started {
		shared.started = true
		shared.dir, shared.err = clusterDir()
		if shared.err == nil {
			// Not t.Context(): the start-up must not depend on the test
			// that happens to come first.
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			shared.c, shared.err = localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: shared.dir, Settings: testSettings})
			cancel()
		}
	}
	if shared.err != nil {
		skipOrFatal(t, shared.err)
	}
	return shared.c
}

// Main runs the tests and stops the shared cluster:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// The binary fails if the shared cluster crashed or cannot be stopped.
func Main(m *testing.M) {
	shared.Lock()
	shared.mainCalled = true
	shared.Unlock()

	code := m.Run()

	shared.Lock()
	defer shared.Unlock()
	var err error
	if shared.c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		err = shared.c.Stop(ctx)
		cancel()
	}
	if shared.dir != "" {
		err = errors.Join(err, os.RemoveAll(shared.dir))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: shared cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// CreateDB creates a fresh uniquely named database in c and returns its
// name; it is dropped in t.Cleanup, together with any connections still
// using it. Useful to isolate tests on a shared cluster. Safe to call from
// parallel tests.
func CreateDB(t testing.TB, c *localproc.Cluster) string {
	t.Helper()
	name := dbName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := adminExec(ctx, c, "CREATE DATABASE "+quoteIdent(name)); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE (Postgres 13+) so a connection a test left open doesn't
		// keep the database alive.
		if err := adminExec(ctx, c, "DROP DATABASE IF EXISTS "+quoteIdent(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return name
}

// dbName derives a readable, unique database name from a test name: the
// sanitised test name (so leftovers are traceable) plus random hex.
func dbName(test string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	prefix := b.String()
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	raw := make([]byte, 6)
	_, _ = rand.Read(raw) // never fails on Linux
	return "t_" + prefix + "_" + hex.EncodeToString(raw)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func adminExec(ctx context.Context, c *localproc.Cluster, sql string) error {
	conn, err := pgconn.Connect(ctx, c.AdminDSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql).ReadAll()
	return err
}

// waiterFunc is the goroutine that reaps a cluster's postmaster: it lives
// as long as the cluster, which for Shared is the whole test binary.
const waiterFunc = "github.com/pgtenant/pgtenant/internal/localproc.(*Cluster).waitPostmaster"

// CheckGoroutines fails t if goroutines started during the test are still
// running when it ends (after the test's later-registered cleanups, so
// call it first). Goroutines that existed at the call are ignored, as are
// clusters' postmaster waiters, which legitimately outlive tests. pgxpool's
// health checker is not ignored: it stops in Pool.Close, so seeing it means
// a pool was leaked. Goroutines of parallel tests (t.Parallel) look like
// leaks, so don't use it in those.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction(waiterFunc)}
	t.Cleanup(func() {
		if err := goleak.Find(opts...); err != nil {
			t.Error(err)
		}
	})
}

// NewDB creates an empty database on the shared cluster, dropped when t
// ends, and returns its admin DSN.
func NewDB(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	return c.AdminDSN(CreateDB(t, c))
}

// NewPool opens a pool on dsn, closed when t ends.
func NewPool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
