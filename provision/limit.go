package provision

import (
	"fmt"
	"time"
)

// LimitError means a tenant was not created because a cluster-wide creation
// limit was reached (the catalog checks them; see catalog.CreateLimits).
// Its Error text names the limit and what to do, and carries no tenant data
// beyond the limit itself, so it may be shown to clients.
type LimitError struct {
	// Setting is the configuration key of the limit:
	// "tenant.max_tenants" or "tenant.creates_per_minute".
	Setting string
	// Max is the limit's value.
	Max int
	// RetryAfter is, for tenant.creates_per_minute, how long until the
	// oldest creation counted leaves the minute; zero for max_tenants.
	RetryAfter time.Duration
}

// Limit names of LimitError.Setting.
const (
	LimitMaxTenants       = "tenant.max_tenants"
	LimitCreatesPerMinute = "tenant.creates_per_minute"
)

func (e *LimitError) Error() string {
	if e.Setting == LimitCreatesPerMinute {
		return fmt.Sprintf("too many new tenants: %d were created in the last minute (%s); retry in %d s",
			e.Max, e.Setting, e.RetrySeconds())
	}
	return fmt.Sprintf("the tenant limit is reached: %d tenants exist (%s)", e.Max, e.Setting)
}

// RetrySeconds is RetryAfter rounded up to whole seconds, at least 1.
func (e *LimitError) RetrySeconds() int {
	s := int((e.RetryAfter + time.Second - 1) / time.Second)
	return max(s, 1)
}
