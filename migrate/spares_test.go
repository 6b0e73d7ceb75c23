package migrate_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision/local"
)

// spareNames lists the spare databases made from f's template, ready or not.
func (f *fleet) spareNames() []string {
	f.t.Helper()
	rows, err := f.admin.Query(f.t.Context(), `SELECT datname FROM pg_database
		WHERE datname LIKE 'pgtenant\_spare\_%' AND shobj_description(oid, 'pg_database') LIKE '%template ' || $1 || '%'
		ORDER BY datname`, f.cfg.Template)
	if err != nil {
		f.t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		f.t.Fatal(err)
	}
	return names
}

// Spares cloned before the template was migrated are never handed out: a
// tenant created after the migration is born current, and the stale spares
// are dropped and replaced.
func TestSparesFollowTheTemplate(t *testing.T) {
	f := newFleet(t, 0)
	f.cfg.Spares = 2
	f.p = local.New(f.cfg, f.admin)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.p.RunSpares(ctx, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { cancel(); <-done })
	var stale []string
	poll.Until(t, time.Minute, "2 spares", func() bool {
		stale = f.spareNames()
		return len(stale) == 2
	})

	f.write("0001_add_note.sql", "ALTER TABLE items ADD COLUMN note text")
	files, err := migrate.Load(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	m := migrate.New(migrate.Config{Catalog: f.cat, Files: files,
		Template: &migrate.Template{Name: f.p.TemplateName(), Connect: f.p.ConnectTemplate, Migrated: f.p.SetTemplateVersion}})
	if rep, err := m.Up(t.Context(), migrate.UpOptions{}); err != nil || !rep.OK() {
		t.Fatalf("up: %+v %v", rep, err)
	}

	f.create("late")
	if got := f.scalar("late", "SELECT count(*)::text FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'note'"); got != "1" {
		t.Fatalf("a tenant created after the migration lacks its column (got a stale spare?)")
	}
	poll.Until(t, time.Minute, "the stale spares replaced by 2 current ones", func() bool {
		now := f.spareNames()
		n, err := local.ReadySpares(t.Context(), f.admin, f.cfg.Template)
		return err == nil && n == 2 && len(now) == 2 && !slices.ContainsFunc(now, func(s string) bool { return slices.Contains(stale, s) })
	})
}
