package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// SQLSTATEs of Postgres' own idle timeouts, which IdleTimeout mirrors.
const (
	codeIdleSessionTimeout       = "57P05"
	codeIdleInTransactionTimeout = "25P03"
)

// idleState is what the idle sweeper knows of a live session. The pump
// toward the client writes ready* (once per ReadyForQuery, no clock read);
// only the sweeper touches seenIn and since.
type idleState struct {
	// readyIn is the client's byte count (bytesIn) when the upstream last
	// said ReadyForQuery: while bytesIn still equals it the upstream is
	// waiting for the client. Zero at the start, when the session is ready
	// too. (A client that pipelines a query behind another can look idle
	// while its second query runs; idle timeouts are far longer than that.)
	readyIn atomic.Int64
	// txStatus is that ReadyForQuery's transaction status ('I', 'T', 'E';
	// 0 at the start: idle).
	txStatus atomic.Uint32

	seenIn int64 // bytesIn when the sweeper saw the session go idle
	since  stamp // when the sweeper saw it; zero while busy
}

// noteReady records a ReadyForQuery with status st from the upstream. It is
// called before the message is written to the client, so the client cannot
// have answered it yet.
func (ls *liveSession) noteReady(st byte) {
	ls.idle.readyIn.Store(ls.bytesIn.Load())
	ls.idle.txStatus.Store(uint32(st))
}

// sweepPeriod is how often the sweeper runs under the current limits.
func (s *Server) sweepPeriod() time.Duration {
	d := s.lim.limits.Load().IdleTimeout
	if d <= 0 {
		return 10 * time.Second // only old auth failures to forget
	}
	return min(max(d/10, 10*time.Millisecond), 10*time.Second)
}

// startSweeper starts the goroutine that ends idle sessions and forgets old
// auth failures. stop ends it and waits for it.
func (s *Server) startSweeper() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.sweepLoop(ctx) })
	return func() { cancel(); wg.Wait() }
}

func (s *Server) sweepLoop(ctx context.Context) {
	t := time.NewTimer(s.sweepPeriod())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.lim.wake: // the limits changed: maybe the period too
		}
		now := s.lim.now()
		s.sweepIdle(now)
		s.lim.sweepBackoff(now)
		s.lim.sweepCancels(now)
		t.Reset(s.sweepPeriod())
	}
}

// sweepIdle ends the sessions idle for IdleTimeout or longer.
func (s *Server) sweepIdle(now time.Time) {
	timeout := s.lim.limits.Load().IdleTimeout
	if timeout <= 0 {
		return
	}
	s.lim.sweepMu.Lock()
	defer s.lim.sweepMu.Unlock()
	s.live.each("", func(ls *liveSession) {
		st := &ls.idle
		in := ls.bytesIn.Load()
		if in != st.readyIn.Load() { // the client spoke since the last ReadyForQuery
			st.since = 0
			return
		}
		if st.since == 0 || in != st.seenIn {
			st.seenIn, st.since = in, max(stampOf(now), 1) // 0 means unset
			return
		}
		if now.Sub(st.since.time()) < timeout {
			return
		}
		tx := byte(st.txStatus.Load())
		ls.kill(idleError(tx == 'T' || tx == 'E'))
	})
}

// idleError ends a session idle for too long, with Postgres' own codes and
// words for idle_in_transaction_session_timeout and idle_session_timeout.
func idleError(inTransaction bool) *ClientError {
	if inTransaction {
		return &ClientError{Code: codeIdleInTransactionTimeout, Msg: "terminating connection due to idle-in-transaction timeout", Outcome: OutcomeIdleTimeout}
	}
	return &ClientError{Code: codeIdleSessionTimeout, Msg: "terminating connection due to idle-session timeout", Outcome: OutcomeIdleTimeout}
}
