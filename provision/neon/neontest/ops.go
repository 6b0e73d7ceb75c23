package neontest

import (
	"errors"
	"time"
)

// Operations. Each project has a FIFO queue served by one goroutine
// (runOps) while it is not empty, so a project's operations run one after
// the other, as Neon's do: the first of a request is "running" at once, the
// rest "scheduling". Each runs its Postgres work (if any) and lasts at
// least OpDelay; then its state transition applies (branch init -> ready,
// endpoint init -> active, ...). While any visible operation of a project
// is unfinished, mutating calls answer 423.

var errInjected = errors.New("operation failed (injected by neontest FailNextOperation)")

// newOpLocked makes an operation of p. Caller holds s.mu.
func (s *Server) newOpLocked(p *project, action, branchID, endpointID string) *operation {
	now := s.nowLocked()
	return &operation{
		Operation: Operation{
			ID:         newUUID(),
			ProjectID:  p.id,
			BranchID:   branchID,
			EndpointID: endpointID,
			Action:     action,
			Status:     OpScheduling,
			CreatedAt:  sec(now),
			UpdatedAt:  sec(now),
		},
		p:       p,
		created: now,
	}
}

// enqueueLocked queues the operations of one request, in order, and starts
// p's worker if it is idle. Caller holds s.mu.
func (s *Server) enqueueLocked(p *project, ops ...*operation) {
	s.mu.nextBatch++
	s.faults.Lock()
	for _, op := range ops {
		if !op.hidden && s.faults.failOp[op.Action] > 0 {
			s.faults.failOp[op.Action]--
			op.fail = true
		}
	}
	s.faults.Unlock()
	for _, op := range ops {
		op.batch = s.mu.nextBatch
		if len(p.queue) == 0 {
			op.Status = OpRunning // the worker picks it up at once
		}
		p.queue = append(p.queue, op)
		if !op.hidden {
			p.ops = append(p.ops, op)
			p.opsByID[op.ID] = op
		}
	}
	if !p.working && !s.mu.closed {
		p.working = true
		s.wg.Go(func() { s.runOps(p) })
	}
	s.notifyLocked()
}

// runOps serves p's queue until it is empty (or the server closes).
func (s *Server) runOps(p *project) {
	for {
		s.mu.Lock()
		for len(p.queue) > 0 && p.queue[0].terminal() { // cancelled while queued
			p.queue = p.queue[1:]
		}
		if len(p.queue) == 0 || s.mu.closed {
			p.working = false
			s.notifyLocked()
			s.mu.Unlock()
			return
		}
		op := p.queue[0]
		now := s.nowLocked()
		op.Status = OpRunning
		op.UpdatedAt = sec(now)
		op.started = now
		s.notifyLocked()
		run, fail, hidden := op.run, op.fail, op.hidden
		s.mu.Unlock()

		var err error
		switch {
		case fail:
			err = errInjected
		case run != nil:
			err = run(s.ctx)
		}
		if !hidden {
			s.sleepUntil(now.Add(s.cfg.opDelay()))
		}
		if err != nil && !fail {
			s.log.Warn("neon fake: operation failed", "project", p.id, "action", op.Action, "err", err)
		}

		s.mu.Lock()
		p.queue = p.queue[1:] // op: only the worker removes running ops
		s.finishLocked(p, op, err)
		s.mu.Unlock()
	}
}

// sleepUntil sleeps until t or until the server closes.
func (s *Server) sleepUntil(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-s.ctx.Done():
	}
}

// finishLocked ends op (finished, or failed with err) and applies its
// state transition; a failure cancels the rest of its request's
// operations. Caller holds s.mu.
func (s *Server) finishLocked(p *project, op *operation, err error) {
	now := s.nowLocked()
	op.UpdatedAt = sec(now)
	op.TotalDurationMS = int32(now.Sub(op.started).Milliseconds())
	if err == nil {
		op.Status = OpFinished
	} else {
		op.Status = OpFailed
		op.FailuresCount = 1
		op.Error = err.Error()
	}
	if op.done != nil {
		op.done(err == nil)
	}
	if err != nil {
		for _, later := range p.queue {
			if later.batch == op.batch && !later.terminal() {
				s.cancelOpLocked(later, now)
			}
		}
	}
	s.notifyLocked()
}

// cancelOpLocked ends a queued operation as cancelled, without its work.
func (s *Server) cancelOpLocked(op *operation, now time.Time) {
	op.Status = OpCancelled
	op.UpdatedAt = sec(now)
	if op.done != nil {
		op.done(false)
	}
}

// recordLocal notes that a Backend object of p now exists (or no longer
// does), for cleanup. Called by operations, without s.mu.
func (s *Server) recordLocal(p *project, db bool, name string, exists bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := p.localRoles
	if db {
		m = p.localDBs
	}
	if exists {
		m[name] = true
	} else {
		delete(m, name)
	}
}
