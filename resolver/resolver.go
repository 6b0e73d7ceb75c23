package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/sync/singleflight"

	"github.com/pgtenant/pgtenant/provision"
)

// Sentinel errors returned (wrapped) by Resolve. Branch on them with errors.Is.
var (
	// ErrProvision means the provider failed to create the tenant, or gave up
	// within the fill budget. The tenant may well exist a moment later: the
	// proxy tells the client to retry (SQLSTATE 57P03).
	ErrProvision = errors.New("resolver: provisioning failed")
	// ErrCatalog means the catalog could not be read or written (unreachable,
	// timed out, wrong key, corrupt row).
	ErrCatalog = errors.New("resolver: catalog error")
	// ErrUnknownTenant means provisioning is disabled (New was given a nil
	// Provisioner) and the catalog holds no route for the tenant, or the
	// provider's Create answered provision.ErrTenantNotFound (a provider
	// that only finds existing databases, such as static, found none; the
	// error then wraps that too).
	ErrUnknownTenant = errors.New("resolver: unknown tenant")
	// ErrClosed is returned by Resolve after Close, and to the waiters of a
	// fill that Close cancelled.
	ErrClosed = errors.New("resolver: closed")
	// ErrTenantNotCreated means Resolve found no route and Config.Create
	// keeps clients from creating one (CreateAPI, CreateOff). It wraps
	// ErrUnknownTenant. The proxy answers it as it answers a wrong password,
	// so that clients cannot probe which tenants exist.
	ErrTenantNotCreated = fmt.Errorf("%w (tenant.create is not auto: clients do not create tenants)", ErrUnknownTenant)
	// ErrCreateOff is returned by Ensure when Config.Create is CreateOff.
	ErrCreateOff = errors.New("resolver: tenant creation is off (tenant.create: off)")
	// ErrCreateLimit means the store refused a creation because a
	// cluster-wide limit was reached; the error also wraps the
	// *provision.LimitError that says which.
	ErrCreateLimit = errors.New("resolver: tenant creation limit reached")
)

// CreateMode says who may create a tenant that the store does not have.
type CreateMode string

// The creation modes (tenant.create). The zero CreateMode is CreateAuto.
const (
	// CreateAuto: Resolve creates a missing tenant (a client's first
	// connect creates it), as does Ensure.
	CreateAuto CreateMode = "auto"
	// CreateAPI: only Ensure (the admin API's warm) creates; Resolve of a
	// missing tenant fails with ErrTenantNotCreated.
	CreateAPI CreateMode = "api"
	// CreateOff: nothing creates; Resolve fails with ErrTenantNotCreated and
	// Ensure with ErrCreateOff for a missing tenant.
	CreateOff CreateMode = "off"
)

// Valid reports whether m is a known mode ("" counts as CreateAuto).
func (m CreateMode) Valid() bool {
	switch m {
	case "", CreateAuto, CreateAPI, CreateOff:
		return true
	}
	return false
}

// Via says how a route was found. It is reported in the per-session log line.
type Via uint8

// The ways a route can be found. The zero Via is not a valid value, so a
// zero Route cannot pass for a cached one.
const (
	ViaCache   Via = iota + 1 // from this process's LRU
	ViaCatalog                // read from the shared catalog
	ViaCreated                // provisioned by this fill and recorded in the catalog
)

// String returns "cache", "catalog" or "created".
func (v Via) String() string {
	switch v {
	case ViaCache:
		return "cache"
	case ViaCatalog:
		return "catalog"
	case ViaCreated:
		return "created"
	}
	return "Via(" + strconv.Itoa(int(v)) + ")"
}

// LogValue implements slog.LogValuer so JSON logs show the name, not a number.
func (v Via) LogValue() slog.Value { return slog.StringValue(v.String()) }

// Route is a resolved tenant upstream. The embedded Endpoint holds the
// tenant's password: String and LogValue leave it out.
type Route struct {
	provision.Endpoint
	Via Via
}

// LogValue implements slog.LogValuer: the endpoint without its password, and Via.
func (r Route) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("addr", r.Addr()),
		slog.String("database", r.Database),
		slog.String("user", r.User),
		slog.String("via", r.Via.String()),
	)
}

// Config configures a Resolver. The zero value is usable.
type Config struct {
	// CacheSize caps the number of cached routes (positive and negative).
	// Zero or negative means 10000.
	CacheSize int
	// TTL is how long a resolved route is served from the cache before the
	// catalog is asked again. Zero or negative means 5m.
	TTL time.Duration
	// NegativeTTL is how long a failed fill is remembered: Resolve returns the
	// same error without asking the catalog or provider again, so a broken
	// provider is not hammered. Zero means 1s; negative disables it.
	NegativeTTL time.Duration
	// FillTimeout bounds one fill (catalog lookup, waiting for another
	// instance's provisioning, and provisioning). It runs detached from the
	// callers' contexts. Zero or negative means 2m.
	FillTimeout time.Duration
	// Log receives an Info line per tenant created. Nil discards.
	Log *slog.Logger
	// Metrics records cache and provisioning counters (see metrics.go).
	// Nil records nothing.
	Metrics *Metrics
	// MaxConcurrentCreates caps the tenant creations this Resolver runs at
	// once (each holds a slot from the catalog check that finds the tenant
	// missing until it is recorded). Fills over it wait, within their
	// FillTimeout; clients give up at their own deadline. Zero or negative:
	// no cap. Change it at runtime with SetMaxConcurrentCreates.
	MaxConcurrentCreates int
	// Providers are the provisioners a tenant can be placed on, by name
	// (the default one included). The store refuses to create a tenant
	// placed elsewhere than the provisioner it is given; the Resolver then
	// creates it with the one named here. Nil: placements fail.
	Providers map[string]Provisioner
	// Create says who may create a missing tenant: CreateAuto (the zero
	// value), CreateAPI or CreateOff. The store applies the cluster-wide
	// limits (max tenants, creates per minute) itself. Change it at
	// runtime with SetCreateMode.
	Create CreateMode
}

func (c *Config) cacheSize() int {
	if c.CacheSize <= 0 {
		return 10000
	}
	return c.CacheSize
}

func (c *Config) ttl() time.Duration {
	if c.TTL <= 0 {
		return 5 * time.Minute
	}
	return c.TTL
}

// negativeTTL returns 0 when negative caching is disabled.
func (c *Config) negativeTTL() time.Duration {
	switch {
	case c.NegativeTTL == 0:
		return time.Second
	case c.NegativeTTL < 0:
		return 0
	}
	return c.NegativeTTL
}

func (c *Config) fillTimeout() time.Duration {
	if c.FillTimeout <= 0 {
		return 2 * time.Minute
	}
	return c.FillTimeout
}

// Store is the persistent tenant table a Resolver reads and fills.
// *catalog.Catalog implements it; see its Lookup and Ensure for the
// contract. Ensure calls create at most once, before it returns, and fails
// if create fails. Implementations must be safe for concurrent use.
type Store interface {
	Lookup(ctx context.Context, tenant string) (ep provision.Endpoint, ok bool, err error)
	Ensure(ctx context.Context, tenant, provider string,
		create func(context.Context) (provision.Endpoint, error)) (ep provision.Endpoint, created bool, err error)
}

// Provisioner creates tenants' databases. provision.Provider implements it.
type Provisioner interface {
	// Name is recorded in the catalog's provider column.
	Name() string
	// Create makes (or adopts) the tenant's database; it must be idempotent.
	Create(ctx context.Context, tenant string) (provision.Endpoint, error)
}

// Resolver maps tenant IDs to Routes through an LRU, a per-tenant
// singleflight and a Store. It is safe for concurrent use. Create one with
// New and stop it with Close.
type Resolver struct {
	cfg   Config
	store Store
	prov  Provisioner // nil: never provision
	log   *slog.Logger

	flight  singleflight.Group
	closing context.Context // done once Close is called; cancels fills
	stop    context.CancelFunc
	fills   sync.WaitGroup             // running fill functions; Add only under mu while !closed
	creates semaphore                  // MaxConcurrentCreates (limit.go)
	mode    atomic.Pointer[CreateMode] // Config.Create, as SetCreateMode changes it

	mu struct {
		sync.Mutex
		cache  *simplelru.LRU[string, entry] // guarded by mu
		epoch  uint64                        // bumped by Invalidate; guarded by mu
		closed bool                          // guarded by mu
	}
}

// entry is a cached fill result: a route, or the error of a failed fill.
type entry struct {
	ep      provision.Endpoint
	err     error
	expires time.Time
}

// New returns a Resolver that reads and records routes in store and creates
// missing tenants with p. If p is nil the Resolver never provisions: tenants
// missing from the store resolve to ErrUnknownTenant.
//
// New starts no goroutines; fills run on goroutines owned by the Resolver
// until Close.
func New(cfg Config, store Store, p Provisioner) *Resolver {
	r := &Resolver{cfg: cfg, store: store, prov: p, log: cfg.Log}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.closing, r.stop = context.WithCancel(context.Background())
	r.creates.resize(cfg.MaxConcurrentCreates)
	r.SetCreateMode(cfg.Create)
	cache, err := simplelru.NewLRU[string, entry](cfg.cacheSize(), nil)
	if err != nil {
		panic("resolver: " + err.Error()) // unreachable: cacheSize() is positive
	}
	r.mu.cache = cache
	return r
}

// Resolve returns the route of tenant, which the caller has validated.
//
// A cached route returns at once and allocates nothing. Otherwise Resolve
// joins (or starts) the tenant's single fill and waits for it or for ctx: if
// ctx ends first Resolve returns ctx.Err(), and the fill continues under its
// own FillTimeout for the other callers and the cache. Errors wrap
// ErrProvision, ErrCatalog, ErrUnknownTenant or ErrClosed; a failed fill is
// returned again for NegativeTTL. Safe for concurrent use.
func (r *Resolver) Resolve(ctx context.Context, tenant string) (Route, error) {
	e, hit, err := r.cached(tenant)
	if err == nil {
		r.cfg.Metrics.lookedUp(hit, e)
	}
	switch {
	case err != nil:
		return Route{}, err
	case hit && e.err != nil:
		return Route{}, e.err
	case hit:
		return Route{Endpoint: e.ep, Via: ViaCache}, nil
	}
	if err := ctx.Err(); err != nil {
		return Route{}, err // don't start a fill nobody waits for
	}
	return r.join(ctx, tenant, tenant, false)
}

// Ensure is Resolve for an operator (the admin API's warm): it creates a
// missing tenant unless Config.Create is CreateOff, when it fails with
// ErrCreateOff. A remembered failure of a client's Resolve does not stop
// it. Errors wrap those of Resolve, ErrCreateOff or ErrCreateLimit. Safe
// for concurrent use.
func (r *Resolver) Ensure(ctx context.Context, tenant string) (Route, error) {
	e, hit, err := r.cached(tenant)
	switch {
	case err != nil:
		return Route{}, err
	case hit && e.err == nil:
		return Route{Endpoint: e.ep, Via: ViaCache}, nil
	}
	if err := ctx.Err(); err != nil {
		return Route{}, err
	}
	// Its own flight: a client's fill, which may not create, must not
	// answer for it. The prefix cannot start a valid tenant ID.
	return r.join(ctx, "\x00ensure:"+tenant, tenant, true)
}

// SetCreateMode changes Config.Create at runtime; "" means CreateAuto.
// Fills already running keep the mode they started with. Safe for
// concurrent use.
func (r *Resolver) SetCreateMode(m CreateMode) {
	if m == "" {
		m = CreateAuto
	}
	r.mode.Store(&m)
}

// createMode is the mode in force.
func (r *Resolver) createMode() CreateMode { return *r.mode.Load() }

// join joins (or starts) the fill under key and waits for it or for ctx.
// byAPI says whether Ensure (not Resolve) asked.
func (r *Resolver) join(ctx context.Context, key, tenant string, byAPI bool) (Route, error) {
	select {
	case res := <-r.flight.DoChan(key, r.filler(ctx, tenant, byAPI)):
		if res.Err != nil {
			return Route{}, res.Err
		}
		return res.Val.(Route), nil
	case <-ctx.Done():
		return Route{}, ctx.Err()
	}
}

// Invalidate drops tenant's cached route or remembered failure, for example
// after the upstream refused the route's credentials. The next Resolve starts
// a new fill, even if one is in flight; a fill already in flight will not
// cache its result. Safe for concurrent use.
func (r *Resolver) Invalidate(tenant string) {
	r.mu.Lock()
	r.mu.cache.Remove(tenant)
	r.mu.epoch++
	r.mu.Unlock()
	r.flight.Forget(tenant)
	r.flight.Forget("\x00ensure:" + tenant)
}

// Cached reports whether a route for tenant is in the cache and not expired.
// Remembered failures do not count. It does not change the LRU order.
func (r *Resolver) Cached(tenant string) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.mu.cache.Peek(tenant)
	return ok && e.err == nil && now.Before(e.expires)
}

// Close cancels the fills still running, waits for them to return, and makes
// later Resolve calls fail with ErrClosed. Waiters of a cancelled fill get
// ErrClosed; providers are idempotent, so a cancelled creation is adopted by
// the next attempt. Close is safe to call more than once.
func (r *Resolver) Close() {
	r.mu.Lock()
	r.mu.closed = true
	r.mu.Unlock()
	r.stop()
	r.fills.Wait()
}

// cached returns tenant's unexpired cache entry, removing an expired one.
func (r *Resolver) cached(tenant string) (entry, bool, error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.closed {
		return entry{}, false, ErrClosed
	}
	e, ok := r.mu.cache.Get(tenant)
	if !ok {
		return entry{}, false, nil
	}
	if !now.Before(e.expires) {
		r.mu.cache.Remove(tenant)
		return entry{}, false, nil
	}
	return e, true, nil
}

// filler returns the singleflight function that fills tenant's route. It
// runs on singleflight's goroutine, detached from ctx's cancellation (but
// keeping its values), bounded by FillTimeout and by Close.
func (r *Resolver) filler(ctx context.Context, tenant string, byAPI bool) func() (any, error) {
	return func() (any, error) {
		r.mu.Lock()
		if r.mu.closed {
			r.mu.Unlock()
			return nil, ErrClosed
		}
		epoch := r.mu.epoch
		r.fills.Add(1)
		r.mu.Unlock()
		defer r.fills.Done()

		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.fillTimeout())
		defer cancel()
		stop := context.AfterFunc(r.closing, cancel)
		defer stop()

		rt, err := r.fill(fctx, tenant, byAPI)
		if err != nil {
			if r.closing.Err() != nil {
				return nil, ErrClosed
			}
			// An operator's failure is not what clients should be told.
			if ttl := r.cfg.negativeTTL(); ttl > 0 && !byAPI {
				r.remember(tenant, epoch, entry{err: err, expires: time.Now().Add(ttl)})
			}
			return nil, err
		}
		r.remember(tenant, epoch, entry{ep: rt.Endpoint, expires: time.Now().Add(r.cfg.ttl())})
		return rt, nil
	}
}

// remember caches e unless Invalidate ran since the fill began (its result
// may be what was invalidated). The epoch is global, so an invalidation also
// keeps concurrent fills of other tenants from caching; they refill later.
func (r *Resolver) remember(tenant string, epoch uint64, e entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.epoch == epoch && !r.mu.closed && r.mu.cache.Add(tenant, e) {
		r.cfg.Metrics.evicted()
	}
}

// fill finds tenant's route in the store, creating the tenant if needed
// and Config.Create lets the caller (Ensure if byAPI, else Resolve).
func (r *Resolver) fill(ctx context.Context, tenant string, byAPI bool) (Route, error) {
	mode := r.createMode()
	mayCreate := mode == CreateAuto || (byAPI && mode == CreateAPI)
	if r.prov == nil || !mayCreate {
		ep, ok, err := r.store.Lookup(ctx, tenant)
		switch {
		case err != nil:
			r.cfg.Metrics.catalogError()
			return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrCatalog, tenant, err)
		case !ok && r.prov == nil:
			return Route{}, fmt.Errorf("%w %q", ErrUnknownTenant, tenant)
		case !ok:
			r.cfg.Metrics.refused("create_" + string(mode))
			if byAPI {
				return Route{}, fmt.Errorf("%w: tenant %q", ErrCreateOff, tenant)
			}
			return Route{}, fmt.Errorf("%w: tenant %q", ErrTenantNotCreated, tenant)
		}
		return Route{Endpoint: ep, Via: ViaCatalog}, nil
	}

	var limit *provision.LimitError
	start := time.Now()
	prov := r.prov
	ep, created, createErr, err := r.create(ctx, tenant, prov)
	var placed placedError
	if errors.As(err, &placed) && createErr == nil {
		// Placed on another provider: the store said so under the
		// tenant's lock, so this is the provider to create it with.
		name := placed.PlacedProvider()
		if prov = r.cfg.Providers[name]; prov == nil {
			return Route{}, fmt.Errorf("%w: tenant %q is placed on provider %s, which this router does not have (provider.kind, provider.also)", ErrProvision, tenant, name)
		}
		ep, created, createErr, err = r.create(ctx, tenant, prov)
	}
	name := prov.Name()
	switch {
	case err != nil && errors.Is(createErr, provision.ErrTenantNotFound):
		// A provider that only finds databases (static) found none.
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrUnknownTenant, tenant, createErr)
	case err != nil && createErr != nil:
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrProvision, tenant, createErr)
	case errors.Is(err, errCreateSlot):
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrProvision, tenant, err)
	case errors.As(err, &limit):
		r.cfg.Metrics.refused(limitReason(limit.Setting))
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrCreateLimit, tenant, err)
	case err != nil:
		r.cfg.Metrics.catalogError()
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrCatalog, tenant, err)
	case !created:
		return Route{Endpoint: ep, Via: ViaCatalog}, nil
	}
	r.log.LogAttrs(ctx, slog.LevelInfo, "tenant created",
		slog.String("tenant", tenant), slog.String("provider", name),
		slog.Any("endpoint", ep), slog.Duration("took", time.Since(start)))
	return Route{Endpoint: ep, Via: ViaCreated}, nil
}

// placedError is the store's answer when the tenant is placed on another
// provider than the one Ensure was given (*catalog.PlacedError).
type placedError interface {
	error
	PlacedProvider() string
}

// create runs the store's Ensure with prov creating. createErr is set when
// the provider (not the store) failed.
func (r *Resolver) create(ctx context.Context, tenant string, prov Provisioner) (ep provision.Endpoint, created bool, createErr, err error) {
	name := prov.Name()
	ep, created, err = r.ensure(ctx, tenant, name, func(ctx context.Context) (provision.Endpoint, error) {
		pstart := time.Now()
		ep, err := prov.Create(ctx, tenant)
		switch {
		case err != nil:
			createErr = fmt.Errorf("provider %s: %w", name, err)
		case ep.Host == "" || ep.Port == 0:
			createErr = fmt.Errorf("provider %s returned an endpoint without host or port", name)
		default:
			r.cfg.Metrics.provisioned(pstart, nil)
			return ep, nil
		}
		r.cfg.Metrics.provisioned(pstart, createErr)
		return provision.Endpoint{}, createErr // never hand a password along with an error
	})
	if err == nil {
		ep.Provider = name
	}
	return ep, created, createErr, err
}
