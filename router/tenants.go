package router

import (
	"fmt"

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
	return errs
}

// CreateMode is tenant.create as the resolver takes it.
func (fc *Config) CreateMode() resolver.CreateMode { return resolver.CreateMode(fc.Tenant.Create) }

// CreateLimits are tenant.max_tenants and tenant.creates_per_minute as the
// catalog applies them.
func (fc *Config) CreateLimits() catalog.CreateLimits {
	return catalog.CreateLimits{MaxTenants: fc.Tenant.MaxTenants, CreatesPerMinute: fc.Tenant.CreatesPerMinute}
}
