package supabase

import (
	"testing"
	"time"
)

// TestLimiterWindows: however requests are bunched, no 60-second window
// holds more than the limit for one scope, scopes do not share a budget,
// and a burst goes out at once (docs/supabase-api.md §8).
func TestLimiterWindows(t *testing.T) {
	const perMinute = 120
	l := newLimiter(perMinute)
	t0 := time.Unix(1_000_000, 0)
	var at []time.Time
	for range 400 {
		at = append(at, l.reserve("project/a", t0))
	}
	for i := range at {
		j := i
		for j < len(at) && at[j].Sub(at[i]) < time.Minute {
			j++
		}
		if n := j - i; n > perMinute {
			t.Fatalf("%d requests in the minute from %v, limit %d", n, at[i].Sub(t0), perMinute)
		}
	}
	if burst := countAt(at, t0); burst < 10 {
		t.Errorf("only %d requests go at once; want a burst", burst)
	}
	if got := l.reserve("project/b", t0); !got.Equal(t0) {
		t.Errorf("another scope waits until %v: scopes must not share a budget", got.Sub(t0))
	}
}

func countAt(at []time.Time, t time.Time) int {
	n := 0
	for _, a := range at {
		if a.Equal(t) {
			n++
		}
	}
	return n
}
