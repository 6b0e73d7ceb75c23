package proxy

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestExtractTenant(t *testing.T) {
	tests := []struct {
		name string
		cfg  TenantConfig
		user string
		want string // "" means an error is expected
	}{
		{"whole user", TenantConfig{}, "tenant_42", "tenant_42"},
		{"dash", TenantConfig{}, "acme-eu-1", "acme-eu-1"},
		{"48 chars", TenantConfig{}, strings.Repeat("a", 48), strings.Repeat("a", 48)},
		{"49 chars", TenantConfig{}, strings.Repeat("a", 49), ""},
		{"upper case", TenantConfig{}, "Acme", ""},
		{"leading underscore", TenantConfig{}, "_acme", ""},
		{"dot without separator", TenantConfig{}, "app.acme", ""},
		{"quote", TenantConfig{}, `acme"; drop`, ""},
		{"unicode", TenantConfig{}, "acmé", ""},
		{"role.tenant", TenantConfig{Separator: "."}, "app.acme", "acme"},
		{"last dot wins", TenantConfig{Separator: "."}, "app.ro.acme", "acme"},
		{"separator missing", TenantConfig{Separator: "."}, "acme", ""},
		{"empty tenant", TenantConfig{Separator: "."}, "app.", ""},
		{"custom pattern", TenantConfig{Pattern: regexp.MustCompile(`^t[0-9]+$`)}, "t17", "t17"},
		{"custom pattern rejects", TenantConfig{Pattern: regexp.MustCompile(`^t[0-9]+$`)}, "acme", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.extract(tt.user)
			if tt.want == "" {
				var ce *ClientError
				if !errors.As(err, &ce) || ce.Code != codeInvalidAuthSpec || ce.Hint == "" {
					t.Fatalf("extract(%q) = %q, %v; want 28000 with a hint", tt.user, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("extract(%q) = %q, %v; want %q", tt.user, got, err, tt.want)
			}
		})
	}
}

func FuzzExtractTenant(f *testing.F) {
	f.Add("tenant_42", ".")
	f.Add("a.b.c", "")
	f.Fuzz(func(t *testing.T, user, sep string) {
		cfg := TenantConfig{Separator: sep}
		got, err := cfg.extract(user)
		if err == nil && !defaultTenantRE.MatchString(got) {
			t.Fatalf("accepted invalid tenant %q", got)
		}
	})
}
