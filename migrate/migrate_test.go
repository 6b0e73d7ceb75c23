package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/migrate"
)

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// Each migration also appends its number to table runs, so that a tenant's
// runs show how often each one really ran, besides the version table.
var standard = []struct{ name, sql string }{
	{"0001_price.sql", "ALTER TABLE items ADD COLUMN price numeric;\nCREATE TABLE runs (n int);\nINSERT INTO runs VALUES (1);\n"},
	{"0002_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY, item int REFERENCES items);\nINSERT INTO runs VALUES (2);\n"},
	{"0003_index.sql", migrate.NoTransactionMarker + "\nCREATE INDEX CONCURRENTLY orders_item ON orders (item);\nINSERT INTO runs VALUES (3);\n"},
}

func (f *fleet) writeStandard(n int) {
	for _, m := range standard[:n] {
		f.write(m.name, m.sql)
	}
}

// checkAt checks tenant's database, not the catalog: each migration up to v
// recorded once and run once, its schema there, owned by the tenant's role.
func (f *fleet) checkAt(tenant string, v int) {
	f.t.Helper()
	want := map[int64]int{}
	var runs []string
	for i := 1; i <= v; i++ {
		want[int64(i)] = 1
		runs = append(runs, fmt.Sprint(i))
	}
	got := f.versions(tenant)
	maps.DeleteFunc(got, func(k int64, _ int) bool { return k > int64(len(standard)) })
	if !maps.Equal(got, want) && !(v == 0 && got == nil) {
		f.t.Errorf("%s: version table %v, want %v", tenant, got, want)
	}
	if v == 0 {
		return
	}
	if got := f.scalar(tenant, `SELECT string_agg(n::text, ',' ORDER BY n) FROM runs`); got != strings.Join(runs, ",") {
		f.t.Errorf("%s: migrations ran %q, want %q", tenant, got, strings.Join(runs, ","))
	}
	schema := f.scalar(tenant, `SELECT concat_ws(' ',
		(SELECT 'price' FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'price'),
		(SELECT 'orders' FROM pg_tables WHERE tablename = 'orders'),
		(SELECT 'index' FROM pg_index WHERE indexrelid = to_regclass('orders_item') AND indisvalid))`)
	if want := strings.Join([]string{"price", "orders", "index"}[:v], " "); schema != want {
		f.t.Errorf("%s: schema has %q, want %q", tenant, schema, want)
	}
	role := f.cfg.Prefix + tenant
	if got := f.scalar(tenant, `SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'public'`); got != role {
		f.t.Errorf("%s: tables owned by %q, want %q", tenant, got, role)
	}
}

func TestUp(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := newFleet(t, 5)
	ctx := t.Context()
	f.writeStandard(3)
	var mu sync.Mutex
	var progress []migrate.Progress
	rep, err := f.migrator(nil).Up(ctx, migrate.UpOptions{Concurrency: 2, Canary: 1, Progress: func(p migrate.Progress) {
		mu.Lock()
		defer mu.Unlock()
		progress = append(progress, p)
	}})
	if err != nil || !rep.OK() {
		t.Fatalf("Up: %v %+v", err, rep)
	}
	if rep.Target != 3 || rep.Done != 5 || rep.Total != 5 || rep.Applied != 3*6 || rep.Template == nil || rep.Template.To != 3 {
		t.Fatalf("report %+v (template %+v)", rep, rep.Template)
	}
	if len(progress) != 5 || progress[4] != (migrate.Progress{Done: 5, Total: 5}) {
		t.Fatalf("progress %v", progress)
	}
	for _, tenant := range f.tenants {
		f.checkAt(tenant, 3)
	}

	// A tenant created now is born at the target, owning its schema.
	f.create("late")
	f.checkAt("late", 3)
	m := f.migrator(nil)
	if res, err := m.EnsureTenant(ctx, "late"); err != nil || res != (migrate.Result{From: 3, To: 3}) {
		t.Fatalf("EnsureTenant(late) = %+v, %v", res, err)
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Target != 3 || st.Tenants != 6 || st.Unknown != 0 || !maps.Equal(st.Versions, map[int64]int{3: 6}) ||
		len(st.Templates) != 1 || st.Templates[0].Version != 3 || len(st.Failed)+len(st.Running) != 0 {
		t.Fatalf("status %+v", st)
	}
	// A second run has nothing to do.
	rep, err = m.Up(ctx, migrate.UpOptions{})
	if err != nil || !rep.OK() || rep.Applied != 0 || rep.Done != 6 {
		t.Fatalf("second Up: %v %+v", err, rep)
	}
}

func TestUpTo(t *testing.T) {
	f := newFleet(t, 2)
	ctx := t.Context()
	f.writeStandard(3)
	m := f.migrator(nil)
	if _, err := m.Up(ctx, migrate.UpOptions{To: 4}); err == nil {
		t.Fatal("Up to a version beyond the files")
	}
	rep, err := m.Up(ctx, migrate.UpOptions{To: 2, Tenants: []string{"t01"}})
	if err != nil || !rep.OK() || rep.Template != nil || rep.Total != 1 {
		t.Fatalf("Up: %v %+v", err, rep)
	}
	f.checkAt("t00", 0)
	f.checkAt("t01", 2)
	st, err := m.Status(ctx)
	if err != nil || st.Unknown != 1 || !maps.Equal(st.Versions, map[int64]int{2: 1}) || len(st.Templates) != 0 {
		t.Fatalf("status %+v, %v", st, err)
	}
}

func TestDryRun(t *testing.T) {
	f := newFleet(t, 3)
	ctx := t.Context()
	f.writeStandard(2)
	m := f.migrator(nil)
	rep, err := m.Up(ctx, migrate.UpOptions{DryRun: true})
	if err != nil || !rep.OK() || rep.Applied != 2*4 || rep.Done != 3 {
		t.Fatalf("dry run: %v %+v", err, rep)
	}
	for _, tenant := range f.tenants {
		f.checkAt(tenant, 0)
	}
	st, err := m.Status(ctx)
	if err != nil || len(st.Registered) != 0 || len(st.Unregistered) != 2 || st.Unknown != 3 || len(st.Templates) != 0 {
		t.Fatalf("status after a dry run %+v, %v", st, err)
	}
}

func TestChecksumRefused(t *testing.T) {
	f := newFleet(t, 2)
	ctx := t.Context()
	f.writeStandard(2)
	if rep, err := f.migrator(nil).Up(ctx, migrate.UpOptions{}); err != nil || !rep.OK() {
		t.Fatalf("Up: %v %+v", err, rep)
	}
	f.write("0002_orders.sql", standard[1].sql+"-- edited\n")
	f.write("0003_index.sql", standard[2].sql)
	m := f.migrator(nil)
	for name, call := range map[string]func() error{
		"Up":           func() error { _, err := m.Up(ctx, migrate.UpOptions{}); return err },
		"dry run":      func() error { _, err := m.Up(ctx, migrate.UpOptions{DryRun: true}); return err },
		"EnsureTenant": func() error { _, err := m.EnsureTenant(ctx, "t00"); return err },
		"Status":       func() error { _, err := m.Status(ctx); return err },
	} {
		err := call()
		var ce *catalog.ChecksumError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "0002_orders.sql") ||
			!strings.Contains(err.Error(), ce.Got[:12]) || !strings.Contains(err.Error(), ce.Registered[:12]) {
			t.Errorf("%s with an edited file: %v", name, err)
		}
	}
	for _, tenant := range f.tenants {
		f.checkAt(tenant, 2)
	}
}

// A tenant whose migration fails stops its wave; every tenant stays at a
// version it committed, and the next run resumes.
func TestFailureStopsWave(t *testing.T) {
	f := newFleet(t, 6)
	ctx := t.Context()
	f.writeStandard(2)
	// t02 has a table of its own in the way of 0002.
	if _, err := f.conn("t02").Exec(ctx, "CREATE TABLE orders (x int)"); err != nil {
		t.Fatal(err)
	}
	m := f.migrator(nil)
	rep, err := m.Up(ctx, migrate.UpOptions{Concurrency: 1, MaxFailShare: 0})
	if err != nil || rep.OK() || len(rep.Failed) != 1 || rep.Failed[0].Name != "t02" || rep.Failed[0].Version != 1 ||
		rep.Done != 2 || rep.NotRun != 3 || !strings.Contains(rep.Stopped, "1 of the wave's 6") {
		t.Fatalf("Up: %v %+v", err, rep)
	}
	if e := rep.Failed[0].Err.Error(); !strings.Contains(e, "0002_orders.sql") || !strings.Contains(e, "already exists") {
		t.Fatalf("failure: %v", e)
	}
	f.checkAt("t00", 2)
	f.checkAt("t01", 2)
	if got := f.versions("t02"); !maps.Equal(got, map[int64]int{1: 1}) {
		t.Fatalf("t02 at %v, want 0001 alone (0002 rolled back)", got)
	}
	if got := f.scalar("t02", "SELECT string_agg(n::text, ',') FROM runs"); got != "1" {
		t.Fatalf("t02 runs %q", got)
	}
	for _, tenant := range f.tenants[3:] {
		f.checkAt(tenant, 0)
	}
	st, err := m.Status(ctx)
	if err != nil || len(st.Failed) != 1 || st.Failed[0].Name != "t02" || !strings.Contains(st.Failed[0].Error, "already exists") ||
		!maps.Equal(st.Versions, map[int64]int{1: 1, 2: 2}) || st.Unknown != 3 {
		t.Fatalf("status %+v, %v", st, err)
	}

	// A share of 0.5 lets the wave go on past t02.
	rep, err = m.Up(ctx, migrate.UpOptions{Concurrency: 3, MaxFailShare: 0.5})
	if err != nil || len(rep.Failed) != 1 || rep.Done != 5 || rep.NotRun != 0 || rep.Stopped != "" {
		t.Fatalf("Up with share 0.5: %v %+v", err, rep)
	}
	// Fixed, the next run finishes it.
	if _, err := f.conn("t02").Exec(ctx, "DROP TABLE orders"); err != nil {
		t.Fatal(err)
	}
	rep, err = m.Up(ctx, migrate.UpOptions{})
	if err != nil || !rep.OK() || rep.Applied != 1 {
		t.Fatalf("resumed Up: %v %+v", err, rep)
	}
	for _, tenant := range f.tenants {
		f.checkAt(tenant, 2)
	}
}

// A run cancelled mid-way and run again: every migration applied exactly
// once everywhere.
func TestResumeAfterCancel(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := newFleet(t, 8)
	f.writeStandard(3)
	f.write("0004_slow.sql", "SELECT pg_sleep(0.2);\nALTER TABLE orders ADD note text;\n")
	m := f.migrator(nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	rep, err := m.Up(ctx, migrate.UpOptions{Concurrency: 3, Progress: func(p migrate.Progress) {
		if p.Done == 2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || rep.Stopped != "interrupted" || rep.Done >= 8 || rep.NotRun == 0 || len(rep.Failed) != 0 {
		t.Fatalf("cancelled Up: %v %+v", err, rep)
	}
	rep, err = m.Up(t.Context(), migrate.UpOptions{Concurrency: 3})
	if err != nil || !rep.OK() {
		t.Fatalf("resumed Up: %v %+v", err, rep)
	}
	for _, tenant := range f.tenants {
		f.checkAt(tenant, 3)
		if got := f.versions(tenant)[4]; got != 1 {
			t.Errorf("%s: 0004 recorded %d times", tenant, got)
		}
		if got := f.scalar(tenant, "SELECT count(*)::text FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'"); got != "1" {
			t.Errorf("%s: orders.note %s", tenant, got)
		}
	}
}

// Two runners at once, as two processes would (each its own catalog pool):
// every tenant migrated once.
func TestConcurrentRunners(t *testing.T) {
	f := newFleet(t, 6)
	f.writeStandard(3)
	runners := []*migrate.Migrator{f.migrator(nil), f.migrator(openCatalog(t, f.catalogDSN, f.key))}
	reps := make([]*migrate.Report, 2)
	var wg sync.WaitGroup
	for i, m := range runners {
		wg.Go(func() {
			var err error
			reps[i], err = m.Up(t.Context(), migrate.UpOptions{Concurrency: 3})
			if err != nil {
				t.Error(err)
			}
		})
	}
	// And a catch-up of one tenant, as on connect.
	wg.Go(func() {
		if _, err := runners[0].EnsureTenant(t.Context(), "t03"); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	for _, rep := range reps {
		if rep == nil || !rep.OK() {
			t.Fatalf("reports %+v %+v", reps[0], reps[1])
		}
	}
	for _, tenant := range f.tenants {
		f.checkAt(tenant, 3)
	}
}

// A migration outside a transaction found started and not done is not run
// again: the tenant needs attention.
func TestNoTransactionNeedsAttention(t *testing.T) {
	f := newFleet(t, 2)
	ctx := t.Context()
	f.writeStandard(2)
	m := f.migrator(nil)
	if rep, err := m.Up(ctx, migrate.UpOptions{}); err != nil || !rep.OK() {
		t.Fatalf("Up: %v %+v", err, rep)
	}
	f.writeStandard(3)
	files, err := migrate.Load(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	// As a runner killed inside 0003 leaves t01.
	if _, err := f.conn("t01").Exec(ctx, `INSERT INTO pgtenant_migrations (version, file, checksum, state, backend_pid)
		VALUES (3, '0003_index.sql', $1, 'started', 0)`, files[2].Checksum); err != nil {
		t.Fatal(err)
	}
	m = f.migrator(nil)
	rep, err := m.Up(ctx, migrate.UpOptions{MaxFailShare: 1})
	var ae *migrate.AttentionError
	if err != nil || len(rep.Failed) != 1 || rep.Failed[0].Name != "t01" || !errors.As(rep.Failed[0].Err, &ae) ||
		!strings.Contains(ae.Error(), "needs attention") || rep.Failed[0].Version != 2 {
		t.Fatalf("Up: %v %+v", err, rep)
	}
	f.checkAt("t00", 3)
	if got := f.scalar("t01", "SELECT string_agg(n::text, ',' ORDER BY n) FROM runs"); got != "1,2" {
		t.Fatalf("t01 ran %q", got)
	}
	// The operator finishes it by hand and marks it done.
	if _, err := f.conn("t01").Exec(ctx, `CREATE INDEX orders_item ON orders (item); INSERT INTO runs VALUES (3);
		UPDATE pgtenant_migrations SET state = 'done' WHERE version = 3`); err != nil {
		t.Fatal(err)
	}
	if rep, err := m.Up(ctx, migrate.UpOptions{}); err != nil || !rep.OK() || rep.Applied != 0 {
		t.Fatalf("Up after the fix: %v %+v", err, rep)
	}
	f.checkAt("t01", 3)
}
