package catalog_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
)

func TestCatalogMigrations(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()

	mig := func(v int64, file, sum string) catalog.Migration {
		return catalog.Migration{Version: v, File: file, Checksum: strings.Repeat(sum, 64)}
	}
	m1, m2, m4 := mig(1, "0001_init.sql", "a"), mig(2, "0002_orders.sql", "b"), mig(4, "0004_index.sql", "c")
	if fresh, err := cat.CheckMigrations(ctx, []catalog.Migration{m1, m2}); err != nil || len(fresh) != 2 {
		t.Fatalf("CheckMigrations on an empty catalog: %v, %v", fresh, err)
	}
	if reg, _ := cat.Migrations(ctx); len(reg) != 0 {
		t.Fatalf("CheckMigrations registered %v", reg)
	}
	for range 2 { // idempotent
		if err := cat.RegisterMigrations(ctx, []catalog.Migration{m1, m2}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cat.RegisterMigrations(ctx, []catalog.Migration{m1, m2, m4}); err != nil {
		t.Fatal(err)
	}
	if reg, err := cat.Migrations(ctx); err != nil || len(reg) != 3 || reg[2] != m4 {
		t.Fatalf("Migrations = %v, %v", reg, err)
	}

	edited := mig(2, "0002_orders.sql", "d")
	tests := []struct {
		name  string
		files []catalog.Migration
		want  []string
	}{
		{"edited", []catalog.Migration{m1, edited, m4}, []string{"0002_orders.sql", "dddddddddddd", "bbbbbbbbbbbb", "new migration"}},
		{"missing", []catalog.Migration{m1, m4}, []string{"0002_orders.sql", "missing"}},
		{"renamed", []catalog.Migration{m1, mig(2, "0002_other.sql", "b"), m4}, []string{"0002_other.sql", "rename it back"}},
		{"new below the last", []catalog.Migration{m1, m2, mig(3, "0003_late.sql", "e"), m4}, []string{"0003_late.sql", "renumber"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cat.RegisterMigrations(ctx, tt.files)
			if err == nil {
				t.Fatal("registered")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
			if _, err := cat.CheckMigrations(ctx, tt.files); err == nil {
				t.Error("CheckMigrations took it")
			}
		})
	}
	var ce *catalog.ChecksumError
	if err := cat.RegisterMigrations(ctx, []catalog.Migration{m1, edited, m4}); !errors.As(err, &ce) || ce.Version != 2 {
		t.Fatalf("edited file: %v", err)
	}
	if reg, _ := cat.Migrations(ctx); len(reg) != 3 {
		t.Fatalf("a refused set changed the registry: %v", reg)
	}
}

func TestCatalogMigrationLock(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()

	var calls int
	if _, _, err := cat.Ensure(ctx, "acme", "local", created(endpoint("acme", "pw"), &calls)); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := cat.MigrationState(ctx, catalog.MigrationTenant, "acme"); err != nil || ok {
		t.Fatalf("state before any run: %v %v", ok, err)
	}
	l, err := cat.LockMigration(ctx, catalog.MigrationTenant, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetState(ctx, catalog.MigrationState{Version: 1, Status: catalog.MigrationRunning}); err != nil {
		t.Fatal(err)
	}
	// A second runner waits for the lock.
	var got atomic.Bool
	done := make(chan error, 1)
	go func() {
		l2, err := cat.LockMigration(ctx, catalog.MigrationTenant, "acme")
		if err == nil {
			got.Store(true)
			err = l2.SetState(ctx, catalog.MigrationState{Version: 2, Status: catalog.MigrationOK})
			l2.Unlock(ctx)
		}
		done <- err
	}()
	poll.Until(t, 20*time.Second, "the second runner waits", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n)
		return n == 1
	})
	if got.Load() {
		t.Fatal("two runners hold the lock")
	}
	if err := l.SetState(ctx, catalog.MigrationState{Version: 1, Status: catalog.MigrationFailed, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	l.Unlock(ctx)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st, ok, err := cat.MigrationState(ctx, catalog.MigrationTenant, "acme")
	if err != nil || !ok || st.Version != 2 || st.Status != catalog.MigrationOK || st.Error != "" {
		t.Fatalf("state = %+v %v %v", st, ok, err)
	}
	states, err := cat.MigrationStates(ctx)
	if err != nil || len(states) != 1 || states[0].Name != "acme" {
		t.Fatalf("states = %+v, %v", states, err)
	}
	// A tenant created again after its state was recorded has no state.
	if err := cat.Delete(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if states, _ := cat.MigrationStates(ctx); len(states) != 0 {
		t.Fatalf("deleted tenant's state listed: %+v", states)
	}
	if _, _, err := cat.Ensure(ctx, "acme", "local", created(endpoint("acme", "pw"), &calls)); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := cat.MigrationState(ctx, catalog.MigrationTenant, "acme"); ok {
		t.Fatal("a re-created tenant has its predecessor's state")
	}
	// A cancelled wait leaves no lock behind.
	l, err = cat.LockMigration(ctx, catalog.MigrationTemplate, "tmpl")
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := cat.LockMigration(cctx, catalog.MigrationTemplate, "tmpl"); err == nil {
		t.Fatal("took a held lock")
	}
	l.Unlock(ctx)
	l, err = cat.LockMigration(ctx, catalog.MigrationTemplate, "tmpl")
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock(ctx)
}
