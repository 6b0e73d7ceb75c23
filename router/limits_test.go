package router

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/proxy"
)

func TestLimitsConfig(t *testing.T) {
	t.Setenv(EnvPassword, "x")
	t.Setenv(EnvCatalogKey, "k")
	t.Setenv(EnvAdminDSN, "postgres://a@b/c")
	t.Setenv(EnvCatalogDSN, "")
	fc, err := LoadConfig(writeFile(t, `
tenant:
  separator: "."
  carriers: [options, sni]
  sni_suffix: .db.example.com
limits:
  max_connections: 500
  max_connections_per_tenant: 20
  max_concurrent_creates: 4
  idle_timeout: 15m
  auth_backoff: {threshold: 5, initial: 2s, max: 30s, window: 1h}
  cancel_rate: 5
keepalive: {idle: 0s}
blocked_tenants: [acme]
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := fc.Validate(); err != nil {
		t.Fatal(err)
	}
	pc, err := fc.ProxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pc.Tenant.Carriers, []string{proxy.CarrierOptions, proxy.CarrierSNI}) || pc.Tenant.SNISuffix != ".db.example.com" {
		t.Errorf("tenant: %+v", pc.Tenant)
	}
	want := proxy.Limits{
		MaxConnections: 500, MaxConnectionsPerTenant: 20, MaxHandshakes: 1000, IdleTimeout: 15 * time.Minute,
		AuthBackoff: proxy.AuthBackoff{Threshold: 5, Initial: 2 * time.Second, Max: 30 * time.Second, Window: time.Hour},
		CancelRate:  5, CancelBurst: 20, // the burst's default
	}
	if pc.Limits != want {
		t.Errorf("limits: %+v, want %+v", pc.Limits, want)
	}
	if pc.KeepAlive.Idle >= 0 {
		t.Errorf("keepalive idle 0 should turn keepalives off: %+v", pc.KeepAlive)
	}
	if !slices.Equal(fc.BlockedTenants, []string{"acme"}) || fc.Limits.MaxConcurrentCreates != 4 {
		t.Errorf("blocked %q, max creates %d", fc.BlockedTenants, fc.Limits.MaxConcurrentCreates)
	}
	if _, err := proxy.New(pc, nil); err != nil {
		t.Fatalf("proxy.New: %v", err)
	}

	for body, want := range map[string]string{
		"tenant: {carriers: [cookie]}\n":                       "unknown tenant carrier",
		"tenant: {carriers: [sni]}\n":                          "SNI suffix",
		"tenant: {carriers: []}\n":                             "no tenant carrier",
		"limits: {max_connections: -1}\n":                      "limits.max_connections",
		"limits: {cancel_rate: -1}\n":                          "limits.cancel_rate",
		"limits: {auth_backoff: {initial: 0s}}\n":              "limits.auth_backoff",
		"blocked_tenants: [Acme]\n":                            "blocked_tenants",
		"keepalive: {idle: 30s, interval: 0s}\n":               "keepalive",
		"limits: {idle_timeout: -1s}\n":                        "negative",
		"tenant: {sni_suffix: .db.example.com}\n":              "sni tenant carrier is not enabled",
		"tenant: {carriers: [user, user], separator: \".\"}\n": "twice",
	} {
		fc, err := LoadConfig(writeFile(t, body))
		if err == nil {
			err = fc.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error about %s", body, err, want)
		}
	}
}
