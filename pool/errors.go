package pool

import (
	"errors"
	"fmt"
	"time"
)

// ErrClosed is returned by Acquire once the Manager is closed.
var ErrClosed = errors.New("pool: closed")

// WaitError is returned by Acquire when its ctx ended while it queued for
// capacity (not while it dialled: a dial's errors come back as they are).
// It wraps ctx's error, so errors.Is(err, context.DeadlineExceeded) holds
// for it.
type WaitError struct {
	// Server is the upstream's host:port.
	Server string
	// Waited is how long the caller queued.
	Waited time.Duration
	// Err is ctx's error.
	Err error
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("pool: waited %s for a server connection to %s: %v", e.Waited.Round(time.Millisecond), e.Server, e.Err)
}

// Unwrap returns ctx's error.
func (e *WaitError) Unwrap() error { return e.Err }

// BudgetError is returned by Acquire when no server connection became
// available within Config.QueueTimeout. Its message names the budget that
// was full, meant for the client (SQLSTATE 53300, too_many_connections);
// it holds no secret.
type BudgetError struct {
	// Server is the upstream's host:port.
	Server string
	// Limit is the limit that held the caller back: the server's budget,
	// or the tenant's ceiling when Tenant is set.
	Limit int
	// Tenant is set when the tenant's own ceiling (MaxPerTenant) was
	// reached rather than the server's budget.
	Tenant string
	// Waited is how long the caller queued.
	Waited time.Duration
}

func (e *BudgetError) Error() string {
	if e.Tenant != "" {
		return fmt.Sprintf("pool: tenant %q has all %d server connections it may hold on %s in use (waited %s)",
			e.Tenant, e.Limit, e.Server, e.Waited.Round(time.Millisecond))
	}
	return fmt.Sprintf("pool: all %d server connections of the budget of %s are in use (waited %s)",
		e.Limit, e.Server, e.Waited.Round(time.Millisecond))
}
