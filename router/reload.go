package router

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"time"
)

// reloadable are the keys (and key prefixes, ending in ".") that SIGHUP
// applies to a running router. Every other key needs a restart; a reload
// that changes one says so in a warning. The TLS certificate and key files
// are read again too, but changing their paths (or tls.mode) needs a
// restart.
var reloadable = []string{"log.level", "limits.", "blocked_tenants", "tenant.create", "tenant.max_tenants", "tenant.creates_per_minute", "auth.tenant_secret", "migrations."}

// Reload applies nc's reloadable keys to the running router: the log level
// (when Options.Level was given), the limits, who may create tenants and
// how many (tenant.create, tenant.max_tenants, tenant.creates_per_minute),
// whether the app secret opens tenants that have their own secret
// (auth.tenant_secret), the migrations section (on_connect, with the files
// of migrations.dir read and checked again; catchup.go), the block list's blocked_tenants (and the shared
// list, read again from the catalog, as are the per-tenant pool modes and
// the tenants' own secrets), and the client TLS certificate (its files read again). Changed keys that need
// a restart are named in a warning, never applied. Reload does not validate
// nc; the caller (serve's SIGHUP) loads and validates it first, and keeps
// the running configuration when that fails.
func (r *Router) Reload(ctx context.Context, nc Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var applied []string
	if r.level != nil {
		if l, err := ParseLevel(nc.Log.Level); err == nil && l != r.level.Level() {
			r.level.Set(l)
			applied = append(applied, "log.level")
		}
	}
	r.cur.Log.Level = nc.Log.Level
	if nc.Limits != r.cur.Limits {
		r.cur.Limits = nc.Limits
		r.applyLimitsLocked()
		r.res.SetMaxConcurrentCreates(nc.Limits.MaxConcurrentCreates)
		applied = append(applied, "limits")
	}
	if nc.Tenant.Create != r.cur.Tenant.Create {
		r.res.SetCreateMode(nc.CreateMode()) // tenants.go
		r.cur.Tenant.Create = nc.Tenant.Create
		applied = append(applied, "tenant.create")
	}
	if nc.CreateLimits() != r.cur.CreateLimits() {
		r.cat.SetCreateLimits(nc.CreateLimits())
		r.cur.Tenant.MaxTenants, r.cur.Tenant.CreatesPerMinute = nc.Tenant.MaxTenants, nc.Tenant.CreatesPerMinute
		applied = append(applied, "tenant.max_tenants,tenant.creates_per_minute")
	}
	if nc.Auth.TenantSecret != r.cur.Auth.TenantSecret {
		if err := r.srv.SetTenantSecret(nc.Auth.TenantSecret); err == nil {
			r.cur.Auth.TenantSecret = nc.Auth.TenantSecret
			applied = append(applied, "auth.tenant_secret")
		}
	}
	if !slices.Equal(nc.BlockedTenants, r.cur.BlockedTenants) {
		r.blocks.setFile(nc.BlockedTenants)
		r.cur.BlockedTenants = nc.BlockedTenants
		applied = append(applied, "blocked_tenants")
	}

	if nc.Migrations != r.cur.Migrations {
		mctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		merr := r.catchup.reload(mctx, nc.Migrations) // catchup.go
		cancel()
		if merr != nil {
			r.log.Warn("config reload: migrations not reloaded; keeping the running on_connect and files", "err", merr)
		} else {
			r.cur.Migrations = nc.Migrations
			applied = append(applied, "migrations")
		}
	}

	if err := r.srv.ReloadTLS(); err != nil {
		r.log.Warn("config reload: TLS certificate not reloaded; keeping the current one", "err", err)
	}
	bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err := r.blocks.refresh(bctx)
	cancel()
	if err != nil {
		r.log.Warn("config reload: block list not refreshed; keeping the last one", "err", err)
	}
	mctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	if merr := r.modes.refresh(mctx); merr != nil {
		r.log.Warn("config reload: per-tenant pool modes not refreshed; keeping the last ones", "err", merr)
	}
	cancel()
	if r.creds.on {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		if cerr := r.creds.refresh(cctx); cerr != nil {
			r.log.Warn("config reload: tenants' own secrets not refreshed", "err", cerr)
		}
		cancel()
	}

	if keys := changedKeys(r.cur, nc); len(keys) > 0 {
		r.log.Warn("config reload: these keys changed but only take effect after a restart", "keys", strings.Join(keys, ","))
	}
	r.log.Info("config reloaded", "applied", strings.Join(applied, ","))
	return err
}

// changedKeys lists the keys whose values differ between a and b, in the
// dotted form of the YAML file, leaving out the reloadable ones. It never
// reports values (some are secrets).
func changedKeys(a, b Config) []string {
	var keys []string
	var walk func(prefix string, x, y reflect.Value)
	walk = func(prefix string, x, y reflect.Value) {
		t := x.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			if isReloadable(key) {
				continue
			}
			fx, fy := x.Field(i), y.Field(i)
			if f.Type.Kind() == reflect.Struct {
				walk(key+".", fx, fy)
				continue
			}
			if !reflect.DeepEqual(fx.Interface(), fy.Interface()) {
				keys = append(keys, key)
			}
		}
	}
	walk("", reflect.ValueOf(a), reflect.ValueOf(b))
	return keys
}

func isReloadable(key string) bool {
	for _, r := range reloadable {
		if key == r || strings.HasSuffix(r, ".") && (strings.HasPrefix(key, r) || key+"." == r) {
			return true
		}
	}
	return false
}
