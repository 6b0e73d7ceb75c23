package pgtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localproc"
)

func TestMain(m *testing.M) { Main(m) }

func connect(t *testing.T, dsn string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// query1 returns the single value sql selects.
func query1(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		t.Fatalf("%s: want a single value, got %d results", sql, len(res))
	}
	return string(res[0].Rows[0][0])
}

func TestStart(t *testing.T) {
	CheckGoroutines(t) // first, so the cluster is stopped before the check
	c := Start(t, map[string]string{"work_mem": "5MB"}, map[string]string{"max_connections": "50", "work_mem": "6MB"})
	conn := connect(t, c.AdminDSN("postgres"))
	for name, want := range map[string]string{
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "50", // overridden
		"work_mem":           "6MB",
	} {
		if got := query1(t, conn, "SHOW "+name); got != want {
			t.Errorf("SHOW %s = %q, want %q", name, got, want)
		}
	}
	if got := query1(t, conn, "SELECT 6 * 7"); got != "42" {
		t.Errorf("SELECT 6 * 7 = %s", got)
	}
	if c2 := Start(t); c2.Port() == c.Port() {
		t.Errorf("two Start clusters share port %d", c.Port())
	}
}

func TestSharedIsShared(t *testing.T) {
	c := Shared(t)
	if c2 := Shared(t); c2 != c {
		t.Fatal("Shared returned two clusters")
	}
	if got := query1(t, connect(t, c.AdminDSN("postgres")), "SHOW max_connections"); got != "300" {
		t.Errorf("max_connections = %s, want 300", got)
	}
}

func TestCreateDB(t *testing.T) {
	c := Shared(t)
	admin := connect(t, c.AdminDSN("postgres"))
	var name1, name2 string
	t.Run("sub", func(t *testing.T) {
		name1, name2 = CreateDB(t, c), CreateDB(t, c)
		if name1 == name2 {
			t.Fatalf("CreateDB returned %q twice", name1)
		}
		if !strings.HasPrefix(name1, "t_testcreatedb_sub_") {
			t.Errorf("name %q does not say which test made it", name1)
		}
		conn := connect(t, c.AdminDSN(name1))
		if got := query1(t, conn, "SELECT current_database()"); got != name1 {
			t.Errorf("connected to %q, want %q", got, name1)
		}
		// Left open on purpose: the drop must not be blocked by it.
		_ = conn
	})
	for _, name := range []string{name1, name2} {
		if got := query1(t, admin, fmt.Sprintf("SELECT count(*) FROM pg_database WHERE datname = '%s'", name)); got != "0" {
			t.Errorf("database %s still exists after its test", name)
		}
	}
}

func TestSharedParallel(t *testing.T) {
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			c := Shared(t)
			db := CreateDB(t, c)
			conn := connect(t, c.AdminDSN(db))
			if _, err := conn.Exec(context.Background(), fmt.Sprintf("CREATE TABLE t AS SELECT %d AS v", i)).ReadAll(); err != nil {
				t.Fatal(err)
			}
			if got := query1(t, conn, "SELECT sum(v) FROM t"); got != fmt.Sprint(i) {
				t.Errorf("database %s sees %s, want only its own row %d", db, got, i)
			}
		})
	}
}

// recorder is a testing.TB that records failures and cleanups instead of
// acting on them, to test helpers that must fail or skip a test.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	errors   []string
	skipped  bool
	fatal    bool
}

func (r *recorder) Helper()           {}
func (r *recorder) Cleanup(f func())  { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Error(args ...any) { r.record(fmt.Sprint(args...)) }
func (r *recorder) Errorf(format string, args ...any) {
	r.record(fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = true
	r.record(fmt.Sprintf(format, args...))
}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = true
	r.record(fmt.Sprintf(format, args...))
}

func (r *recorder) record(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, s)
}

func (r *recorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestMissingBinariesSkipOnlyOutsideCI(t *testing.T) {
	noPG := fmt.Errorf("%w: looked everywhere", localproc.ErrNoPostgres)
	other := errors.New("local: initdb failed")
	tests := []struct {
		name      string
		ci        string
		err       error
		wantSkip  bool
		wantFatal bool
	}{
		{"no binaries, laptop", "", noPG, true, false},
		{"no binaries, CI", "true", noPG, false, true},
		{"no binaries, CI=1", "1", noPG, false, true},
		{"broken install, laptop", "", other, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CI", tt.ci)
			r := &recorder{TB: t}
			skipOrFatal(r, tt.err)
			if r.skipped != tt.wantSkip || r.fatal != tt.wantFatal {
				t.Errorf("skipped, fatal = %v, %v; want %v, %v (%q)", r.skipped, r.fatal, tt.wantSkip, tt.wantFatal, r.errors)
			}
		})
	}
}

func TestCheckGoroutinesFindsLeak(t *testing.T) {
	r := &recorder{TB: t}
	CheckGoroutines(r)
	stop := make(chan struct{})
	defer close(stop)
	go leakedGoroutine(stop)
	r.runCleanups()
	if len(r.errors) == 0 || !strings.Contains(strings.Join(r.errors, "\n"), "leakedGoroutine") {
		t.Fatalf("leak not reported: %q", r.errors)
	}
}

func leakedGoroutine(stop chan struct{}) { <-stop }

func TestCheckGoroutinesIgnoresClusters(t *testing.T) {
	r := &recorder{TB: t}
	CheckGoroutines(r)
	// Registered on t, not r: this cluster (and its postmaster waiter)
	// is still running when r's leak check runs, like the shared one.
	c := Start(t)
	conn := connect(t, c.AdminDSN("postgres"))
	query1(t, conn, "SELECT 1")
	if err := conn.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.runCleanups()
	if len(r.errors) != 0 {
		t.Fatalf("false leak report: %q", r.errors)
	}
}
