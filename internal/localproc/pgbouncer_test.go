package localproc_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestPgBouncer starts PgBouncer in both pool modes in front of a cluster,
// logs in through it with SCRAM, and stops it.
func TestPgBouncer(t *testing.T) {
	pgtest.CheckGoroutines(t)
	if _, ok := localproc.HavePgBouncer(); !ok {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal("pgbouncer is not installed; CI installs it (scripts/install-deps.sh)")
		}
		t.Skip("pgbouncer is not installed")
	}
	c := startCluster(t, localproc.ClusterConfig{Dir: clusterDir(t)})
	db := pgtest.CreateDB(t, c)
	// Not t.TempDir (0700): as root, pgbouncer runs as postgres and must
	// traverse it.
	dir, err := os.MkdirTemp("", "localproc-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, mode := range []string{localproc.PoolSession, localproc.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			b, err := localproc.StartPgBouncer(ctx, localproc.PgBouncerConfig{
				Dir:             dir,
				Name:            mode,
				ServerPort:      c.Port(),
				AuthUser:        c.AdminUser(),
				AuthPassword:    c.AdminPassword(),
				PoolMode:        mode,
				DefaultPoolSize: 2,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Stop(context.Background()) })
			if b.PoolMode() != mode || b.PID() <= 0 || b.Port() == 0 || b.Port() > 32767 {
				t.Errorf("%v: mode %s, pid %d, port %d", b, b.PoolMode(), b.PID(), b.Port())
			}
			if strings.Contains(b.String(), c.AdminPassword()) {
				t.Error("String shows the password")
			}

			dsn := func(pw string) string {
				return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", c.AdminUser(), pw, b.Addr(), db)
			}
			conn, err := pgconn.Connect(ctx, dsn(c.AdminPassword()))
			if err != nil {
				t.Fatalf("connect through pgbouncer: %v", err)
			}
			res, err := conn.Exec(ctx, "SELECT current_database()").ReadAll()
			if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != db {
				t.Errorf("current_database() through pgbouncer: %v, %v; want %s", res, err, db)
			}
			_ = conn.Close(ctx)
			if _, err := pgconn.Connect(ctx, dsn("wrong")); err == nil {
				t.Error("pgbouncer let a wrong password in")
			}

			if err := b.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case <-b.Done():
			default:
				t.Error("Done is open after Stop")
			}
			if err := b.Stop(ctx); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

func TestPgBouncerConfigValidate(t *testing.T) {
	ok := localproc.PgBouncerConfig{Dir: "/tmp/x", ServerPort: 5432, AuthUser: "postgres", AuthPassword: "pw"}
	tests := []struct {
		name string
		edit func(*localproc.PgBouncerConfig)
		want string
	}{
		{"valid", func(*localproc.PgBouncerConfig) {}, ""},
		{"no dir", func(c *localproc.PgBouncerConfig) { c.Dir = "" }, "Dir is required"},
		{"no server", func(c *localproc.PgBouncerConfig) { c.ServerPort = 0 }, "ServerPort is required"},
		{"no auth user", func(c *localproc.PgBouncerConfig) { c.AuthPassword = "" }, "AuthUser and AuthPassword"},
		{"pool mode", func(c *localproc.PgBouncerConfig) { c.PoolMode = "batch" }, `PoolMode "batch"`},
		{"space in dir", func(c *localproc.PgBouncerConfig) { c.Dir = "/tmp/a b" }, "spaces"},
		{"port", func(c *localproc.PgBouncerConfig) { c.Port = 70000 }, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestPgBouncerUnknownOSUser: as root, pgbouncer runs as OSUser, and a user
// that does not exist is an error saying how to create it, as for clusters.
func TestPgBouncerUnknownOSUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only applies when running as root")
	}
	if _, ok := localproc.HavePgBouncer(); !ok {
		t.Skip("pgbouncer is not installed")
	}
	_, err := localproc.StartPgBouncer(context.Background(), localproc.PgBouncerConfig{
		Dir: t.TempDir(), ServerPort: 5432, AuthUser: "postgres", AuthPassword: "pw", OSUser: "pgtenant-no-such-user",
	})
	if err == nil || !strings.Contains(err.Error(), "useradd") || !strings.Contains(err.Error(), "PgBouncerConfig.OSUser") {
		t.Fatalf("got %v, want an error saying how to create the user", err)
	}
}
