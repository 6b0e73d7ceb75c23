package local_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
)

var namingKey = bytes.Repeat([]byte{7}, local.MinNamingKey)

// Hashed names carry nothing of the tenant ID, are the same on every call
// (Create stays idempotent), differ between tenants and between keys, and
// Delete finds them.
func TestHashedNaming(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, func(c *local.Config) { c.Naming, c.NamingKey = local.NamingHashed, namingKey })
	ep, err := e.p.Create(t.Context(), "hashedacme")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ep.Database, "hashedacme") || !strings.HasPrefix(ep.Database, e.cfg.Prefix) ||
		len(ep.Database) != len(e.cfg.Prefix)+local.HashLen || ep.User != ep.Database || ep.ProviderID != ep.Database {
		t.Fatalf("endpoint %s (provider id %q): want %s + %d hash characters for database, role and id", ep, ep.ProviderID, e.cfg.Prefix, local.HashLen)
	}
	checkTenant(t, ep)
	again, err := e.p.Create(t.Context(), "hashedacme")
	if err != nil || again.Database != ep.Database {
		t.Fatalf("Create again = %s, %v; want database %q", again, err, ep.Database)
	}
	other, err := e.p.Create(t.Context(), "hashedglobex")
	if err != nil || other.Database == ep.Database {
		t.Fatalf("second tenant = %s, %v; want a database of its own", other, err)
	}
	otherKey := local.New(local.Config{Prefix: e.cfg.Prefix, Template: e.cfg.Template, Naming: local.NamingHashed,
		NamingKey: bytes.Repeat([]byte{8}, local.MinNamingKey)}, e.admin)
	if err := otherKey.Delete(t.Context(), "hashedacme"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Fatalf("Delete under another key = %v; want ErrTenantNotFound", err)
	}
	if err := e.p.Delete(t.Context(), "hashedacme"); err != nil {
		t.Fatal(err)
	}
	if countDatabases(t, e.admin, ep.Database) != 0 || roleExists(t, e.admin, ep.User) {
		t.Fatal("database or role left after Delete")
	}
	// A tenant ID too long for a plain name fits a hashed one.
	long := strings.Repeat("x", 62)
	if _, err := e.p.Create(t.Context(), long); err != nil {
		t.Fatalf("Create(62-byte ID) with hashed naming: %v", err)
	}
	if err := e.p.Delete(t.Context(), long); err != nil {
		t.Fatal(err)
	}
}

// A tenant created under one naming scheme is still deleted by a provider
// configured with the other (both ways), so changing provider.local.naming
// strands nobody.
func TestNamingSwitchDelete(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, func(c *local.Config) { c.NamingKey = namingKey }) // plain, key known
	hashedCfg := e.cfg
	hashedCfg.Naming = local.NamingHashed
	hashed := local.New(hashedCfg, e.admin)

	old, err := e.p.Create(t.Context(), "switchold")
	if err != nil {
		t.Fatal(err)
	}
	if old.Database != e.cfg.Prefix+"switchold" {
		t.Fatalf("plain database = %q", old.Database)
	}
	if err := hashed.Delete(t.Context(), "switchold"); err != nil {
		t.Fatalf("hashed provider deleting a plain tenant: %v", err)
	}
	if countDatabases(t, e.admin, old.Database) != 0 || roleExists(t, e.admin, old.User) {
		t.Fatal("plain tenant's database or role left after the hashed provider's Delete")
	}

	nu, err := hashed.Create(t.Context(), "switchnew")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.p.Delete(t.Context(), "switchnew"); err != nil {
		t.Fatalf("plain provider (with the key) deleting a hashed tenant: %v", err)
	}
	if countDatabases(t, e.admin, nu.Database) != 0 || roleExists(t, e.admin, nu.User) {
		t.Fatal("hashed tenant's database or role left after the plain provider's Delete")
	}
}

func TestNamingConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  local.Config
		want string // "" : valid
	}{
		{"plain default", local.Config{}, ""},
		{"plain with key", local.Config{Naming: local.NamingPlain, NamingKey: namingKey}, ""},
		{"hashed", local.Config{Naming: local.NamingHashed, NamingKey: namingKey}, ""},
		{"hashed without key", local.Config{Naming: local.NamingHashed}, "needs a naming key"},
		{"short key", local.Config{Naming: local.NamingHashed, NamingKey: namingKey[:16]}, "needs a naming key of at least 32 bytes"},
		{"unknown", local.Config{Naming: "md5"}, `naming "md5"`},
		{"prefix too long to hash", local.Config{Naming: local.NamingHashed, NamingKey: namingKey, Prefix: strings.Repeat("p", 38)}, "too long for hashed naming"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v; want an error containing %q", err, tt.want)
			}
			if _, err := local.New(tt.cfg, nil).Create(t.Context(), "acme"); err == nil {
				t.Fatal("Create accepted the configuration")
			}
		})
	}
}
