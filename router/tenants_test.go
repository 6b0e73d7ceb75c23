package router

import (
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/resolver"
)

func TestTenantCreationConfig(t *testing.T) {
	valid := func() Config {
		fc := DefaultConfig()
		fc.Auth.Password, fc.Provider.Local.AdminDSN, fc.Catalog.Key = "x", "postgres://a@b/c", "k"
		return fc
	}
	tests := []struct {
		name    string
		yaml    string
		wantErr string // "" : valid
		mode    resolver.CreateMode
		limits  catalog.CreateLimits
	}{
		{"defaults", "", "", resolver.CreateAuto, catalog.CreateLimits{}},
		{"api with limits", "tenant: {create: api, max_tenants: 100, creates_per_minute: 10}\n", "",
			resolver.CreateAPI, catalog.CreateLimits{MaxTenants: 100, CreatesPerMinute: 10}},
		{"off", "tenant: {create: off}\n", "", resolver.CreateOff, catalog.CreateLimits{}},
		{"unknown mode", "tenant: {create: lazy}\n", `tenant.create: "lazy" is not auto, api or off`, "", catalog.CreateLimits{}},
		{"empty mode", "tenant: {create: ''}\n", `tenant.create: "" is not`, "", catalog.CreateLimits{}},
		{"negative cap", "tenant: {max_tenants: -1}\n", "tenant.max_tenants: -1 is negative", "", catalog.CreateLimits{}},
		{"negative rate", "tenant: {creates_per_minute: -5}\n", "tenant.creates_per_minute: -5 is negative", "", catalog.CreateLimits{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc, err := LoadConfig(writeFile(t, tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			base := valid()
			fc.Auth, fc.Provider.Local.AdminDSN, fc.Catalog.Key = base.Auth, base.Provider.Local.AdminDSN, base.Catalog.Key
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
			if got := fc.CreateMode(); got != tt.mode {
				t.Errorf("CreateMode = %q, want %q", got, tt.mode)
			}
			if got := fc.CreateLimits(); got != tt.limits {
				t.Errorf("CreateLimits = %+v, want %+v", got, tt.limits)
			}
		})
	}
}
