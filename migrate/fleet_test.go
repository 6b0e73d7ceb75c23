package migrate_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
)

// templateSQL is the schema the fleet starts from.
const templateSQL = `CREATE TABLE items (id int PRIMARY KEY)`

// fleet is a local provider on the shared cluster with its own template
// and prefix, a catalog, and tenants created through both.
type fleet struct {
	t          *testing.T
	catalogDSN string
	adminDSN   string
	key        string
	cat        *catalog.Catalog
	admin      *pgxpool.Pool
	p          *local.Provider
	cfg        local.Config
	tenants    []string
	dir        string // migrations
}

var seq atomic.Int32

func newFleet(t *testing.T, n int) *fleet {
	t.Helper()
	c := pgtest.Shared(t)
	k := seq.Add(1)
	f := &fleet{
		t:          t,
		catalogDSN: pgtest.NewDB(t),
		adminDSN:   c.AdminDSN("postgres"),
		key:        catalog.NewKey(),
		cfg:        local.Config{Template: fmt.Sprintf("mtmpl%02d_%d", k, os.Getpid()), Prefix: fmt.Sprintf("m%02d_", k)},
		dir:        t.TempDir(),
	}
	f.cat = openCatalog(t, f.catalogDSN, f.key)
	f.admin = pgtest.NewPool(t, f.adminDSN)
	f.p = local.New(f.cfg, f.admin)
	if _, err := f.p.EnsureTemplate(t.Context(), templateSQL); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		f.create(fmt.Sprintf("t%02d", i))
	}
	return f
}

func openCatalog(t *testing.T, dsn, key string) *catalog.Catalog {
	t.Helper()
	k, err := catalog.ParseKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(t.Context(), pgtest.NewPool(t, dsn), k)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// create makes a tenant as the router does: the provider creates it, the
// catalog records it.
func (f *fleet) create(tenant string) {
	f.t.Helper()
	_, _, err := f.cat.Ensure(f.t.Context(), tenant, "local", func(ctx context.Context) (provision.Endpoint, error) {
		return f.p.Create(ctx, tenant)
	})
	if err != nil {
		f.t.Fatal(err)
	}
	f.tenants = append(f.tenants, tenant)
}

// write puts a migration file in the fleet's directory.
func (f *fleet) write(name, sql string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(sql), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// migrator loads the directory into a Migrator on cat (f.cat if nil).
func (f *fleet) migrator(cat *catalog.Catalog) *migrate.Migrator {
	f.t.Helper()
	files, err := migrate.Load(f.dir)
	if err != nil {
		f.t.Fatal(err)
	}
	if cat == nil {
		cat = f.cat
	}
	return migrate.New(migrate.Config{
		Catalog:  cat,
		Files:    files,
		Template: &migrate.Template{Name: f.p.TemplateName(), Connect: f.p.ConnectTemplate},
	})
}

// conn logs in as tenant with its catalog route; closed when the test ends.
func (f *fleet) conn(tenant string) *pgx.Conn {
	f.t.Helper()
	ep, ok, err := f.cat.Lookup(f.t.Context(), tenant)
	if err != nil || !ok {
		f.t.Fatalf("lookup %s: %v %v", tenant, ok, err)
	}
	conn, err := migrate.ConnectEndpoint(nil)(f.t.Context(), tenant, ep)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// versions returns how many times each version is recorded in tenant's
// version table (nil if it has none).
func (f *fleet) versions(tenant string) map[int64]int {
	f.t.Helper()
	rows, err := f.conn(tenant).Query(f.t.Context(), `SELECT version, count(*) FROM pgtenant_migrations WHERE state = 'done' GROUP BY version`)
	if err != nil {
		if sqlState(err) == "42P01" {
			return nil
		}
		f.t.Fatal(err)
	}
	out := map[int64]int{}
	for rows.Next() {
		var v int64
		var n int
		if err := rows.Scan(&v, &n); err != nil {
			f.t.Fatal(err)
		}
		out[v] = n
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// scalar runs sql as tenant and returns its one text value.
func (f *fleet) scalar(tenant, sql string) string {
	f.t.Helper()
	var s string
	if err := f.conn(tenant).QueryRow(f.t.Context(), sql).Scan(&s); err != nil {
		f.t.Fatalf("%s: %s: %v", tenant, sql, err)
	}
	return s
}
