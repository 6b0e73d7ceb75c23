package migrate_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision"
)

// measureEnv sets the fleet size of TestMeasureFleetMigration, the
// measurement in BENCHMARKS.md ("Migrating a fleet"); unset, the test is
// skipped (CI runs the same code paths at small sizes in the other tests).
const measureEnv = "PGTENANT_MIGRATE_MEASURE"

// TestMeasureFleetMigration migrates N tenant databases with one ALTER
// TABLE ... ADD COLUMN and one CREATE INDEX, with Up at concurrency 1, 4
// and 16, side by side with the baseline a team would write: a shell loop
// of `psql -f` over the same databases, run before and after. Then a run
// killed with SIGKILL half-way and resumed: every tenant's schema is
// checked, and every migration recorded exactly once.
//
//	PGTENANT_MIGRATE_MEASURE=1000 go test -count=1 -run TestMeasureFleetMigration -v -timeout 2h ./migrate/
func TestMeasureFleetMigration(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv(measureEnv))
	if n <= 0 {
		t.Skip("set " + measureEnv + "=N to migrate N tenant databases and time it")
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		psql = "/usr/lib/postgresql/15/bin/psql"
	}
	f := newFleet(t, 0)
	// Up holds a catalog connection per database it migrates.
	pc, err := pgxpool.ParseConfig(f.catalogDSN)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 24
	pool, err := pgxpool.NewWithConfig(t.Context(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	k, _ := catalog.ParseKey(f.key)
	if f.cat, err = catalog.Open(t.Context(), pool, k); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	tenants := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		tenants[i] = fmt.Sprintf("t%04d", i)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, _, err := f.cat.Ensure(t.Context(), tenants[i], "local", func(ctx context.Context) (provision.Endpoint, error) {
				return f.p.Create(ctx, tenants[i])
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	f.tenants = tenants
	t.Logf("%d tenants created in %v", n, time.Since(start).Round(time.Second))

	f.write("0001_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY, amount int);\n"+
		"INSERT INTO orders SELECT g, g % 97 FROM generate_series(1, 200) g;\n")
	up := func(conc int) time.Duration {
		t.Helper()
		t0 := time.Now()
		rep, err := f.migrator(nil).Up(t.Context(), migrate.UpOptions{Concurrency: conc, Canary: 1, MaxFailShare: 0.1})
		if err != nil || !rep.OK() {
			t.Fatalf("Up: %v %+v", err, rep)
		}
		return time.Since(t0)
	}
	up(16)

	// The baseline: each tenant's DSN (its own role, as the migrations
	// run) in a file, one psql per database.
	var dsns strings.Builder
	for _, tenant := range tenants {
		ep, ok, err := f.cat.Lookup(t.Context(), tenant)
		if err != nil || !ok {
			t.Fatalf("lookup %s: %v", tenant, err)
		}
		fmt.Fprintf(&dsns, "host=%s port=%d dbname=%s user=%s password=%s sslmode=disable\n", ep.Host, ep.Port, ep.Database, ep.User, ep.Password)
	}
	dsnFile := filepath.Join(t.TempDir(), "dsns")
	if err := os.WriteFile(dsnFile, []byte(dsns.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	loop := func(col string) time.Duration {
		t.Helper()
		sql := filepath.Join(t.TempDir(), col+".sql")
		if err := os.WriteFile(sql, []byte(alterSQL(col)), 0o600); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		out, err := exec.CommandContext(t.Context(), "bash", "-c",
			`while read -r dsn; do "$0" -X -q -v ON_ERROR_STOP=1 -f "$1" "$dsn" || exit 1; done < "$2"`, psql, sql, dsnFile).CombinedOutput()
		if err != nil {
			t.Fatalf("psql loop: %v\n%s", err, out)
		}
		return time.Since(t0)
	}

	type row struct {
		name string
		d    time.Duration
	}
	var rows []row
	rows = append(rows, row{"psql -f loop (before)", loop("loop_a")})
	v := 2
	for _, conc := range []int{1, 4, 16} {
		col := fmt.Sprintf("c%d", conc)
		f.write(fmt.Sprintf("%04d_%s.sql", v, col), alterSQL(col))
		v++
		rows = append(rows, row{fmt.Sprintf("pgtenant migrate, concurrency %d", conc), up(conc)})
	}
	rows = append(rows, row{"psql -f loop (after)", loop("loop_b")})
	loopAvg := (rows[0].d + rows[len(rows)-1].d) / 2
	var b strings.Builder
	fmt.Fprintf(&b, "%d tenant databases, ADD COLUMN + CREATE INDEX each:\n", n)
	fmt.Fprintf(&b, "%-36s %10s %12s %16s\n", "", "wall", "tenants/s", "vs psql loop")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-36s %10v %12.1f %15.2fx\n", r.name, r.d.Round(10*time.Millisecond), float64(n)/r.d.Seconds(), loopAvg.Seconds()/r.d.Seconds())
	}
	t.Log("\n" + b.String())

	// Killed half-way, resumed.
	col := "killed"
	f.write(fmt.Sprintf("%04d_%s.sql", v, col), alterSQL(col))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join([]string{f.catalogDSN, f.key, f.adminDSN, f.cfg.Template, f.cfg.Prefix, f.dir}, "\n"),
		helperConcurrencyEnv+"=16")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	done := 0
	poll.Until(t, 30*time.Minute, "half the tenants migrated by the runner", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("runner exited before it was killed: %v\n%s", err, stderr.String())
		default:
		}
		states, err := f.cat.MigrationStates(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		done = 0
		for _, s := range states {
			if s.Kind == catalog.MigrationTenant && s.Status == catalog.MigrationOK && s.Version == int64(v) {
				done++
			}
		}
		return done >= n/2
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("runner: %v (finished before the kill?)", err)
	}
	t.Logf("runner killed with %d of %d tenants recorded at version %d", done, n, v)
	t0 := time.Now()
	if d := up(16); d > 0 {
		t.Logf("resumed run: %v", time.Since(t0).Round(time.Millisecond))
	}
	// Every tenant's own database: each version recorded once, the killed
	// run's column and index there once.
	bad := 0
	for _, tenant := range tenants {
		ep, ok, err := f.cat.Lookup(t.Context(), tenant)
		if err != nil || !ok {
			t.Fatalf("lookup %s: %v", tenant, err)
		}
		conn, err := migrate.ConnectEndpoint(nil)(t.Context(), tenant, ep)
		if err != nil {
			t.Fatal(err)
		}
		var wrong, column, index int
		err = conn.QueryRow(t.Context(), `SELECT
			(SELECT count(*) FROM (SELECT version FROM pgtenant_migrations WHERE state = 'done' GROUP BY version HAVING count(*) <> 1) x)
			+ $1 - (SELECT count(DISTINCT version) FROM pgtenant_migrations WHERE state = 'done' AND version <= $1),
			(SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'killed'),
			(SELECT count(*) FROM pg_indexes WHERE tablename = 'orders' AND indexname = 'orders_killed_idx')`, v).Scan(&wrong, &column, &index)
		_ = conn.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if wrong != 0 || column != 1 || index != 1 {
			bad++
			t.Errorf("%s: %d versions not recorded exactly once; killed run's column %d, index %d (want 0, 1, 1)", tenant, wrong, column, index)
		}
	}
	t.Logf("after the resume: %d of %d tenants checked in their own database, %d wrong", n, n, bad)
}

// alterSQL is one migration of the measurement: a column and an index on it.
func alterSQL(col string) string {
	return fmt.Sprintf("ALTER TABLE orders ADD COLUMN %s int;\nCREATE INDEX orders_%s_idx ON orders (%s);\n", col, col, col)
}
