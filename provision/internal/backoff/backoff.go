// Package backoff is the retry timing the cloud providers' API clients
// share (neon, supabase, rds): full-jitter exponential delays and a sleep
// that ends with its context.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// MaxFactor caps a delay's ceiling at this multiple of the base delay.
const MaxFactor = 32

// Full returns the delay before retry number attempt+1: uniform in
// [0, base*2^attempt], the ceiling capped at MaxFactor*base ("full
// jitter", so that many clients retrying at once spread out).
func Full(attempt int, base time.Duration) time.Duration {
	ceil := base * MaxFactor
	if attempt < 5 {
		ceil = base << attempt
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// Sleep waits for d or until ctx ends, and returns ctx's error in the
// second case (also at once when d is not positive and ctx has ended).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
