package bench_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/bench"
)

// oracle is the nearest-rank percentile of sorted samples.
func oracle(sorted []time.Duration, q float64) time.Duration {
	rank := max(int(math.Ceil(q*float64(len(sorted)))), 1)
	return sorted[rank-1]
}

func TestHistogramQuantilesMatchSortedSamples(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name string
		n    int
		gen  func() time.Duration
	}{
		{"one value", 1, func() time.Duration { return 1234567 }},
		{"small exact values", 1000, func() time.Duration { return time.Duration(rng.IntN(200)) }},
		{"uniform microseconds to ms", 10000, func() time.Duration { return time.Duration(50_000 + rng.IntN(5_000_000)) }},
		{"log-normal around 100us", 20000, func() time.Duration {
			return time.Duration(math.Exp(rng.NormFloat64()*1.5) * 100_000)
		}},
		{"bimodal fast and slow", 5000, func() time.Duration {
			if rng.IntN(100) < 5 {
				return time.Duration(200e6 + rng.IntN(50e6)) // a cold start
			}
			return time.Duration(80_000 + rng.IntN(20_000))
		}},
		{"seconds to minutes", 1000, func() time.Duration { return time.Duration(rng.Int64N(int64(10 * time.Minute))) }},
	}
	quantiles := []float64{0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h bench.Histogram
			samples := make([]time.Duration, tt.n)
			for i := range samples {
				samples[i] = tt.gen()
				h.Record(samples[i])
			}
			slices.Sort(samples)
			if got := h.Count(); got != int64(tt.n) {
				t.Fatalf("Count = %d, want %d", got, tt.n)
			}
			if got, want := h.Max(), samples[len(samples)-1]; got != want {
				t.Errorf("Max = %v, want %v", got, want)
			}
			for _, q := range quantiles {
				got, want := h.Quantile(q), oracle(samples, q)
				// Within 0.4% by construction; the plan asks for ~1%.
				if diff := math.Abs(float64(got - want)); diff > 1 && diff/float64(want) > 0.004 {
					t.Errorf("Quantile(%v) = %v, want %v (off by %.2f%%)", q, got, want, 100*math.Abs(float64(got-want))/float64(want))
				}
			}
		})
	}
}

func TestHistogramMergeEqualsOneHistogram(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var a, b, all bench.Histogram
	for i := range 5000 {
		d := time.Duration(rng.Int64N(int64(50 * time.Millisecond)))
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
		all.Record(d)
	}
	a.Merge(&b)
	if a.Count() != all.Count() || a.Max() != all.Max() || a.Mean() != all.Mean() {
		t.Fatalf("merged count/max/mean = %d/%v/%v, want %d/%v/%v", a.Count(), a.Max(), a.Mean(), all.Count(), all.Max(), all.Mean())
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		if a.Quantile(q) != all.Quantile(q) {
			t.Errorf("merged Quantile(%v) = %v, want %v", q, a.Quantile(q), all.Quantile(q))
		}
	}
}

func TestHistogramEdges(t *testing.T) {
	var h bench.Histogram
	if h.Quantile(0.5) != 0 || h.Max() != 0 || h.Mean() != 0 || h.Count() != 0 {
		t.Fatal("an empty histogram reports non-zero figures")
	}
	h.Record(-time.Second) // counts as zero
	h.Record(time.Hour)    // beyond the tracked range: Max stays exact
	if h.Quantile(0.5) != 0 {
		t.Errorf("Quantile(0.5) = %v, want 0", h.Quantile(0.5))
	}
	if h.Max() != time.Hour || h.Quantile(1) != time.Hour {
		t.Errorf("Max = %v, Quantile(1) = %v, want 1h", h.Max(), h.Quantile(1))
	}
	if got := h.Quantile(0.99); got > time.Hour || got < 17*time.Minute {
		t.Errorf("Quantile(0.99) = %v, want within the last bucket, at most 1h", got)
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	var h bench.Histogram
	d := 123 * time.Microsecond
	if allocs := testing.AllocsPerRun(1000, func() { h.Record(d); d += 17 }); allocs != 0 {
		t.Fatalf("Record allocates %v times", allocs)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h bench.Histogram
	b.ReportAllocs()
	d := time.Duration(0)
	for b.Loop() {
		h.Record(d)
		d = (d + 7919) % time.Second
	}
}

func BenchmarkHistogramRecordParallel(b *testing.B) {
	var h bench.Histogram
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			h.Record(d)
			d = (d + 7919) % time.Second
		}
	})
}
