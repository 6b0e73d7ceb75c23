package router

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision/local"
)

// namingKeyLabel separates the local provider's naming key from every
// other use of the catalog key.
const namingKeyLabel = "pgtenant provider.local.naming v1"

// validateNaming checks provider.local.naming. hashed needs catalog.key,
// from which the naming key is derived.
func (fc *Config) validateNaming() []error {
	switch fc.Provider.Local.Naming {
	case "", local.NamingPlain:
	case local.NamingHashed:
		if fc.Catalog.Key == "" {
			return []error{fmt.Errorf("provider.local.naming: hashed names are keyed with catalog.key, which is empty: set %s", EnvCatalogKey)}
		}
	default:
		return []error{fmt.Errorf("provider.local.naming: %q is not plain or hashed", fc.Provider.Local.Naming)}
	}
	return nil
}

// NamingKey is the key of the local provider's hashed names:
// HMAC-SHA256(catalog key, a fixed label). It comes from the catalog key
// because every instance sharing a catalog must hold that key anyway and
// can never change it (the catalog refuses another), which is what hashed
// names need: the same key on every instance, for the catalog's lifetime.
// It returns nil, and no error, when catalog.key is empty.
func (fc *Config) NamingKey() ([]byte, error) {
	if fc.Catalog.Key == "" {
		return nil, nil
	}
	key, err := catalog.ParseKey(fc.Catalog.Key)
	if err != nil {
		return nil, fmt.Errorf("catalog.key (%s): %w", EnvCatalogKey, err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(namingKeyLabel))
	return m.Sum(nil), nil
}
