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
	for _, k := range []string{EnvPassword, EnvAdminDSN, EnvCatalogDSN, EnvCatalogKey, EnvClusterAdvertise, EnvAWSPasswordKey} {
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

// instance_id is a number 0-255 or auto; auto needs the cluster on, and
// PGTENANT_CLUSTER_ADVERTISE overrides cluster.advertise.
func TestInstanceIDConfig(t *testing.T) {
	t.Setenv(EnvPassword, "from-env")
	t.Setenv(EnvCatalogKey, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	t.Setenv(EnvAdminDSN, "postgres://localhost/postgres")
	t.Setenv(EnvClusterSecret, "instance-id-test-secret-0123456789abc")
	t.Setenv(EnvClusterAdvertise, "")
	cluster := "cluster:\n  peer_listen: 0.0.0.0:6433\n  advertise: 10.0.0.9:6433\n"
	tests := []struct {
		body    string
		want    InstanceID
		loadErr string // LoadConfig refuses
		valErr  string // Validate refuses
	}{
		{body: "", want: 0},
		{body: "instance_id: 7\n", want: 7},
		{body: "instance_id: 255\n", want: 255},
		{body: "instance_id: auto\n" + cluster, want: InstanceIDAuto},
		{body: "instance_id: 3\n" + cluster, want: 3},
		{body: "instance_id: auto\n", want: InstanceIDAuto, valErr: "instance_id: auto needs the cluster on"},
		{body: "instance_id: 256\n", loadErr: "want an integer 0-255 or auto"},
		{body: "instance_id: -1\n", loadErr: "want an integer 0-255 or auto"},
		{body: "instance_id: Auto\n", loadErr: "want an integer 0-255 or auto"},
		{body: "instance_id: [1]\n", loadErr: "want an integer 0-255 or auto"},
	}
	for _, tt := range tests {
		cfg, err := LoadConfig(writeFile(t, tt.body))
		if tt.loadErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.loadErr) {
				t.Errorf("%q: LoadConfig = %v, want an error about %q", tt.body, err, tt.loadErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.body, err)
			continue
		}
		if cfg.InstanceID != tt.want {
			t.Errorf("%q: instance_id %v, want %v", tt.body, cfg.InstanceID, tt.want)
		}
		err = cfg.Validate()
		switch {
		case tt.valErr == "" && err != nil:
			t.Errorf("%q: Validate: %v", tt.body, err)
		case tt.valErr != "" && (err == nil || !strings.Contains(err.Error(), tt.valErr)):
			t.Errorf("%q: Validate = %v, want an error about %q", tt.body, err, tt.valErr)
		}
	}
	// An out-of-range ID set in code is refused too.
	cfg, err := LoadConfig(writeFile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.InstanceID = 300
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "instance_id: 300") {
		t.Errorf("instance_id 300: Validate = %v", err)
	}

	// One file for every instance: each sets its own advertised address.
	body := "instance_id: auto\ncluster:\n  peer_listen: 0.0.0.0:6433\n"
	cfg, err = LoadConfig(writeFile(t, body))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "cluster.advertise: empty") {
		t.Errorf("peer_listen 0.0.0.0 without an advertised address: Validate = %v", err)
	}
	t.Setenv(EnvClusterAdvertise, "10.1.2.3:6433")
	if cfg, err = LoadConfig(writeFile(t, body)); err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster.Advertise != "10.1.2.3:6433" {
		t.Errorf("%s=10.1.2.3:6433: cluster.advertise %q", EnvClusterAdvertise, cfg.Cluster.Advertise)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("with %s: %v", EnvClusterAdvertise, err)
	}
}
