package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/proxy"
)

// TestAuthBackoffTLSRetry: libpq with sslmode=prefer retries a login
// refused over TLS in plaintext at once; that retry is the same failure.
// Two such typos under threshold 3 leave the right password let in, while
// plaintext failures of their own still count one each.
func TestAuthBackoffTLSRetry(t *testing.T) {
	pgtest.CheckGoroutines(t)
	psql := psqlPath(t)
	clock := &fakeClock{}
	clock.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	m := proxy.NewMetrics(nil)
	tt := newTestTLS(t)
	r := startRouter(t, newCatalogDB(t), withTLS(proxy.TLSModeAllow, tt), func(c *proxy.Config) {
		c.Now = clock.now
		c.Metrics = m
		c.Limits.AuthBackoff = proxy.AuthBackoff{Threshold: 3, Initial: time.Second, Max: time.Minute}
	})
	port := r.addr[strings.LastIndexByte(r.addr, ':')+1:]
	prefer := func(tenant, password string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-w",
			"host=127.0.0.1 port="+port+" sslmode=prefer user="+tenant+" dbname=app", "-c", "SELECT current_database()")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=30")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	authFailed := func() int {
		return int(testutil.ToFloat64(m.ConnectionsFinished.WithLabelValues(proxy.OutcomeAuthFailed)))
	}

	x := newTenant("tlsretry")
	for i := range 2 {
		out, err := prefer(x, "typo")
		if err == nil || !strings.Contains(out, "password authentication failed") {
			t.Fatalf("typo %d: %q, %v; want a failed password", i+1, out, err)
		}
	}
	if out, err := prefer(x, appSecret); err != nil || out != "t_"+x {
		t.Fatalf("right password after two typos with sslmode=prefer: %q, %v", out, err)
	}
	if n := authFailed(); n != 4 {
		t.Fatalf("%d failed logins before, want 4 (psql tries TLS, then plaintext)", n)
	}

	// Plaintext failures of their own count one each: the third is refused.
	y := newTenant("plainfail")
	for range 2 {
		if _, err := tryConnect(r.dsn(y, "typo")); pgCode(err) != "28P01" {
			t.Fatalf("plaintext typo: %v", err)
		}
	}
	if c, err := tryConnect(r.dsn(y, appSecret)); err != nil {
		t.Fatalf("right password after two plaintext typos: %v", err)
	} else {
		c.Close(context.Background())
	}
	for range 3 {
		if _, err := tryConnect(r.dsn(y, "typo")); pgCode(err) != "28P01" {
			t.Fatalf("plaintext typo: %v", err)
		}
	}
	_, err := tryConnect(r.dsn(y, appSecret))
	if e := pgErr(t, err, "28P01"); !strings.Contains(e.Message, "too many failed authentication attempts") {
		t.Fatalf("after 3 plaintext typos: %q", e.Message)
	}
	// A TLS failure followed by one over TLS again is two failures too.
	z := newTenant("tlsfail")
	overTLS := func(password string) error {
		c, err := tryConnect(strings.Replace(r.dsn(z, password), "sslmode=disable", "sslmode=require", 1))
		if err == nil {
			c.Close(context.Background())
		}
		return err
	}
	for range 3 {
		if err := overTLS("typo"); pgCode(err) != "28P01" {
			t.Fatalf("typo over TLS: %v", err)
		}
	}
	if err := overTLS(appSecret); pgCode(err) != "28P01" {
		t.Fatalf("right password after 3 typos over TLS: %v, want refused", err)
	}
}
