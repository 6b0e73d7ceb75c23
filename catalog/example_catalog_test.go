package catalog_test

import (
	"context"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// How cmd/pgtenant wires a resolver to the shared catalog. (Not run: it
// needs a control database.)
func ExampleOpen() {
	ctx := context.Background()
	key, err := catalog.ParseKey(os.Getenv("PGTENANT_CATALOG_KEY")) // made once with NewKey
	if err != nil {
		log.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, os.Getenv("PGTENANT_CATALOG_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cat, err := catalog.Open(ctx, pool, key) // creates schema pgtenant if missing
	if err != nil {
		log.Fatal(err)
	}

	var p provision.Provider // provision/local, provision/neon, ...; nil turns auto-creation off
	r := resolver.New(resolver.Config{TTL: 5 * time.Minute, Log: slog.Default()}, cat, p)
	defer r.Close()

	rt, err := r.Resolve(ctx, "acme")
	if err != nil {
		log.Fatal(err)
	}
	log.Println("acme is at", rt.Addr(), "via", rt.Via)
}
