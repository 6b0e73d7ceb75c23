package neon_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/neon"
)

// The live tests talk to the real Neon API and cost a branch or a project
// for a minute or two. They run only when NEON_API_KEY is set:
//
//	NEON_API_KEY      the key (required)
//	NEON_PROJECT_ID   branch mode: a project to branch in (its default branch is the template)
//	NEON_ORG_ID       project mode: the organization, needed with a personal key on an org account
//	NEON_REGION       project mode: region (default: the account's)
//	NEON_BASE_URL     another API base URL (default: production)

func liveConfig(t *testing.T) neon.Config {
	t.Helper()
	key := os.Getenv("NEON_API_KEY")
	if key == "" {
		t.Skip("live Neon test: NEON_API_KEY is not set (set it, and NEON_PROJECT_ID for branch mode, to run against the real API)")
	}
	return neon.Config{
		BaseURL:        os.Getenv("NEON_BASE_URL"),
		APIKey:         key,
		RetryBudget:    3 * time.Minute,
		OpPollInterval: time.Second,
		OpTimeout:      3 * time.Minute,
		Log:            slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func TestLiveBranch(t *testing.T) {
	cfg := liveConfig(t)
	pid := os.Getenv("NEON_PROJECT_ID")
	if pid == "" {
		t.Skip("live Neon branch test: NEON_PROJECT_ID is not set")
	}
	cfg.Mode = neon.ModeBranch
	cfg.Projects = []neon.BranchProject{{ID: pid}}
	cfg.Prefix = "pgtenant-test-"
	liveRoundTrip(t, cfg)
}

func TestLiveProject(t *testing.T) {
	cfg := liveConfig(t)
	cfg.Mode = neon.ModeProject
	cfg.OrgID = os.Getenv("NEON_ORG_ID")
	cfg.RegionID = os.Getenv("NEON_REGION")
	cfg.Prefix = "pgtenant-test-"
	liveRoundTrip(t, cfg)
}

// liveRoundTrip creates a tenant, creates it again (adopting it), connects
// to it through the pooler with TLS verify-full, and deletes it.
func liveRoundTrip(t *testing.T, cfg neon.Config) {
	p, err := neon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	tenant := "live-" + hex.EncodeToString(b)

	ep, err := p.Create(ctx, tenant)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := p.Delete(dctx, tenant); err != nil && !errors.Is(err, provision.ErrTenantNotFound) {
			t.Errorf("cleanup Delete: %v", err)
		}
	})
	t.Logf("created %s (%s)", ep, ep.ProviderID)

	again, err := p.Create(ctx, tenant)
	if err != nil {
		t.Fatalf("second Create: %v", err)
	}
	if again.ProviderID != ep.ProviderID || again.Host != ep.Host {
		t.Fatalf("second Create returned %s (%s), want the same tenant as %s (%s)", again, again.ProviderID, ep, ep.ProviderID)
	}
	info, ok, err := p.Lookup(ctx, tenant)
	if err != nil || !ok || info.ProviderID != ep.ProviderID {
		t.Fatalf("Lookup = %+v, %v, %v", info, ok, err)
	}

	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(ep.User, ep.Password),
		Host:     ep.Host + ":" + strconv.Itoa(int(ep.Port)),
		Path:     "/" + ep.Database,
		RawQuery: "sslmode=verify-full",
	}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatalf("connect to %s: %v", ep, err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	_ = conn.Close(ctx)

	if err := p.Delete(ctx, tenant); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, ok, err := p.Lookup(ctx, tenant); err != nil || ok {
		t.Fatalf("Lookup after Delete = %v, %v", ok, err)
	}
}
