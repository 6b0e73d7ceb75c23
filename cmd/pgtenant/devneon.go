package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/provision/neon/neontest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// neonFakeCatalog is the catalog database of `dev --provider neon-fake`. The
// fake Neon API keeps its state in memory, so the catalog starts empty on
// every run too: routes to branches of an earlier run would lead nowhere.
const neonFakeCatalog = "pgtenant_neonfake_catalog"

// devBranchLimit is the fake's branches per project in dev.
const devBranchLimit = 500

// neonFake is the fake Neon API that `pgtenant dev --provider neon-fake`
// runs in-process on the dev cluster, and the provider that talks to it.
type neonFake struct {
	srv     *neontest.Server
	backend *neontest.Backend
	project string
	apiKey  string
	parts   *router.Upstream
}

// startNeonFake starts the fake API (operations take opDelay each), creates
// the template project tenants are branched from, and returns the router's
// provider and upstream settings for it: the real Neon client, TLS
// verify-full with SNI against the fake's CA, dialled to the fake's compute
// proxy.
func startNeonFake(ctx context.Context, cl *localproc.Cluster, templateSQL string, opDelay time.Duration, log *slog.Logger) (*neonFake, error) {
	backend, err := neontest.NewBackendConfig(ctx, neontest.BackendConfig{
		AdminDSN:    cl.AdminDSN("postgres"),
		TemplateSQL: templateSQL,
		Log:         log,
	})
	if err != nil {
		return nil, err
	}
	key := "napi_" + rand.Text()
	srv, err := neontest.NewServer(ctx, neontest.Config{
		APIKey: key, Backend: backend, OpDelay: opDelay, Log: log,
		BranchLimit: devBranchLimit, // as a paid plan allows; the Free plan's 10 would stop at 9 tenants
	})
	if err != nil {
		backend.Close()
		return nil, err
	}
	f := &neonFake{srv: srv, backend: backend, apiKey: key}
	proj, err := srv.CreateProject(ctx, "pgtenant-templates")
	if err != nil {
		f.close()
		return nil, fmt.Errorf("neon-fake: template project: %w", err)
	}
	f.project = proj.Project.ID
	p, err := neon.New(neon.Config{
		BaseURL:        srv.URL(),
		APIKey:         key,
		Mode:           neon.ModeBranch,
		Projects:       []neon.BranchProject{{ID: proj.Project.ID}},
		OpPollInterval: min(opDelay/2, 100*time.Millisecond),
		Log:            log,
	})
	if err != nil {
		f.close()
		return nil, err
	}
	f.parts = &router.Upstream{
		Provider: p,
		Proxy: proxy.UpstreamConfig{
			TLS:           proxy.TLSVerifyFull,
			RootCAs:       srv.CAPool(),
			ForwardParams: router.NeonPoolerParams,
		},
		Dial:       srv.Dialer(),
		CatalogDSN: cl.AdminDSN(neonFakeCatalog),
		Close:      p.CloseIdleConnections,
	}
	if err := resetDatabase(ctx, cl.AdminDSN("postgres"), neonFakeCatalog); err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *neonFake) close() {
	f.srv.Close()
	f.backend.Close()
}

func (f *neonFake) what() string { return "Neon branch (fake, in memory: gone when dev stops)" }

func (f *neonFake) banner(w io.Writer) {
	fmt.Fprintf(w, "  neon-fake %s   (API key: %s; template project %s, up to %d branches)\n",
		f.srv.URL(), f.apiKey, f.project, devBranchLimit)
}

// resetDatabase drops (closing its sessions) and creates database db.
func resetDatabase(ctx context.Context, adminDSN, db string) error {
	c, err := pgconn.Connect(ctx, adminDSN)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	name := pgx.Identifier{db}.Sanitize()
	for _, sql := range []string{"DROP DATABASE IF EXISTS " + name + " WITH (FORCE)", "CREATE DATABASE " + name} {
		if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
			return fmt.Errorf("neon-fake catalog: %w", err)
		}
	}
	return nil
}
