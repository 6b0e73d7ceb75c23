package router

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sync"
	"time"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/proxy"
)

// DefaultPerTenantRefresh is auth.per_tenant_refresh's default.
const DefaultPerTenantRefresh = 2 * time.Second

// validateAuth checks the keys of per-tenant secrets; the proxy checks the
// rest of the auth section.
func (fc *Config) validateAuth() []error {
	var errs []error
	if fc.Auth.PerTenant && fc.Auth.PerTenantRefresh < 0 {
		errs = append(errs, fmt.Errorf("auth.per_tenant_refresh: %s is negative (0 turns the refresh off)", fc.Auth.PerTenantRefresh))
	}
	return errs
}

// saltKey is the key of the salts offered, with auth.per_tenant, for
// tenants without a secret of their own: derived from the catalog key, so
// that every instance sharing the catalog offers the same salt for a
// tenant, and nobody without the key can tell those salts from random.
func (fc *Config) saltKey() []byte {
	k, err := catalog.ParseKey(fc.Catalog.Key)
	if err != nil {
		k = []byte(fc.Catalog.Key) // Validate reports the key
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte("pgtenant scram salt key"))
	return m.Sum(nil)
}

// credentialStore is where the tenants' own secrets are kept.
// *catalog.Catalog implements it.
type credentialStore interface {
	SetCredential(ctx context.Context, tenant, verifier string) error
	DeleteCredential(ctx context.Context, tenant string) (bool, error)
	Credentials(ctx context.Context) (map[string]string, error)
}

// credentialApplier is the proxy's side of them. *proxy.Server implements
// it.
type credentialApplier interface {
	SetTenantCredentials(map[string]string) error
	TenantHasSecret(tenant string) bool
}

// tenantCredentials hands the store's tenant secrets to the proxy, as
// tenantPoolModes does the pool modes: at start, every
// auth.per_tenant_refresh, and at once after a change through this
// router's admin API. The proxy keeps them in memory: a login reads no
// catalog, so neither a connection storm nor a flood of made-up tenant
// names costs catalog queries, nor does the catalog's answer time tell
// which tenants have a secret; a change reaches other instances within one
// refresh.
type tenantCredentials struct {
	on    bool // auth.per_tenant
	log   *slog.Logger
	store credentialStore
	proxy credentialApplier
	mu    sync.Mutex // serialises refreshes, so an older set never lands last

	lastBad string // the last refresh's invalid verifiers; guarded by mu
}

// SetCredential stores tenant's own secret as verifier (checked with
// proxy.ParseTenantVerifier) and applies the store's secrets here at once.
func (c *tenantCredentials) SetCredential(ctx context.Context, tenant, verifier string) error {
	if !c.on {
		return adminapi.ErrPerTenantOff
	}
	if _, err := proxy.ParseTenantVerifier(verifier); err != nil {
		return err
	}
	if err := c.store.SetCredential(ctx, tenant, verifier); err != nil {
		return err
	}
	return c.refresh(ctx)
}

// DeleteCredential removes tenant's own secret and applies that here at
// once; deleted reports whether it had one.
func (c *tenantCredentials) DeleteCredential(ctx context.Context, tenant string) (bool, error) {
	deleted, err := c.store.DeleteCredential(ctx, tenant)
	if err != nil {
		return false, err
	}
	if c.on {
		err = c.refresh(ctx)
	}
	return deleted, err
}

// HasSecret reports whether this router lets tenant in with a secret of
// its own.
func (c *tenantCredentials) HasSecret(tenant string) bool { return c.proxy.TenantHasSecret(tenant) }

// refresh reads the store's secrets and hands them to the proxy. A
// verifier the proxy refuses (written into the catalog by hand) locks its
// tenant's own secret and is logged; the others apply.
func (c *tenantCredentials) refresh(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := c.store.Credentials(ctx)
	if err != nil {
		return err
	}
	bad := ""
	if err := c.proxy.SetTenantCredentials(v); err != nil {
		bad = err.Error()
	}
	if bad != "" && bad != c.lastBad { // once, not at every refresh
		c.log.Warn("tenants' own secrets", "err", bad)
	}
	c.lastBad = bad
	return nil
}
