package router

import (
	"bytes"
	"strings"
	"testing"
)

func TestPerTenantConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // "": valid
	}{
		{"off by default", "", ""},
		{"on", "auth: {per_tenant: true, password: x}\n", ""},
		{"instead", "auth: {per_tenant: true, password: x, tenant_secret: instead}\n", ""},
		{"verifier only", "auth: {per_tenant: true, scram_verifier: 'SCRAM-SHA-256$4096:c2FsdA==$" + strings.Repeat("A", 43) + "=:" + strings.Repeat("A", 43) + "='}\n",
			"auth.per_tenant: auth: per-tenant secrets need the app secret itself"},
		{"unknown tenant_secret", "auth: {per_tenant: true, password: x, tenant_secret: both}\n", `tenant secret "both": want besides or instead`},
		{"negative refresh", "auth: {per_tenant: true, password: x, per_tenant_refresh: -1s}\n", "auth.per_tenant_refresh: -1s is negative"},
		{"trust", "auth: {per_tenant: true, method: trust}\n", "per-tenant secrets need SCRAM authentication"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc, err := LoadConfig(writeFile(t, tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if fc.Auth.Password == "" && fc.Auth.SCRAMVerifier == "" && fc.Auth.Method != "trust" {
				fc.Auth.Password = "x"
			}
			fc.Provider.Local.AdminDSN, fc.Catalog.Key = "postgres://a@b/c", "k"
			err = fc.Validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate: %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The salt key follows the catalog key: instances sharing a catalog offer
// a tenant the same salt.
func TestSaltKeyFollowsCatalogKey(t *testing.T) {
	cfg := func(key string) []byte {
		fc := DefaultConfig()
		fc.Auth.PerTenant, fc.Auth.Password, fc.Catalog.Key = true, "x", key
		pc, err := fc.ProxyConfig()
		if err != nil {
			t.Fatal(err)
		}
		return pc.Auth.SaltKey
	}
	a, b, c := cfg("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), cfg("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), cfg("BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=")
	if len(a) != 32 || !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatalf("salt keys: %x %x %x; want 32 bytes, equal for equal catalog keys only", a, b, c)
	}
}
