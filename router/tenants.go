package router

import (
	"fmt"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/resolver"
)

// validateTenantCreation checks tenant.create, tenant.max_tenants and
// tenant.creates_per_minute.
func (fc *Config) validateTenantCreation() []error {
	var errs []error
	if m := resolver.CreateMode(fc.Tenant.Create); m == "" || !m.Valid() {
		errs = append(errs, fmt.Errorf("tenant.create: %q is not auto, api or off", fc.Tenant.Create))
	}
	if fc.Tenant.MaxTenants < 0 {
		errs = append(errs, fmt.Errorf("tenant.max_tenants: %d is negative (0: no cap)", fc.Tenant.MaxTenants))
	}
	if fc.Tenant.CreatesPerMinute < 0 {
		errs = append(errs, fmt.Errorf("tenant.creates_per_minute: %d is negative (0: no limit)", fc.Tenant.CreatesPerMinute))
	}
	if fc.Tenant.CreateWait < 0 || fc.Tenant.CreateBudget < 0 || fc.Tenant.CreateLease < 0 {
		errs = append(errs, fmt.Errorf("tenant.create_wait, create_budget and create_lease must not be negative (0: their defaults %s, %s, %s)",
			DefaultCreateWait, DefaultCreateBudget, DefaultCreateLease))
	}
	if w := fc.createWait(); fc.ConnectTimeout > 0 && w >= fc.ConnectTimeout {
		errs = append(errs, fmt.Errorf("tenant.create_wait %s must be shorter than connect_timeout %s: a client waiting for a background creation must get its 57P03 before the router gives up on its connect", w, fc.ConnectTimeout))
	}
	return errs
}

// Defaults of the background creations of slow providers (those whose
// Create takes minutes, provision.Estimator: Aurora, RDS).
const (
	// DefaultCreateWait is tenant.create_wait: how long the connect that
	// starts a background creation waits for it before its 57P03. libpq's
	// connect_timeout (and most drivers' login timeouts) are commonly set to
	// 5-15 s, and the client spends part of it on TCP, TLS and SCRAM before
	// the router resolves; 3 s leaves the rest, so the client reads "being
	// created (about N minutes)" rather than its own timeout. A fast
	// creation (a retried one the provider adopts) still ends in the wait.
	DefaultCreateWait = 3 * time.Second
	// DefaultCreateBudget is tenant.create_budget: Aurora and RDS take 5-20
	// minutes to create an instance, occasionally more.
	DefaultCreateBudget = 30 * time.Minute
	// DefaultCreateLease is tenant.create_lease: a creator heartbeats every
	// third of it, so a catalog hiccup of a few seconds loses nothing.
	DefaultCreateLease = time.Minute
)

// createWait is tenant.create_wait with its default.
func (fc *Config) createWait() time.Duration {
	if fc.Tenant.CreateWait <= 0 {
		return DefaultCreateWait
	}
	return fc.Tenant.CreateWait
}

// CreateMode is tenant.create as the resolver takes it.
func (fc *Config) CreateMode() resolver.CreateMode { return resolver.CreateMode(fc.Tenant.Create) }

// CreateLimits are tenant.max_tenants and tenant.creates_per_minute as the
// catalog applies them.
func (fc *Config) CreateLimits() catalog.CreateLimits {
	return catalog.CreateLimits{MaxTenants: fc.Tenant.MaxTenants, CreatesPerMinute: fc.Tenant.CreatesPerMinute}
}
