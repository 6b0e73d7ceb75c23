package local_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/provision/local"
)

// Example starts a throwaway cluster (as `pgtenant dev` does), prepares the
// template with the application's schema, provisions tenant "acme", logs in
// as it, and deletes it. It needs the PostgreSQL server binaries.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pgtenant-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	cluster, err := localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: dir, Settings: map[string]string{"fsync": "off"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Stop(ctx)

	admin, err := pgxpool.New(ctx, cluster.AdminDSN("postgres"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer admin.Close()
	p := local.New(local.Config{Host: cluster.Host(), Port: cluster.Port()}, admin)

	created, err := p.EnsureTemplate(ctx, `CREATE TABLE notes (body text);
		INSERT INTO notes VALUES ('hello from the template');`)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("template created:", created)

	ep, err := p.Create(ctx, "acme")
	if err != nil {
		fmt.Println(err)
		return
	}
	// The router stores ep in its catalog and logs in to the tenant with it.
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		fmt.Println(err)
		return
	}
	cfg.Host, cfg.Port, cfg.Database = ep.Host, ep.Port, ep.Database
	cfg.User, cfg.Password = ep.User, ep.Password
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	var db, user, body string
	err = conn.QueryRow(ctx, "SELECT current_database(), current_user, body FROM notes").Scan(&db, &user, &body)
	conn.Close(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s as %s: %s\n", db, user, body)

	if err := p.Delete(ctx, "acme"); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("deleted")
	// Output:
	// template created: true
	// t_acme as t_acme: hello from the template
	// deleted
}
