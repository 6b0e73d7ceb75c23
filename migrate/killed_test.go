package migrate_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision/local"
)

// helperEnv makes the test binary, re-executed by TestKillResume, a
// migration runner (runHelper) instead of the tests. Its value is the
// fleet: catalog DSN, catalog key, admin DSN, template, prefix and
// migrations directory, separated by newlines.
const helperEnv = "PGTENANT_MIGRATE_TEST_HELPER"

// helperConcurrencyEnv, when set, is the helper's Up concurrency (default 2).
const helperConcurrencyEnv = "PGTENANT_MIGRATE_TEST_HELPER_CONCURRENCY"

// runHelper runs Up over the fleet in helperEnv until it is done or killed.
func runHelper() int {
	parts := strings.Split(os.Getenv(helperEnv), "\n")
	if len(parts) != 6 {
		fmt.Fprintln(os.Stderr, "helper: bad", helperEnv)
		return 2
	}
	catDSN, key, adminDSN, tmpl, prefix, dir := parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]
	err := func() error {
		ctx := context.Background()
		k, err := catalog.ParseKey(key)
		if err != nil {
			return err
		}
		conc := 2
		if v, err := strconv.Atoi(os.Getenv(helperConcurrencyEnv)); err == nil && v > 0 {
			conc = v
		}
		pc, err := pgxpool.ParseConfig(catDSN)
		if err != nil {
			return err
		}
		pc.MaxConns = int32(conc + 2) // a catalog connection per database being migrated
		catPool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			return err
		}
		defer catPool.Close()
		cat, err := catalog.Open(ctx, catPool, k)
		if err != nil {
			return err
		}
		admin, err := pgxpool.New(ctx, adminDSN)
		if err != nil {
			return err
		}
		defer admin.Close()
		p := local.New(local.Config{Template: tmpl, Prefix: prefix}, admin)
		files, err := migrate.Load(dir)
		if err != nil {
			return err
		}
		m := migrate.New(migrate.Config{Catalog: cat, Files: files,
			Template: &migrate.Template{Name: p.TemplateName(), Connect: p.ConnectTemplate}})
		rep, err := m.Up(ctx, migrate.UpOptions{Concurrency: conc})
		if err == nil && !rep.OK() {
			err = fmt.Errorf("report %+v", rep)
		}
		return err
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// A runner killed with SIGKILL half-way, then another run: every tenant at
// the target, each migration applied exactly once (its schema checked, not
// only the records).
func TestKillResume(t *testing.T) {
	f := newFleet(t, 8)
	f.writeStandard(3)
	f.write("0004_slow.sql", "SELECT pg_sleep(0.3);\nALTER TABLE orders ADD note text;\n")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join([]string{f.catalogDSN, f.key, f.adminDSN, f.cfg.Template, f.cfg.Prefix, f.dir}, "\n"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx := t.Context()
	poll.Until(t, 2*time.Minute, "half the tenants migrated by the helper", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("helper exited before it was killed: %v\n%s", err, stderr.String())
		default:
		}
		states, err := f.cat.MigrationStates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range states {
			if s.Kind == catalog.MigrationTenant && s.Status == catalog.MigrationOK && s.Version == 4 {
				n++
			}
		}
		return n >= 4
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("helper: %v (finished before the kill?)", err)
	}
	st, err := f.migrator(nil).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Versions[4] == len(f.tenants) {
		t.Fatalf("every tenant done before the kill: %+v", st)
	}
	t.Logf("killed at %v (unknown %d, running %d)", st.Versions, st.Unknown, len(st.Running))

	rep, err := f.migrator(nil).Up(ctx, migrate.UpOptions{Concurrency: 2})
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
