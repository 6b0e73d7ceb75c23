package router

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/catalog"
)

func TestNamingConfig(t *testing.T) {
	key := catalog.NewKey()
	tests := []struct {
		name, naming, catalogKey, wantErr string
	}{
		{"plain", "plain", key, ""},
		{"hashed", "hashed", key, ""},
		{"hashed without a key", "hashed", "", "provider.local.naming: hashed names are keyed with catalog.key, which is empty: set " + EnvCatalogKey},
		{"unknown", "sha1", key, `provider.local.naming: "sha1" is not plain or hashed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := DefaultConfig()
			fc.Auth.Password, fc.Provider.Local.AdminDSN = "x", "postgres://a@b/c"
			fc.Catalog.Key, fc.Provider.Local.Naming = tt.catalogKey, tt.naming
			err := fc.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// The naming key is derived from the catalog key: the same for the same
// catalog key, different for another, never the catalog key itself.
func TestNamingKey(t *testing.T) {
	fc := DefaultConfig()
	if k, err := fc.NamingKey(); k != nil || err != nil {
		t.Fatalf("no catalog key: NamingKey = %x, %v", k, err)
	}
	fc.Catalog.Key = catalog.NewKey()
	k1, err := fc.NamingKey()
	if err != nil || len(k1) != 32 {
		t.Fatalf("NamingKey = %x, %v", k1, err)
	}
	k2, _ := fc.NamingKey()
	raw, _ := catalog.ParseKey(fc.Catalog.Key)
	if !bytes.Equal(k1, k2) || bytes.Equal(k1, raw) {
		t.Fatal("naming key not stable, or equal to the catalog key")
	}
	fc.Catalog.Key = catalog.NewKey()
	if k3, _ := fc.NamingKey(); bytes.Equal(k1, k3) {
		t.Fatal("two catalog keys gave one naming key")
	}
	fc.Catalog.Key = "not base64!"
	if _, err := fc.NamingKey(); err == nil || !strings.Contains(err.Error(), EnvCatalogKey) {
		t.Fatalf("bad catalog key: %v", err)
	}
}
