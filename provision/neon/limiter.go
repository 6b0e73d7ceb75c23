package neon

import (
	"context"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/provision/internal/backoff"
)

// limiter keeps the provider's requests under two limits at once: at most
// perMinute requests in any 60 seconds overall, and at most perSecond in any
// second per route (docs/neon-api.md §2.3). Each limit is a GCRA (a token
// bucket in virtual-time form) whose burst plus its refill over the window
// equals the limit, so no window of that length, wherever it starts, holds
// more requests than the limit:
//
//	overall:   burst min(perMinute/10, 40), refill (perMinute-burst)/minute
//	per route: burst perSecond/2,           refill (perSecond-burst)/second
//
// A caller reserves a slot in both buckets and sleeps until it comes up;
// callers are served in the order they reserve. A caller whose ctx ends
// while it waits gives up its wait but not its slot, which errs on the safe
// side. Safe for concurrent use.
type limiter struct {
	routeBurst    int
	routeInterval time.Duration

	mu struct {
		sync.Mutex
		overall gcra
		routes  map[string]*gcra // guarded by mu; keys are route templates, a handful
	}
}

// gcra is one bucket: the earliest time (tat) the next request would
// conform if the bucket were empty, the time one token takes to refill
// (interval) and how far ahead of tat a burst may go (tolerance).
type gcra struct {
	interval, tolerance time.Duration
	tat                 time.Time
}

func newGCRA(burst int, interval time.Duration) gcra {
	return gcra{interval: interval, tolerance: time.Duration(burst-1) * interval}
}

// earliest is when a request may go at the soonest, given now.
func (g *gcra) earliest(now time.Time) time.Time {
	if t := g.tat.Add(-g.tolerance); t.After(now) {
		return t
	}
	return now
}

// take records a request sent at at, which must not be before earliest.
func (g *gcra) take(at time.Time) {
	if g.tat.Before(at) {
		g.tat = at
	}
	g.tat = g.tat.Add(g.interval)
}

// burstAndInterval splits limit requests per window into a burst and a
// refill interval such that burst + window/interval == limit.
func burstAndInterval(limit, burst int, window time.Duration) (int, time.Duration) {
	burst = max(1, min(burst, limit))
	refill := max(1, limit-burst)
	return burst, window / time.Duration(refill)
}

func newLimiter(perMinute, perSecond int) *limiter {
	ob, oi := burstAndInterval(perMinute, min(perMinute/10, DefaultRoutePerSecond), time.Minute)
	rb, ri := burstAndInterval(perSecond, perSecond/2, time.Second)
	l := &limiter{routeBurst: rb, routeInterval: ri}
	l.mu.overall = newGCRA(ob, oi)
	l.mu.routes = make(map[string]*gcra)
	return l
}

// reserve takes a slot for route in both buckets and returns when it comes
// up (now or later).
func (l *limiter) reserve(route string, now time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.mu.routes[route]
	if r == nil {
		g := newGCRA(l.routeBurst, l.routeInterval)
		r = &g
		l.mu.routes[route] = r
	}
	at := l.mu.overall.earliest(now)
	if t := r.earliest(now); t.After(at) {
		at = t
	}
	l.mu.overall.take(at)
	r.take(at)
	return at
}

// wait blocks until a request to route may be sent, or ctx ends.
func (l *limiter) wait(ctx context.Context, route string) error {
	return backoff.Sleep(ctx, time.Until(l.reserve(route, time.Now())))
}
