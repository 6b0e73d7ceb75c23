package proxy

import (
	"errors"
	"strings"
	"testing"
)

func TestSplitTenantOption(t *testing.T) {
	tests := []struct {
		name, opts, rest string
		tenants          []string
	}{
		{"none", "-c search_path=x", "-c search_path=x", nil},
		{"only", "-c tenant=acme", "", []string{"acme"}},
		{"among others", "-c search_path=a -c tenant=acme -c statement_timeout=5", "-c search_path=a -c statement_timeout=5", []string{"acme"}},
		{"joined -c", "-ctenant=acme --work_mem=4MB", "--work_mem=4MB", []string{"acme"}},
		{"double dash", "--tenant=acme", "", []string{"acme"}},
		{"bare", "tenant=acme -c x.y=1", "-c x.y=1", []string{"acme"}},
		{"case-insensitive name", "-c Tenant=acme", "", []string{"acme"}},
		{"escaped space kept", `-c application_name=a\ b -c tenant=acme`, `-c application_name=a\ b`, []string{"acme"}},
		{"escaped value", `-c tenant=ac\me`, "", []string{"acme"}},
		{"two", "-c tenant=a -c tenant=b", "", []string{"a", "b"}},
		{"other setting named like it", "-c tenant_mode=x -c mytenant=y", "-c tenant_mode=x -c mytenant=y", nil},
		{"dangling -c", "-c", "-c", nil},
		{"tabs and newlines", "\t-c\ttenant=acme\n", "", []string{"acme"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rest, tenants := splitTenantOption(tt.opts)
			if rest != tt.rest || strings.Join(tenants, ",") != strings.Join(tt.tenants, ",") {
				t.Fatalf("splitTenantOption(%q) = %q, %q; want %q, %q", tt.opts, rest, tenants, tt.rest, tt.tenants)
			}
		})
	}
}

func TestTenantFromStartup(t *testing.T) {
	all := TenantConfig{Separator: ".", Carriers: []string{CarrierUser, CarrierOptions, CarrierSNI, CarrierDatabase}, SNISuffix: ".db.example.com"}
	tests := []struct {
		name        string
		cfg         TenantConfig
		params      map[string]string
		sni         string
		want        string   // "" means a 28000 error
		errHas      []string // in the message (or hint, for the missing case)
		wantOptions string   // options left for upstream ("-" : none)
	}{
		{"user only (nil carriers)", TenantConfig{}, map[string]string{"user": "acme", "options": "-c tenant=x"}, "", "acme", nil, "-c tenant=x"},
		{"options", TenantConfig{Carriers: []string{CarrierOptions}},
			map[string]string{"user": "app", "options": "-c tenant=acme -c work_mem=1MB"}, "", "acme", nil, "-c work_mem=1MB"},
		{"options only option removed", TenantConfig{Carriers: []string{CarrierOptions}},
			map[string]string{"user": "app", "options": "-c tenant=acme"}, "", "acme", nil, "-"},
		{"database", TenantConfig{Carriers: []string{CarrierDatabase}}, map[string]string{"user": "app", "database": "acme"}, "", "acme", nil, "-"},
		{"sni", TenantConfig{Carriers: []string{CarrierSNI}, SNISuffix: "db.example.com"},
			map[string]string{"user": "app"}, "Acme.DB.example.com.", "acme", nil, "-"},
		{"sni with two labels", TenantConfig{Carriers: []string{CarrierSNI}, SNISuffix: ".db.example.com"},
			map[string]string{"user": "app"}, "a.b.db.example.com", "", []string{"more than one label"}, "-"},
		{"sni of another domain names none", TenantConfig{Carriers: []string{CarrierSNI}, SNISuffix: ".db.example.com"},
			map[string]string{"user": "app"}, "router.example.com", "", []string{"no tenant"}, "-"},
		{"carriers agree", all, map[string]string{"user": "app.acme", "options": "-c tenant=acme", "database": "acme"}, "acme.db.example.com", "acme", nil, "-"},
		{"user without separator is a label", all, map[string]string{"user": "app", "options": "tenant=acme"}, "", "acme", nil, "-"},
		{"user and options conflict", all, map[string]string{"user": "app.alpha", "options": "-c tenant=beta"}, "",
			"", []string{"user name", `"alpha"`, "options parameter", `"beta"`}, "-"},
		{"sni and database conflict", all, map[string]string{"user": "app", "database": "beta"}, "alpha.db.example.com",
			"", []string{"TLS server name", `"alpha"`, "database name", `"beta"`}, "-"},
		{"two tenants in options", all, map[string]string{"user": "app", "options": "-c tenant=a -c tenant=b"}, "", "", []string{"two tenants"}, "-"},
		{"invalid in options", all, map[string]string{"user": "app", "options": "-c tenant=Acme"}, "", "", []string{"invalid tenant ID", "options parameter"}, "-"},
		{"empty in options", all, map[string]string{"user": "app", "options": "-c tenant="}, "", "", []string{"empty", "options parameter"}, "-"},
		{"missing lists every way", all, map[string]string{"user": "app"}, "", "",
			[]string{"no tenant", "user name", "<role>.tenant_42", "-c tenant=tenant_42", "tenant_42.db.example.com", "database name"}, "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			p := startupPacket{kind: kindStartup, params: tt.params, sni: tt.sni}
			got, err := tt.cfg.fromStartup(&p)
			if tt.want == "" {
				var ce *ClientError
				if !errors.As(err, &ce) || ce.Code != codeInvalidAuthSpec || ce.Hint == "" {
					t.Fatalf("got %q, %v; want a 28000 with a hint", got, err)
				}
				for _, s := range tt.errHas {
					if !strings.Contains(ce.Msg+" "+ce.Hint, s) {
						t.Errorf("error %q (hint %q) does not mention %q", ce.Msg, ce.Hint, s)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
			opts, ok := p.params["options"]
			if tt.wantOptions == "-" && ok || tt.wantOptions != "-" && opts != tt.wantOptions {
				t.Errorf("options left: %q (present %v), want %q", opts, ok, tt.wantOptions)
			}
		})
	}
}

func TestTenantConfigValidate(t *testing.T) {
	bad := []TenantConfig{
		{Carriers: []string{"cookie"}},
		{Carriers: []string{CarrierUser, CarrierUser}},
		{Carriers: []string{}},
		{Carriers: []string{CarrierSNI}},
		{SNISuffix: ".db.example.com"},
		{Carriers: []string{CarrierSNI}, SNISuffix: "db..example.com"},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v validated", c)
		}
	}
}

func FuzzSplitTenantOption(f *testing.F) {
	f.Add("-c tenant=acme -c search_path=a\\ b")
	f.Add("--tenant=x tenant=y -ctenant=z")
	f.Fuzz(func(t *testing.T, opts string) {
		rest, tenants := splitTenantOption(opts)
		if len(tenants) == 0 && rest != opts {
			t.Fatalf("options changed without a tenant option: %q -> %q", opts, rest)
		}
		if len(tenants) > 0 {
			// What is left names no tenant any more.
			if _, again := splitTenantOption(rest); len(again) > 0 {
				t.Fatalf("%q: tenant option left in %q", opts, rest)
			}
		}
	})
}
