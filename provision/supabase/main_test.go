package supabase_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/provision/supabase/supabasetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	testToken  = "sbp_test_token"
	testOrg    = "test-org"
	testRegion = "us-east-1"
)

func testLogger() *slog.Logger {
	if os.Getenv("SUPABASETEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newFake starts a fake on the shared test cluster, closed in t.Cleanup.
func newFake(t *testing.T, cfg supabasetest.Config) *supabasetest.Server {
	t.Helper()
	cfg.AdminDSN = pgtest.Shared(t).AdminDSN("postgres")
	if cfg.Token == "" {
		cfg.Token = testToken
	}
	cfg.Log = testLogger()
	s, err := supabasetest.NewServer(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// newProvider returns a provider on s with fast polling; cfg's other
// fields are kept.
func newProvider(t *testing.T, s *supabasetest.Server, cfg supabase.Config) *supabase.Provider {
	t.Helper()
	cfg.APIURL = s.URL()
	if cfg.AccessToken == "" {
		cfg.AccessToken = testToken
	}
	cfg.OrganizationID, cfg.Region = testOrg, testRegion
	cfg.PollInterval = 10 * time.Millisecond
	cfg.RetryDelay = 10 * time.Millisecond
	if cfg.LostWait == 0 {
		cfg.LostWait = 2 * time.Second
	}
	cfg.Log = testLogger()
	p, err := supabase.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	return p
}

// login connects to ep through the fake's pooler as the router does (TLS
// verify-full, SNI) and runs SELECT 1.
func login(ctx context.Context, s *supabasetest.Server, ep provision.Endpoint) error {
	cfg, err := pgconn.ParseConfig("sslmode=verify-full")
	if err != nil {
		return err
	}
	cfg.Host, cfg.Port, cfg.Database, cfg.User, cfg.Password = ep.Host, ep.Port, ep.Database, ep.User, ep.Password
	cfg.TLSConfig = &tls.Config{RootCAs: s.CAPool(), ServerName: ep.Host, MinVersion: tls.VersionTLS12}
	cfg.Fallbacks = nil
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	cfg.DialFunc = s.Dialer()
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "SELECT 1").ReadAll()
	return err
}
