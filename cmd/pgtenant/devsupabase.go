package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/provision/supabase/supabasetest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// supabaseFakeCatalog is the catalog database of `dev --provider
// supabase-fake`. The fake keeps its projects in memory, so the catalog
// starts empty on every run too.
const supabaseFakeCatalog = "pgtenant_supabasefake_catalog"

// supabaseFake is the fake Supabase Management API and pooler that `pgtenant
// dev --provider supabase-fake` runs in-process on the dev cluster, and the
// real supabase provider that talks to it.
type supabaseFake struct {
	srv   *supabasetest.Server
	token string
	parts *router.Upstream
}

// startSupabaseFake starts the fake (projects come up after createDelay)
// and returns the router's provider and upstream settings for it: the real
// Supabase client, routes through the fake's pooler as postgres.<ref> in
// transaction mode, TLS verify-full against the fake's CA.
func startSupabaseFake(ctx context.Context, cl *localproc.Cluster, createDelay time.Duration, log *slog.Logger) (*supabaseFake, error) {
	token := "sbp_" + rand.Text()
	srv, err := supabasetest.NewServer(ctx, supabasetest.Config{
		AdminDSN: cl.AdminDSN("postgres"), Token: token, CreateDelay: createDelay, Log: log,
	})
	if err != nil {
		return nil, err
	}
	p, err := supabase.New(supabase.Config{
		APIURL: srv.URL(), AccessToken: token, OrganizationID: "dev-org", Region: "us-east-1",
		PollInterval:   min(max(createDelay/4, 10*time.Millisecond), time.Second),
		CreateEstimate: createDelay,
		Log:            log,
	})
	if err != nil {
		srv.Close()
		return nil, err
	}
	f := &supabaseFake{srv: srv, token: token, parts: &router.Upstream{
		Provider:   p,
		Proxy:      proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: srv.CAPool()},
		Dial:       srv.Dialer(),
		CatalogDSN: cl.AdminDSN(supabaseFakeCatalog),
		Close:      p.CloseIdleConnections,
	}}
	if err := resetDatabase(ctx, cl.AdminDSN("postgres"), supabaseFakeCatalog); err != nil {
		srv.Close()
		return nil, err
	}
	return f, nil
}

func (f *supabaseFake) close() { f.srv.Close() }

func (f *supabaseFake) banner(w io.Writer) {
	fmt.Fprintf(w, "  supabase-fake %s   (access token: %s; pooler %s for %s)\n",
		f.srv.URL(), f.token, f.srv.PoolerAddr(), supabasetest.PoolerHost("us-east-1"))
}
