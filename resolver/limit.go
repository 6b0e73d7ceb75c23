package resolver

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pgtenant/pgtenant/provision"
)

// semaphore is a counting semaphore whose size can change while it is in
// use (Resolver.SetMaxConcurrentCreates). Waiters are served in order.
type semaphore struct {
	mu      sync.Mutex
	size    int             // <= 0: unlimited; guarded by mu
	held    int             // guarded by mu
	waiters []chan struct{} // closed when granted; guarded by mu
}

// acquire takes a slot, waiting for one until ctx ends.
func (s *semaphore) acquire(ctx context.Context) error {
	s.mu.Lock()
	if s.size <= 0 || (s.held < s.size && len(s.waiters) == 0) {
		s.held++
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-ch: // granted meanwhile: hand it on
			s.held--
			s.grantLocked()
		default:
			for i, w := range s.waiters {
				if w == ch {
					s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
					break
				}
			}
		}
		return ctx.Err()
	}
}

func (s *semaphore) release() {
	s.mu.Lock()
	s.held--
	s.grantLocked()
	s.mu.Unlock()
}

func (s *semaphore) resize(n int) {
	s.mu.Lock()
	s.size = n
	s.grantLocked()
	s.mu.Unlock()
}

// grantLocked wakes waiters while there is room. The caller holds s.mu.
func (s *semaphore) grantLocked() {
	for len(s.waiters) > 0 && (s.size <= 0 || s.held < s.size) {
		s.held++
		close(s.waiters[0])
		s.waiters = s.waiters[1:]
	}
}

// SetMaxConcurrentCreates changes Config.MaxConcurrentCreates at runtime.
// Creations already running are not affected; a larger value lets waiting
// ones start at once. Safe for concurrent use.
func (r *Resolver) SetMaxConcurrentCreates(n int) { r.creates.resize(n) }

// errCreateSlot means a fill gave up waiting for a creation slot.
var errCreateSlot = errors.New("waiting for a creation slot (max concurrent creates)")

func (s *semaphore) limited() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size > 0
}

// ensure is store.Ensure under MaxConcurrentCreates. A tenant the store
// already has is returned without waiting; for a missing one the fill waits
// for a creation slot (bounded by ctx: the fill's budget, or Close) and
// holds it while the store checks again, creates and records the tenant.
// Waiting before Ensure, not inside create, keeps waiting fills from
// holding catalog connections and per-tenant locks.
func (r *Resolver) ensure(ctx context.Context, tenant, provider string,
	create func(context.Context) (provision.Endpoint, error),
) (provision.Endpoint, bool, error) {
	if !r.creates.limited() {
		return r.store.Ensure(ctx, tenant, provider, create)
	}
	if ep, ok, err := r.store.Lookup(ctx, tenant); err != nil || ok {
		return ep, false, err
	}
	if err := r.creates.acquire(ctx); err != nil {
		return provision.Endpoint{}, false, fmt.Errorf("%w: %w", errCreateSlot, err)
	}
	defer r.creates.release()
	return r.store.Ensure(ctx, tenant, provider, create)
}
