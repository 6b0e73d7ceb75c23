package bench

import (
	"sync"
	"time"
)

// This file records what the HTML report draws beyond the figures: each
// result's latency distributions and its timeline. Neither is part of the
// JSON report.

// CDFPoint is one point of a latency distribution: Fraction (0 to 1) of
// the recorded values are at most Ms milliseconds, to within the
// Histogram's 0.4%.
type CDFPoint struct {
	Ms       float64
	Fraction float64
}

// cdfSteps bounds the points of a CDF: a point is kept once at least
// 1/cdfSteps of the values lie between it and the last one kept, so a CDF
// has at most cdfSteps+2 points (the first and the last bucket are always
// kept) and is never more than 1/cdfSteps off in fraction.
const cdfSteps = 400

// cdf returns h's distribution as a compact, ascending list of points, the
// last one at Max with Fraction 1; nil if h is empty. It must not race
// Record (Run calls it between rounds).
func (h *Histogram) cdf() []CDFPoint {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	if n == 0 {
		return nil
	}
	mx := h.max.Load()
	var pts []CDFPoint
	var cum, kept uint64
	for i := range h.counts {
		c := h.counts[i].Load()
		if c == 0 {
			continue
		}
		cum += c
		if len(pts) > 0 && cum < n && (cum-kept)*cdfSteps < n {
			continue
		}
		lo, width := bucketRange(i)
		v := min(lo+(width-1)/2, mx)
		if cum >= n {
			v = mx
		}
		pts = append(pts, CDFPoint{Ms: ms(time.Duration(v)), Fraction: float64(cum) / float64(n)})
		kept = cum
		if cum >= n {
			break
		}
	}
	return pts
}

// Sample is one point of a Result's timeline.
type Sample struct {
	// Round is the round the sample was taken in, from 0.
	Round int
	// T is the time since the target's first round of the scenario
	// started, counting only this target's rounds: they are laid end to
	// end, each from its start to the end of its measured part (before
	// its connections are closed).
	T time.Duration
	// Open is the number of connections open (as Progress.Open).
	Open int64
	// Connects and Queries count the target's successful connects and
	// queries in the scenario so far, over all rounds.
	Connects, Queries int64
}

// sampleEvery returns how often a round of window is sampled: every
// 100ms, more often in rounds shorter than 10s (at least 100 samples, but
// not more often than every 10ms).
func sampleEvery(window time.Duration) time.Duration {
	return min(max(window/100, 10*time.Millisecond), 100*time.Millisecond)
}

// sampler records the timeline of one round of one target into its acc,
// from a goroutine of its own: a sample when the round starts, one every
// interval, and a last one at end (or stop, whichever comes first).
type sampler struct {
	r      *runner
	a      *acc
	round  int
	start  time.Time
	offset time.Duration // where this round starts on the timeline

	once sync.Once
	done chan struct{}
	wg   sync.WaitGroup
}

// startSampler starts sampling round of the acc's target; the returned
// sampler is also a.smp until stop.
func (r *runner) startSampler(a *acc, round int, every time.Duration) *sampler {
	s := &sampler{r: r, a: a, round: round, start: time.Now(), offset: a.tlEnd, done: make(chan struct{})}
	a.smp = s
	s.wg.Go(func() { s.run(every) })
	return s
}

func (s *sampler) run(every time.Duration) {
	s.take(s.start)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			s.take(time.Now())
			return
		case <-tick.C:
			s.take(time.Now())
		}
	}
}

// take appends a sample; only the sampler's goroutine calls it.
func (s *sampler) take(now time.Time) {
	s.a.timeline = append(s.a.timeline, Sample{
		Round:    s.round,
		T:        s.offset + now.Sub(s.start),
		Open:     s.r.open.Load(),
		Connects: s.a.connect.Count(),
		Queries:  s.a.query.Count(),
	})
}

// end stops sampling and returns once the round's last sample is taken.
// Scenarios that hold connections call it before closing them. s may be
// nil (warm-up).
func (s *sampler) end() {
	if s == nil {
		return
	}
	s.once.Do(func() { close(s.done) })
	s.wg.Wait()
}

// stop ends sampling if the scenario has not; the next round's timeline
// continues where this one ended.
func (s *sampler) stop() {
	s.end()
	if tl := s.a.timeline; len(tl) > 0 {
		s.a.tlEnd = tl[len(tl)-1].T
	}
	s.a.smp = nil
}
