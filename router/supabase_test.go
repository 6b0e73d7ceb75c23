package router

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/proxy"
)

// TestSupabaseConfig: the README's Supabase block loads, validates and
// builds a supabase provider with verify-full upstreams; the token comes
// from the environment; a missing CA file or organization is reported.
func TestSupabaseConfig(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var block string
	for _, part := range strings.Split(string(readme), "```yaml\n")[1:] {
		if b, _, _ := strings.Cut(part, "```"); strings.Contains(b, "kind: supabase") {
			block = b
		}
	}
	if block == "" {
		t.Fatal("no README config block with kind: supabase")
	}
	ca := writeFile(t, "not read by Validate")
	block = strings.Replace(block, "/etc/pgtenant/supabase-ca.crt", ca, 1)
	t.Setenv(EnvPassword, "x")
	t.Setenv(EnvCatalogKey, "k")
	t.Setenv(EnvCatalogDSN, "postgres://c@localhost/catalog")
	t.Setenv(EnvSupabaseToken, "sbp_from_env")
	fc, err := LoadConfig(writeFile(t, block))
	if err != nil {
		t.Fatal(err)
	}
	if err := fc.Validate(); err != nil {
		t.Fatalf("README block: %v\n%s", err, block)
	}
	sc := fc.SupabaseConfig()
	if sc.AccessToken != "sbp_from_env" || sc.OrganizationID != "my-org-slug" || sc.Region != "us-east-1" ||
		sc.Endpoint != supabase.EndpointPooler || sc.PoolerMode != supabase.PoolerTransaction || sc.TransactionPort != 6543 {
		t.Errorf("SupabaseConfig = %v", sc)
	}
	if c, err := fc.UpstreamTLS(); err != nil || c.Mode != proxy.TLSVerifyFull {
		t.Errorf("UpstreamTLS = %+v, %v; want verify-full", c, err)
	}

	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no ca file", func(c *Config) { c.Upstream.CAFile = "" }, "upstream.ca_file"},
		{"no org", func(c *Config) { c.Provider.Supabase.OrganizationID = "" }, "organization id"},
		{"no token", func(c *Config) { c.Provider.Supabase.AccessToken = "" }, EnvSupabaseToken},
		{"no catalog", func(c *Config) { c.Catalog.DSN = "" }, "catalog.dsn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fc
			tc.change(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	// tls: require without a CA file is an explicit choice.
	c := fc
	c.Upstream.CAFile, c.Upstream.TLS = "", proxy.TLSRequire
	if err := c.Validate(); err != nil {
		t.Errorf("tls: require without ca_file: %v", err)
	}
	if err := c.Validate(); err != nil && strings.Contains(err.Error(), "sbp_from_env") {
		t.Errorf("the error shows the token: %v", err)
	}
	u, err := BuildUpstream(context.Background(), c, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, ok := u.Provider.(*supabase.Provider); !ok || u.Proxy.TLS != proxy.TLSRequire {
		t.Errorf("BuildUpstream: provider %T, TLS %q", u.Provider, u.Proxy.TLS)
	}
}
