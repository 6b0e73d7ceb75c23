package bench

import (
	"math"
	"testing"
	"time"
)

// TestTimelineSeries checks the series drawn from a timeline of two
// rounds, sampled every 10ms at a steady 1000 queries/s, each round
// ending 5ms after its last tick.
func TestTimelineSeries(t *testing.T) {
	var tl []Sample
	var q int64
	for r := range 2 {
		off := time.Duration(r) * 1005 * time.Millisecond
		for i := 0; i <= 100; i++ {
			tl = append(tl, Sample{Round: r, T: off + time.Duration(i)*10*time.Millisecond, Open: int64(i % 5), Queries: q})
			q += 10
		}
		q -= 5 // the last sample comes 5ms after the one before
		tl = append(tl, Sample{Round: r, T: off + 1005*time.Millisecond, Open: 4, Queries: q})
		q += 5
	}
	tp := throughputSeries(tl)
	if len(tp) != 2 {
		t.Fatalf("%d parts, want one per round", len(tp))
	}
	for _, part := range tp {
		if len(part) != 10 {
			t.Errorf("%d windows, want 10 of 100ms (the last 5ms joining the last one)", len(part))
		}
		for _, p := range part {
			if math.Abs(p.y-1000) > 1e-6 {
				t.Errorf("throughput %v at %vs, want 1000", p.y, p.x)
			}
		}
	}
	if first := tp[0][0]; math.Abs(first.x-0.05) > 1e-9 {
		t.Errorf("first window plotted at %vs, want its middle, 0.05s", first.x)
	}
	if second := tp[1][0]; math.Abs(second.x-1.055) > 1e-9 {
		t.Errorf("second round's first window at %vs, want 1.055s", second.x)
	}
	mean := openMeanSeries(tl)
	if got := mean[0][0].y; got != 2 { // samples 1..10: 1 2 3 4 0 1 2 3 4 0
		t.Errorf("mean open connections %v, want 2", got)
	}
	open := openSeries(tl)
	if len(open) != 2 || len(open[0]) != 102 || open[1][101] != (point{2.01, 4}) {
		t.Errorf("open connections: %d parts of %d points, last %v", len(open), len(open[0]), open[1][len(open[1])-1])
	}
	if throughputSeries(nil) != nil {
		t.Error("series of an empty timeline")
	}
}
