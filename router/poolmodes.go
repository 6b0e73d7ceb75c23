package router

import (
	"context"
	"fmt"
	"sync"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/proxy"
)

// poolModeStore is where the shared per-tenant pool modes are kept.
// *catalog.Catalog implements it.
type poolModeStore interface {
	SetPoolMode(ctx context.Context, tenant, mode string) error
	ClearPoolMode(ctx context.Context, tenant string) error
	PoolModes(ctx context.Context) (map[string]string, error)
}

// poolModeApplier is the proxy's side of them. *proxy.Server implements it.
type poolModeApplier interface {
	SetTenantPoolModes(map[string]proxy.PoolMode)
	TenantPoolModes() map[string]proxy.PoolMode
}

// tenantPoolModes hands the store's per-tenant pool modes to the proxy, as
// blockList does the block list: at start, on the refresh loop, on Reload
// and at once after a change through the admin API (admin.PoolModes).
type tenantPoolModes struct {
	store poolModeStore
	proxy poolModeApplier
	mu    sync.Mutex // serialises refreshes, so an older map never lands last
}

// SetPoolMode stores tenant's mode (session, transaction or off; "" clears
// it) and applies the store's modes here at once.
func (p *tenantPoolModes) SetPoolMode(ctx context.Context, tenant, mode string) error {
	var err error
	switch {
	case mode == "":
		err = p.store.ClearPoolMode(ctx, tenant)
	case catalog.ValidPoolMode(mode):
		err = p.store.SetPoolMode(ctx, tenant, mode)
	default:
		return fmt.Errorf("pool mode %q: want session, transaction or off", mode)
	}
	if err != nil {
		return err
	}
	return p.refresh(ctx)
}

// PoolMode is tenant's mode as this router applies it: session,
// transaction, off, or "" when it has none (the router's default applies).
func (p *tenantPoolModes) PoolMode(tenant string) string {
	m, ok := p.proxy.TenantPoolModes()[tenant]
	if !ok {
		return ""
	}
	return poolModeName(m)
}

// refresh reads the store's modes and hands them to the proxy. New
// sessions follow them; running ones keep their mode.
func (p *tenantPoolModes) refresh(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	stored, err := p.store.PoolModes(ctx)
	if err != nil {
		return err
	}
	modes := make(map[string]proxy.PoolMode, len(stored))
	for t, m := range stored {
		if m == catalog.PoolModeOff {
			modes[t] = proxy.PoolOff
		} else {
			modes[t] = proxy.PoolMode(m)
		}
	}
	p.proxy.SetTenantPoolModes(modes)
	return nil
}
