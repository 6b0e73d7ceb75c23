package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFull(t *testing.T) {
	base := 100 * time.Millisecond
	for attempt, ceil := range []time.Duration{100, 200, 400, 800, 1600, 3200, 3200, 3200} {
		ceil *= time.Millisecond
		var maxSeen time.Duration
		for range 200 {
			d := Full(attempt, base)
			if d < 0 || d > ceil {
				t.Fatalf("Full(%d) = %v, want within [0, %v]", attempt, d, ceil)
			}
			maxSeen = max(maxSeen, d)
		}
		if maxSeen < ceil/2 { // full jitter spreads over the whole range
			t.Errorf("Full(%d): max of 200 draws %v, want near %v", attempt, maxSeen, ceil)
		}
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on an ended context = %v, want context.Canceled", err)
	}
	if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) on an ended context = %v, want context.Canceled", err)
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep = %v", err)
	}
}
