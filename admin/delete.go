package admin

import (
	"context"
	"errors"
	"fmt"

	"github.com/pgtenant/pgtenant/provision"
)

// Deleter removes a tenant's catalog row. *catalog.Catalog implements it.
type Deleter interface {
	Delete(ctx context.Context, tenant string) error
}

// Deletion says what DeleteTenant found: true where it deleted something,
// false where there was nothing to delete.
type Deletion struct {
	Provider, Catalog bool
}

// DeleteTenant deletes tenant's database at prov first and its catalog row
// second, so that a crash in between leaves a row whose next connect
// re-creates the tenant, never a database nobody knows about. It is the one
// order both the API's DELETE and `pgtenant tenants delete` use. Nothing at
// one place is no error; nothing at either is provision.ErrTenantNotFound.
func DeleteTenant(ctx context.Context, prov Deprovisioner, cat Deleter, tenant string) (Deletion, error) {
	var d Deletion
	perr := prov.Delete(ctx, tenant)
	if perr != nil && !errors.Is(perr, provision.ErrTenantNotFound) {
		return d, fmt.Errorf("delete tenant %q at %s: %w", tenant, prov.Name(), perr)
	}
	d.Provider = perr == nil
	cerr := cat.Delete(ctx, tenant)
	if cerr != nil && !errors.Is(cerr, provision.ErrTenantNotFound) {
		return d, fmt.Errorf("delete tenant %q from the catalog: %w", tenant, cerr)
	}
	d.Catalog = cerr == nil
	if !d.Provider && !d.Catalog {
		return d, fmt.Errorf("tenant %q: nothing to delete at provider %s or in the catalog: %w", tenant, prov.Name(), provision.ErrTenantNotFound)
	}
	return d, nil
}

// recordedProvider is the provider that holds tenant, as the catalog
// records it: Config.Provider with one provider, else the one of
// Config.Providers the tenant's row names. A tenant recorded on a provider
// this router does not have is refused: deleting it with another provider
// could hit a namesake.
func (h *Handler) recordedProvider(ctx context.Context, tenant string) (Deprovisioner, error) {
	if h.cfg.Providers == nil {
		return h.cfg.Provider, nil
	}
	ep, ok, err := h.cfg.Catalog.Lookup(ctx, tenant)
	switch {
	case err != nil:
		return nil, err
	case !ok || ep.Provider == "":
		return h.cfg.Provider, nil // no live row: the default provider's leftovers, if any
	}
	if p := h.cfg.Providers[ep.Provider]; p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("%w: tenant %q lives on provider %s, which this router does not have: add it to provider.also to delete the tenant", ErrNoProvider, tenant, ep.Provider)
}
