package supabase_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/provision/providertest"
	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/provision/supabase/supabasetest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// TestConformance runs the providers' conformance suite against the
// Supabase provider and the fake, through the fake's pooler (transaction
// and session port) and direct hosts, with TLS verify-full as to Supabase.
func TestConformance(t *testing.T) {
	// The suite's 50 concurrent Creates make ~200 calls in a second; the
	// documented 120/min would stretch them over a minute and a half.
	s := newFake(t, supabasetest.Config{CreateDelay: 50 * time.Millisecond, RateLimit: -1})
	upstream := router.Upstream{
		Proxy: proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: s.CAPool()},
		Dial:  s.Dialer(),
	}
	for _, tc := range []struct {
		name string
		cfg  supabase.Config
	}{
		{"pooler-transaction", supabase.Config{}},
		{"pooler-session", supabase.Config{PoolerMode: supabase.PoolerSession}},
		{"direct", supabase.Config{Endpoint: supabase.EndpointDirect}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.RequestsPerMinute = 1 << 20
			p := newProvider(t, s, tc.cfg)
			providertest.Run(t, providertest.Backend{
				Provider: p,
				Count: func(_ context.Context, tenant string) (int, error) {
					return s.Count(p.ProjectName(tenant)), nil
				},
				LoseCreateResponse: func(tenant string) { s.LoseNextCreate(p.ProjectName(tenant)) },
				Upstream:           upstream,
				Timeout:            time.Minute,
			})
		})
	}
}

// TestConformanceLive runs the suite against the real Management API. It
// needs SUPABASE_ACCESS_TOKEN and SUPABASE_ORG_ID; SUPABASE_REGION
// defaults to us-east-1, and SUPABASE_CA_FILE (the CA from the dashboard)
// turns on verify-full (else TLS is required but not verified). It makes
// and deletes real projects, which may cost money.
func TestConformanceLive(t *testing.T) {
	token, org := os.Getenv("SUPABASE_ACCESS_TOKEN"), os.Getenv("SUPABASE_ORG_ID")
	if token == "" || org == "" {
		t.Skip("live Supabase test: set SUPABASE_ACCESS_TOKEN and SUPABASE_ORG_ID to run it (it creates real projects)")
	}
	region := os.Getenv("SUPABASE_REGION")
	if region == "" {
		region = "us-east-1"
	}
	up := proxy.UpstreamConfig{TLS: proxy.TLSRequire}
	if f := os.Getenv("SUPABASE_CA_FILE"); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		up = proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: poolFromPEM(t, pem)}
	}
	p, err := supabase.New(supabase.Config{AccessToken: token, OrganizationID: org, Region: region, NamePrefix: "pgtenant-ct-", Log: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	providertest.Run(t, providertest.Backend{
		Provider: p,
		Count:    func(ctx context.Context, tenant string) (int, error) { return p.CountProjects(ctx, tenant) },
		SkipLost: "the real API cannot be made to lose an answer",
		Upstream: router.Upstream{Provider: p, Proxy: up},
		Timeout:  15 * time.Minute,
	})
}
