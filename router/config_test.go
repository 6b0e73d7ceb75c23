package router

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The example file documents the defaults: loading it must give exactly
// what an empty file gives.
func TestExampleConfigMatchesDefaults(t *testing.T) {
	for _, k := range []string{EnvPassword, EnvAdminDSN, EnvCatalogDSN, EnvCatalogKey} {
		t.Setenv(k, "")
	}
	got, err := LoadConfig("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Fatalf("config.example.yaml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	t.Setenv(EnvPassword, "from-env")
	t.Setenv(EnvCatalogKey, "")
	t.Setenv(EnvAdminDSN, "")
	t.Setenv(EnvCatalogDSN, "")
	fc, err := LoadConfig(writeFile(t, "listen: 127.0.0.1:7000\nauth:\n  password: from-file\ncache:\n  ttl: 30s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if fc.Listen != "127.0.0.1:7000" || fc.Cache.TTL != 30*time.Second {
		t.Fatalf("file values not applied: %+v", fc)
	}
	if fc.Auth.Password != "from-env" {
		t.Fatal("environment does not override the file")
	}
	if fc.Cache.Size != 10000 {
		t.Fatal("defaults lost for keys the file does not set")
	}

	if _, err := LoadConfig(writeFile(t, "listne: x\n")); err == nil || !strings.Contains(err.Error(), "listne") {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := LoadConfig(writeFile(t, "")); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	fc := DefaultConfig()
	err := fc.Validate()
	if err == nil {
		t.Fatal("defaults without secrets validated")
	}
	for _, want := range []string{EnvPassword, EnvAdminDSN, EnvCatalogKey} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say to set %s: %v", want, err)
		}
	}
	fc.Auth.Password, fc.Provider.Local.AdminDSN, fc.Catalog.Key = "x", "postgres://a@b/c", "k"
	if err := fc.Validate(); err != nil {
		t.Fatal(err)
	}
	fc.Tenant.Pattern = "("
	fc.Log.Format = "xml"
	if err := fc.Validate(); err == nil || !strings.Contains(err.Error(), "tenant.pattern") || !strings.Contains(err.Error(), "log.format") {
		t.Fatalf("want both errors: %v", err)
	}
}

// The README's Neon, production and PgBouncer configurations must load and
// validate as written.
func TestREADMEConfigs(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvPassword, "x")
	t.Setenv(EnvCatalogKey, "k")
	t.Setenv(EnvCatalogDSN, "postgres://c@localhost/catalog")
	t.Setenv(EnvNeonAPIKey, "napi_test")
	t.Setenv(EnvAdminDSN, "postgres://admin@localhost/postgres")
	blocks := 0
	for _, part := range strings.Split(string(readme), "```yaml\n")[1:] {
		block, _, _ := strings.Cut(part, "```")
		if !strings.Contains(block, "kind: neon") && !strings.HasPrefix(block, "# production") && !strings.HasPrefix(block, "# pgbouncer") && !strings.HasPrefix(block, "# pooling") {
			continue
		}
		blocks++
		fc, err := LoadConfig(writeFile(t, block))
		if err != nil {
			t.Fatalf("README block %d: %v\n%s", blocks, err, block)
		}
		if err := fc.Validate(); err != nil {
			t.Fatalf("README block %d: %v\n%s", blocks, err, block)
		}
		// Through PgBouncer, forward just what it tracks, as for Neon's.
		if strings.HasPrefix(block, "# pgbouncer") && (fc.Upstream.DialOverride == "" || !slices.Equal(fc.Upstream.ForwardParams, NeonPoolerParams)) {
			t.Errorf("README PgBouncer block: dial_override %q, forward_params %q; want PgBouncer's address and %q",
				fc.Upstream.DialOverride, fc.Upstream.ForwardParams, NeonPoolerParams)
		}
		// The Pooling section lists every key of the section with its default.
		if strings.HasPrefix(block, "# pooling") {
			want := DefaultConfig().Pool
			want.Mode = PoolModeSession
			if fc.Pool != want {
				t.Errorf("README pooling block: %+v, want the defaults in session mode %+v", fc.Pool, want)
			}
		}
	}
	if blocks != 5 {
		t.Fatalf("found %d config blocks (2 Neon, 1 production, 1 PgBouncer, 1 pooling) in the README, want 5", blocks)
	}
}
