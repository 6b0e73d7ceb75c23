package resolver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgtenant/pgtenant/provision"
)

// Background creations: a provider implementing provision.Estimator takes
// minutes to create a tenant, longer than any client waits for a connect.
// Its Create runs on a goroutine the Resolver owns, under its own budget
// (Config.CreateBudget), detached from the client that started it; the
// connect waits at most Config.CreateWait and then gets a *CreatingError
// (the proxy answers 57P03 "being created, about N minutes, retry"), as do
// later connects until it is done. The store (the catalog) records the
// creation, so other router instances answer the same without starting a
// second one, and take it over when its creator stops heartbeating for
// Config.CreateLease: providers adopt by name, so a resumed creation is
// safe.

// ErrCreating means the tenant is being created in the background; the
// error is a *CreatingError.
var ErrCreating = errors.New("resolver: tenant is being created")

// ErrCreateFailed means the tenant's background creation failed; it wraps
// ErrProvision. Clients are told so for Config.NegativeTTL (by the catalog,
// on every instance), then the next connect starts a new one.
var ErrCreateFailed = fmt.Errorf("%w (background creation failed)", ErrProvision)

// CreatingError says that a tenant is being created in the background:
// since when, and how long the provider says a creation takes.
type CreatingError struct {
	Tenant   string
	Started  time.Time
	Estimate time.Duration // provision.Estimator's CreateEstimate
}

func (e *CreatingError) Error() string {
	return fmt.Sprintf("resolver: tenant %q is being created (started %s ago, about %s left)",
		e.Tenant, time.Since(e.Started).Round(time.Second), e.Remaining(time.Now()).Round(time.Second))
}

// Is makes errors.Is(err, ErrCreating) true.
func (e *CreatingError) Is(target error) bool { return target == ErrCreating }

// Remaining is the estimate minus the time elapsed at now, at least zero.
func (e *CreatingError) Remaining(now time.Time) time.Duration {
	return max(e.Estimate-now.Sub(e.Started), 0)
}

// Minutes is Remaining in whole minutes, rounded up and at least 1: the
// "about N minutes" clients are told.
func (e *CreatingError) Minutes(now time.Time) int {
	return max(int((e.Remaining(now)+time.Minute-1)/time.Minute), 1)
}

// CreationStore is what a Store offers for background creations;
// *catalog.Catalog implements it (see its ClaimCreation for the
// contract). Without it a slow provider's Create runs within the fill,
// as any provider's does.
type CreationStore interface {
	ClaimCreation(ctx context.Context, tenant, provider, owner string, lease, retryAfter time.Duration) (provision.Endpoint, provision.Creation, error)
	HeartbeatCreation(ctx context.Context, tenant, owner string) (bool, error)
	FinishCreation(ctx context.Context, tenant, provider, owner string, ep provision.Endpoint) error
	FailCreation(ctx context.Context, tenant, owner, why string) error
	Creation(ctx context.Context, tenant string) (provision.Creation, bool, error)
}

func (c *Config) createWait() time.Duration {
	if c.CreateWait <= 0 {
		return 3 * time.Second
	}
	return c.CreateWait
}

func (c *Config) createBudget() time.Duration {
	if c.CreateBudget <= 0 {
		return 30 * time.Minute
	}
	return c.CreateBudget
}

func (c *Config) createLease() time.Duration {
	if c.CreateLease <= 0 {
		return time.Minute
	}
	return c.CreateLease
}

// bgCreate is a background creation this Resolver runs.
type bgCreate struct {
	started time.Time
	est     time.Duration
	done    chan struct{} // closed when rt/err are set
	rt      Route
	err     error
}

// background returns the estimator and creation store when tenants of
// prov are created in the background, else ok is false.
func (r *Resolver) background(prov Provisioner) (provision.Estimator, CreationStore, bool) {
	est, ok := prov.(provision.Estimator)
	if !ok {
		return nil, nil, false
	}
	cs, ok := r.store.(CreationStore)
	return est, cs, ok
}

// Creating returns tenant's background creation running in this process,
// if any, as the error connects get meanwhile. Safe for concurrent use.
func (r *Resolver) Creating(tenant string) (*CreatingError, bool) {
	r.mu.Lock()
	b := r.mu.creating[tenant]
	r.mu.Unlock()
	if b == nil {
		return nil, false
	}
	return &CreatingError{Tenant: tenant, Started: b.started, Estimate: b.est}, true
}

// creatingErr is the error a connect gets while c (another instance's or
// this one's) runs.
func creatingErr(tenant string, started time.Time, est time.Duration) error {
	return &CreatingError{Tenant: tenant, Started: started, Estimate: est}
}

// fillBackground is fill for a provider that creates in the background:
// it claims the creation in the store and, if it got the claim, starts it
// and waits for it at most CreateWait.
func (r *Resolver) fillBackground(ctx context.Context, tenant string, prov Provisioner, est provision.Estimator, cs CreationStore) (Route, error) {
	if ce, ok := r.Creating(tenant); ok {
		r.cfg.Metrics.creatingAnswer()
		return Route{}, ce
	}
	ep, ok, err := r.store.Lookup(ctx, tenant)
	switch {
	case err != nil:
		r.cfg.Metrics.catalogError()
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrCatalog, tenant, err)
	case ok:
		return Route{Endpoint: ep, Via: ViaCatalog}, nil
	}
	release := func() {}
	if r.creates.limited() { // MaxConcurrentCreates: the slot goes with the creation
		// Waiting for a slot is waiting too: at most CreateWait, so the
		// client hears back well inside its connect timeout.
		actx, cancel := context.WithTimeout(ctx, r.cfg.createWait())
		err := r.creates.acquire(actx)
		cancel()
		if err != nil {
			return Route{}, fmt.Errorf("%w: tenant %q: %w: %w", ErrProvision, tenant, errCreateSlot, err)
		}
		release = r.creates.release
	}
	name := prov.Name()
	owner := newOwner()
	ep, c, err := cs.ClaimCreation(ctx, tenant, name, owner, r.cfg.createLease(), r.cfg.negativeTTL())
	var limit *provision.LimitError
	var placed placedError
	switch {
	case errors.As(err, &placed):
		release()
		return Route{}, err // fill creates it with the provider it is placed on
	case errors.As(err, &limit):
		release()
		r.cfg.Metrics.refused(limitReason(limit.Setting))
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrCreateLimit, tenant, err)
	case err != nil:
		release()
		r.cfg.Metrics.catalogError()
		return Route{}, fmt.Errorf("%w: tenant %q: %w", ErrCatalog, tenant, err)
	case c.State == provision.CreationReady:
		release()
		return Route{Endpoint: ep, Via: ViaCatalog}, nil
	case c.State == provision.CreationFailed:
		release()
		return Route{}, fmt.Errorf("%w: tenant %q: %s", ErrCreateFailed, tenant, c.Error)
	case c.Owner != owner: // another instance's, alive
		release()
		r.cfg.Metrics.creatingAnswer()
		return Route{}, creatingErr(tenant, c.Started, est.CreateEstimate())
	}
	b, err := r.startBackground(tenant, prov, owner, c.Started, est.CreateEstimate(), cs, release)
	if err != nil {
		return Route{}, err
	}
	wait := time.NewTimer(r.cfg.createWait())
	defer wait.Stop()
	select {
	case <-b.done:
		return b.rt, b.err
	case <-wait.C:
	case <-ctx.Done():
	}
	r.cfg.Metrics.creatingAnswer()
	return Route{}, creatingErr(tenant, b.started, b.est)
}

// creatingElsewhere is fill's answer, for a client that may not create,
// about a tenant being created (by an operator's warm): ErrCreating, or
// nil when there is no creation running.
func (r *Resolver) creatingElsewhere(ctx context.Context, tenant string) error {
	cs, ok := r.store.(CreationStore)
	if !ok {
		return nil
	}
	if ce, ok := r.Creating(tenant); ok {
		return ce
	}
	c, ok, err := cs.Creation(ctx, tenant)
	if err != nil || !ok || c.State != provision.CreationRunning {
		return nil // the caller's answer stands
	}
	prov := r.prov
	if p := r.cfg.Providers[c.Provider]; p != nil { // the provider it is placed on
		prov = p
	}
	est, ok := prov.(provision.Estimator)
	if !ok {
		return nil
	}
	return creatingErr(tenant, c.Started, est.CreateEstimate())
}

// newOwner is a claim token: random, so that two attempts never share one.
func newOwner() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startBackground registers and starts the creation owner claimed. release
// gives back its MaxConcurrentCreates slot when it ends.
func (r *Resolver) startBackground(tenant string, prov Provisioner, owner string, started time.Time, est time.Duration, cs CreationStore, release func()) (*bgCreate, error) {
	b := &bgCreate{started: started, est: est, done: make(chan struct{})}
	r.mu.Lock()
	if r.mu.closed {
		r.mu.Unlock()
		release()
		return nil, ErrClosed
	}
	if r.mu.creating == nil {
		r.mu.creating = make(map[string]*bgCreate)
	}
	r.mu.creating[tenant] = b
	r.bgs.Add(1)
	r.mu.Unlock()
	r.cfg.Metrics.backgroundStarted()
	go func() {
		defer r.bgs.Done()
		defer release()
		r.runBackground(b, tenant, prov, owner, cs)
	}()
	return b, nil
}

// runBackground runs one background creation to its end: Create under
// CreateBudget (cancelled early only by Close or a lost claim),
// heartbeats meanwhile, then the store's finish or failure, and the
// result in this process's cache.
func (r *Resolver) runBackground(b *bgCreate, tenant string, prov Provisioner, owner string, cs CreationStore) {
	provider := prov.Name()
	ctx, cancel := context.WithTimeoutCause(context.Background(), r.cfg.createBudget(),
		fmt.Errorf("the creation took longer than its budget (tenant.create_budget %s)", r.cfg.createBudget()))
	defer cancel()
	stop := context.AfterFunc(r.closing, cancel)
	defer stop()
	hbDone := make(chan struct{})
	lost := make(chan struct{})
	go heartbeat(ctx, cs, tenant, owner, r.cfg.createLease()/3, lost, hbDone, cancel)

	start := time.Now()
	ep, err := prov.Create(ctx, tenant)
	switch {
	case err != nil:
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		err = fmt.Errorf("provider %s: %w", provider, err)
	case ep.Host == "" || ep.Port == 0:
		err = fmt.Errorf("provider %s returned an endpoint without host or port", provider)
		ep = provision.Endpoint{}
	default:
		ep.Provider = provider // the proxy picks the provider's upstream settings by it
	}
	r.cfg.Metrics.provisioned(start, err)
	cancel() // stops the heartbeats
	<-hbDone

	// The store's part gets a moment of its own even when the router is
	// closing: a finished creation should not be lost for a late record.
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	closing := r.closing.Err() != nil
	switch {
	case err == nil:
		if serr := cs.FinishCreation(sctx, tenant, provider, owner, ep); serr != nil {
			err = fmt.Errorf("%w: record tenant %q: %w", ErrCatalog, tenant, serr)
		}
	case closing:
		// Left running in the store: after the lease another instance
		// takes it over (and the provider adopts what this one began).
		err = ErrClosed
	case isClosed(lost):
		// Another instance took the claim over and creates it now.
		err = creatingErr(tenant, b.started, b.est)
	default:
		if serr := cs.FailCreation(sctx, tenant, owner, err.Error()); serr != nil {
			r.log.LogAttrs(sctx, slog.LevelWarn, "could not record a failed creation",
				slog.String("tenant", tenant), slog.Any("err", serr))
		}
		err = fmt.Errorf("%w: tenant %q: %w", ErrCreateFailed, tenant, err)
	}
	if err == nil {
		b.rt = Route{Endpoint: ep, Via: ViaCreated}
		r.log.LogAttrs(sctx, slog.LevelInfo, "tenant created",
			slog.String("tenant", tenant), slog.String("provider", provider), slog.Bool("background", true),
			slog.Any("endpoint", ep), slog.Duration("took", time.Since(start)))
	} else {
		b.err = err
		if errors.Is(err, ErrCreateFailed) {
			r.cfg.Metrics.backgroundFailed()
			r.log.LogAttrs(sctx, slog.LevelWarn, "background creation failed",
				slog.String("tenant", tenant), slog.String("provider", provider), slog.Any("err", err))
		}
	}
	r.finishBackground(tenant, b)
}

// finishBackground publishes b's result: in the cache (a failure for
// NegativeTTL, so that the next connect is told), and to its waiters.
func (r *Resolver) finishBackground(tenant string, b *bgCreate) {
	now := time.Now()
	r.mu.Lock()
	delete(r.mu.creating, tenant)
	if !r.mu.closed {
		if b.err == nil {
			if r.mu.cache.Add(tenant, entry{ep: b.rt.Endpoint, expires: now.Add(r.cfg.ttl())}) {
				r.cfg.Metrics.evicted()
			}
		} else if ttl := r.cfg.negativeTTL(); ttl > 0 {
			if r.mu.cache.Add(tenant, entry{err: b.err, expires: now.Add(ttl)}) {
				r.cfg.Metrics.evicted()
			}
		}
	}
	r.mu.Unlock()
	r.cfg.Metrics.backgroundEnded()
	close(b.done)
}

// heartbeat keeps owner's claim alive every interval until ctx ends, then
// closes done. If the claim was taken over it closes lost and cancels the
// creation: the instance that took it over creates the tenant now.
func heartbeat(ctx context.Context, cs CreationStore, tenant, owner string, interval time.Duration, lost, done chan struct{}, cancel context.CancelFunc) {
	defer close(done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, hcancel := context.WithTimeout(ctx, interval)
		ok, err := cs.HeartbeatCreation(hctx, tenant, owner)
		hcancel()
		if err == nil && !ok {
			close(lost)
			cancel()
			return
		}
		// A failed heartbeat (catalog briefly away) is retried next tick;
		// missing several lets another instance take over, which is safe.
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
