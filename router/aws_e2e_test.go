package router_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/provision/rds/rdstest"
	"github.com/pgtenant/pgtenant/router"
)

// awsEnv points the SDK's default credential chain at static test keys
// and away from the host's own AWS files and instance metadata.
func awsEnv(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDROUTERTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// A router configured in YAML with provider.kind aurora (or rds), the API
// at the fake, the fake's CA as provider.<kind>.ca_file and the fake's TLS
// front as upstream.dial_override creates the tenant's cluster and routes
// its session there with verify-full.
func TestAWSProvidersFromConfig(t *testing.T) {
	for _, kind := range []string{"aurora", "rds"} {
		t.Run(kind, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			awsEnv(t)
			c := pgtest.Shared(t)
			fake, err := rdstest.Start(t.Context(), rdstest.Config{AdminDSN: c.AdminDSN("postgres"), AccessKeyID: "AKIDROUTERTEST",
				CreateDelay: 100 * time.Millisecond, BackupDelay: 50 * time.Millisecond, DeleteDelay: 50 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(fake.Close)
			dir := t.TempDir()
			caFile := filepath.Join(dir, "global-bundle.pem")
			if err := os.WriteFile(caFile, fake.CAPEM(), 0o644); err != nil {
				t.Fatal(err)
			}
			yaml := fmt.Sprintf(`listen: 127.0.0.1:0
drain_timeout: 0s
catalog: {dsn: %q}
upstream: {dial_override: %q}
provider:
  kind: %s
  %s:
    region: eu-central-1
    endpoint_url: %s
    identifier_prefix: rt-
    ca_file: %s
    skip_final_snapshot: true
    poll_interval: 50ms
`, c.AdminDSN(pgtest.CreateDB(t, c)), fake.FrontAddr(), kind, kind, fake.URL(), caFile)
			path := filepath.Join(dir, "config.yaml")
			if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv(router.EnvPassword, "router-test-secret")
			t.Setenv(router.EnvCatalogKey, catalog.NewKey())
			cfg, err := router.LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), router.EnvAWSPasswordKey) {
				t.Fatalf("Validate without a password key: %v, want an error naming %s", err, router.EnvAWSPasswordKey)
			}
			t.Setenv(router.EnvAWSPasswordKey, "router-test-password-key")
			if cfg, err = router.LoadConfig(path); err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			noCA := cfg
			noCA.Provider.Aurora.CAFile, noCA.Provider.RDS.CAFile = "", ""
			if err := noCA.Validate(); err == nil || !strings.Contains(err.Error(), "global-bundle.pem") {
				t.Errorf("Validate without ca_file: %v, want a pointer to global-bundle.pem", err)
			}

			ctx, cancel := context.WithCancel(context.Background())
			r, err := router.New(ctx, cfg, router.Options{})
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- r.Serve(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Serve: %v", err)
				}
			})
			t.Cleanup(func() { _ = r.Provider().Delete(context.Background(), "acme") })

			var conn *pgx.Conn
			poll.Until(t, time.Minute, "tenant acme through the router", func() bool {
				cctx, ccancel := context.WithTimeout(t.Context(), time.Minute)
				defer ccancel()
				conn, err = pgx.Connect(cctx, "postgres://acme:router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
				var pe *pgconn.PgError
				if err != nil && !(errors.As(err, &pe) && pe.Code == "57P03") {
					t.Fatalf("connect: %v", err)
				}
				return err == nil
			})
			defer conn.Close(context.Background())
			var user, db string
			if err := conn.QueryRow(t.Context(), "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(user, "rdsf_") || !strings.HasSuffix(db, "_app") {
				t.Errorf("session runs as %s in %s, want the fake's cluster role and its app database", user, db)
			}
			if n := fake.Count(kind, "rt-acme"); n != 1 {
				t.Errorf("the fake holds %d of rt-acme, want 1", n)
			}
		})
	}
}

// provider.also may name aurora and rds; their sections are validated as
// when they are the default.
func TestAWSProvidersAlsoValidated(t *testing.T) {
	t.Setenv(router.EnvAWSPasswordKey, "")
	cfg := router.DefaultConfig()
	cfg.Auth.Password = "x"
	cfg.Catalog.Key = catalog.NewKey()
	cfg.Catalog.DSN = "postgres://localhost/cat"
	cfg.Provider.Local.AdminDSN = "postgres://localhost/postgres"
	cfg.Provider.Also = []string{"aurora", "rds"}
	err := cfg.Validate()
	for _, want := range []string{"provider.aurora: ", "provider.rds: ", "provider.aurora.ca_file", router.EnvAWSPasswordKey} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to mention %q", err, want)
		}
	}
	for _, s := range []*router.RDSSettings{&cfg.Provider.Aurora, &cfg.Provider.RDS} {
		s.Region, s.PasswordKey, s.CAFile = "eu-central-1", "0123456789abcdef", "/etc/pgtenant/global-bundle.pem"
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate with both sections filled: %v", err)
	}
}
