// Package slowprov is a test provider that behaves like a cloud provider
// whose creations take minutes (Aurora, RDS): it wraps a real provider
// (the local one in tests), implements provision.Estimator, and holds each
// Create until the test releases it, or fails it on demand. It stands in
// for the AWS fakes, which are written in parallel with it.
package slowprov

import (
	"context"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/provision"
)

// Provider is a provision.Provider with a CreateEstimate whose Create
// waits for Release. It is safe for concurrent use.
type Provider struct {
	provision.Provider // the real one: Name, Delete, and Create once released

	estimate time.Duration

	mu    sync.Mutex
	gate  chan struct{} // closed by Release; guarded by mu
	fail  error         // returned by released creations instead of creating; guarded by mu
	calls int           // guarded by mu
}

var (
	_ provision.Provider  = (*Provider)(nil)
	_ provision.Estimator = (*Provider)(nil)
)

// New wraps inner; its creations are said to take estimate, and are held
// until Release.
func New(inner provision.Provider, estimate time.Duration) *Provider {
	return &Provider{Provider: inner, estimate: estimate, gate: make(chan struct{})}
}

// CreateEstimate implements provision.Estimator.
func (p *Provider) CreateEstimate() time.Duration { return p.estimate }

// Create counts the call, waits for Release (or ctx), then fails with the
// error set by Fail or creates with the real provider.
func (p *Provider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	p.mu.Lock()
	p.calls++
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return provision.Endpoint{}, ctx.Err()
	}
	p.mu.Lock()
	fail := p.fail
	p.mu.Unlock()
	if fail != nil {
		return provision.Endpoint{}, fail
	}
	return p.Provider.Create(ctx, tenant)
}

// Release lets the creations waiting, and all later ones until Hold, go on.
func (p *Provider) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// Hold makes later creations wait for Release again.
func (p *Provider) Hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default:
	}
}

// Fail makes released creations fail with err (nil: create again).
func (p *Provider) Fail(err error) {
	p.mu.Lock()
	p.fail = err
	p.mu.Unlock()
}

// Calls is how many times Create was called.
func (p *Provider) Calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}
