package bench

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The histogram's buckets are HDR-like: values below 2^(subBits+1)
// nanoseconds have a bucket each, and every power of two above is split
// into 2^subBits buckets of equal width. A bucket is at most 1/2^subBits of
// its lower bound wide, so reporting its midpoint is within 1/2^(subBits+1)
// (0.4%) of any value in it.
const (
	subBits    = 7
	subCount   = 1 << subBits // buckets per power of two
	maxShift   = 32           // largest bucket width is 2^maxShift ns (4.3 s)
	numBuckets = (maxShift+1)*subCount + subCount
	// maxTracked is the largest value with its own bucket (about 18
	// minutes); larger values go to the last bucket, and Max stays exact.
	maxTracked = int64(1)<<(maxShift+subBits+1) - 1
)

// Histogram records durations in log-scaled buckets (HDR-like), so that
// percentiles are accurate to within 0.4% of the recorded values from 1 ns
// to about 18 minutes, in a fixed 35 KB. Record is lock-free and
// allocation-free; Histograms can be merged.
//
// The zero value is an empty histogram ready for use. All methods are safe
// for concurrent use; percentiles read while Record runs reflect some
// subset of the concurrent records. A Histogram must not be copied after
// first use.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Int64 // nanoseconds
	max    atomic.Int64 // nanoseconds
}

// bucketOf returns the index of the bucket holding v (v >= 0).
func bucketOf(v int64) int {
	if v > maxTracked {
		v = maxTracked
	}
	if v < 2*subCount {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - 1 - subBits
	return shift*subCount + int(v>>shift)
}

// bucketRange returns the smallest value of bucket i and its width.
func bucketRange(i int) (lo, width int64) {
	if i < 2*subCount {
		return int64(i), 1
	}
	shift := i/subCount - 1
	mantissa := int64(i%subCount + subCount)
	return mantissa << shift, int64(1) << shift
}

// Record adds one duration. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Merge adds every value recorded in o to h. o must not be h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	h.sum.Add(o.sum.Load())
	om := o.max.Load()
	for {
		m := h.max.Load()
		if om <= m || h.max.CompareAndSwap(m, om) {
			return
		}
	}
}

// Count returns the number of recorded values.
func (h *Histogram) Count() int64 { return int64(h.total.Load()) }

// Max returns the largest recorded value exactly, or 0 if there is none.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean returns the average of the recorded values, or 0 if there is none.
func (h *Histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / int64(n))
}

// Quantile returns the value at quantile q (0 < q <= 1; 0.99 is the 99th
// percentile) by the nearest-rank definition: the smallest recorded value
// that at least q of all values are less than or equal to, to within 0.4%.
// It returns 0 for an empty histogram; q >= 1 returns Max.
func (h *Histogram) Quantile(q float64) time.Duration {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	if n == 0 {
		return 0
	}
	mx := h.max.Load()
	if q >= 1 {
		return time.Duration(mx)
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		if cum >= rank {
			lo, width := bucketRange(i)
			return time.Duration(min(lo+(width-1)/2, mx))
		}
	}
	return time.Duration(mx) // not reached unless Record races the scan
}
