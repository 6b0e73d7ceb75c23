package provision

import "time"

// The states of a Creation.
const (
	// CreationReady: the tenant is in the catalog (the creation finished).
	CreationReady = "ready"
	// CreationRunning: a router instance is creating the tenant.
	CreationRunning = "running"
	// CreationFailed: the last creation failed (Creation.Error says why).
	CreationFailed = "failed"
)

// Creation is a tenant creation that runs in the background (the provider
// implements Estimator), as the catalog records it so that every router
// instance sharing the catalog sees it: one instance creates, the others
// answer "being created" meanwhile, and one of them takes over when the
// creator stops heartbeating. It holds no secret.
type Creation struct {
	Tenant   string
	Provider string
	// State is CreationReady, CreationRunning or CreationFailed.
	State string
	// Owner is the token of the claim that runs (or ran) the creation.
	Owner string
	// Started is when the creation began (kept when a creation whose
	// creator went silent is taken over: the provider adopts what the first
	// creator started).
	Started time.Time
	// Heartbeat is when the creator last said it was still at it.
	Heartbeat time.Time
	// Finished is when a failed creation failed.
	Finished time.Time
	// Error is why it failed (from the provider's error; no secrets).
	Error string
}
