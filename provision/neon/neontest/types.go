package neontest

import "time"

// The exported types below are the fake's wire shapes: they marshal to the
// JSON keys of docs/neon-api.md §3 (snake_case). The HTTP API answers with
// them and the Go helpers (CreateProject, Branches, ...) return them. Times
// are UTC with second precision, so they marshal as "2025-09-10T07:58:16Z"
// (§1).

// EndpointSettings are a project's default endpoint settings
// (default_endpoint_settings).
type EndpointSettings struct {
	AutoscalingLimitMinCU float64           `json:"autoscaling_limit_min_cu"`
	AutoscalingLimitMaxCU float64           `json:"autoscaling_limit_max_cu"`
	SuspendTimeoutSeconds int64             `json:"suspend_timeout_seconds"`
	PGSettings            map[string]string `json:"pg_settings,omitempty"`
}

// ProjectOwner is the "owner" object GET /projects/{id} includes.
type ProjectOwner struct {
	Email            string `json:"email"`
	Name             string `json:"name"`
	BranchesLimit    int    `json:"branches_limit"`
	SubscriptionType string `json:"subscription_type"`
}

// Project is a Neon project.
type Project struct {
	ID                          string           `json:"id"`
	PlatformID                  string           `json:"platform_id"`
	RegionID                    string           `json:"region_id"`
	Name                        string           `json:"name"`
	Provisioner                 string           `json:"provisioner"`
	DefaultEndpointSettings     EndpointSettings `json:"default_endpoint_settings"`
	Settings                    map[string]any   `json:"settings"`
	PGVersion                   int              `json:"pg_version"`
	ProxyHost                   string           `json:"proxy_host"`
	BranchLogicalSizeLimit      int64            `json:"branch_logical_size_limit"`
	BranchLogicalSizeLimitBytes int64            `json:"branch_logical_size_limit_bytes"`
	StorePasswords              bool             `json:"store_passwords"`
	ActiveTimeSeconds           int64            `json:"active_time_seconds"`
	ComputeTimeSeconds          int64            `json:"compute_time_seconds"`
	CPUUsedSec                  int64            `json:"cpu_used_sec"`
	WrittenDataBytes            int64            `json:"written_data_bytes"`
	DataTransferBytes           int64            `json:"data_transfer_bytes"`
	DataStorageBytesHour        int64            `json:"data_storage_bytes_hour"`
	CreationSource              string           `json:"creation_source"`
	HistoryRetentionSeconds     int64            `json:"history_retention_seconds"`
	CreatedAt                   time.Time        `json:"created_at"`
	UpdatedAt                   time.Time        `json:"updated_at"`
	ConsumptionPeriodStart      time.Time        `json:"consumption_period_start"`
	ConsumptionPeriodEnd        time.Time        `json:"consumption_period_end"`
	OwnerID                     string           `json:"owner_id"`
	OrgID                       string           `json:"org_id,omitempty"`
	// Owner is only filled by GET /projects/{id}.
	Owner *ProjectOwner `json:"owner,omitempty"`
}

// Branch is a Neon branch.
type Branch struct {
	ID                 string     `json:"id"`
	ProjectID          string     `json:"project_id"`
	ParentID           string     `json:"parent_id,omitempty"`
	ParentLSN          string     `json:"parent_lsn,omitempty"`
	ParentTimestamp    *time.Time `json:"parent_timestamp,omitempty"`
	Name               string     `json:"name"`
	CurrentState       string     `json:"current_state"`
	PendingState       string     `json:"pending_state,omitempty"`
	StateChangedAt     time.Time  `json:"state_changed_at"`
	LogicalSize        int64      `json:"logical_size"`
	CreationSource     string     `json:"creation_source"`
	Primary            bool       `json:"primary"`
	Default            bool       `json:"default"`
	Protected          bool       `json:"protected"`
	InitSource         string     `json:"init_source"`
	CPUUsedSec         int64      `json:"cpu_used_sec"`
	ComputeTimeSeconds int64      `json:"compute_time_seconds"`
	ActiveTimeSeconds  int64      `json:"active_time_seconds"`
	WrittenDataBytes   int64      `json:"written_data_bytes"`
	DataTransferBytes  int64      `json:"data_transfer_bytes"`
	ExpiresAt          *time.Time `json:"expires_at,omitempty"`
	CreatedAt          time.Time  `json:"created_at"`
	UpdatedAt          time.Time  `json:"updated_at"`
}

// Endpoint is a Neon endpoint (a compute attached to a branch).
type Endpoint struct {
	Host                  string         `json:"host"`
	ID                    string         `json:"id"`
	ProjectID             string         `json:"project_id"`
	BranchID              string         `json:"branch_id"`
	AutoscalingLimitMinCU float64        `json:"autoscaling_limit_min_cu"`
	AutoscalingLimitMaxCU float64        `json:"autoscaling_limit_max_cu"`
	RegionID              string         `json:"region_id"`
	Type                  string         `json:"type"`
	CurrentState          string         `json:"current_state"`
	PendingState          string         `json:"pending_state,omitempty"`
	Settings              map[string]any `json:"settings"`
	PoolerEnabled         bool           `json:"pooler_enabled"`
	PoolerMode            string         `json:"pooler_mode"`
	Disabled              bool           `json:"disabled"`
	PasswordlessAccess    bool           `json:"passwordless_access"`
	LastActive            *time.Time     `json:"last_active,omitempty"`
	StartedAt             *time.Time     `json:"started_at,omitempty"`
	SuspendedAt           *time.Time     `json:"suspended_at,omitempty"`
	CreationSource        string         `json:"creation_source"`
	CreatedAt             time.Time      `json:"created_at"`
	UpdatedAt             time.Time      `json:"updated_at"`
	ProxyHost             string         `json:"proxy_host"`
	SuspendTimeoutSeconds int64          `json:"suspend_timeout_seconds"`
	Provisioner           string         `json:"provisioner"`
}

// Role is a Postgres role of a branch. Password is only set where Neon
// returns it: the create-project and reset-password answers.
type Role struct {
	BranchID  string    `json:"branch_id"`
	Name      string    `json:"name"`
	Password  string    `json:"password,omitempty"`
	Protected bool      `json:"protected"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Database is a Postgres database of a branch.
type Database struct {
	ID        int64     `json:"id"`
	BranchID  string    `json:"branch_id"`
	Name      string    `json:"name"`
	OwnerName string    `json:"owner_name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Operation is one asynchronous control-plane operation. Status moves from
// "scheduling" to "running" to "finished" (or "failed", or "cancelled" when
// an earlier operation of the same request failed).
type Operation struct {
	ID              string    `json:"id"`
	ProjectID       string    `json:"project_id"`
	BranchID        string    `json:"branch_id,omitempty"`
	EndpointID      string    `json:"endpoint_id,omitempty"`
	Action          string    `json:"action"`
	Status          string    `json:"status"`
	Error           string    `json:"error,omitempty"`
	FailuresCount   int32     `json:"failures_count"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
	TotalDurationMS int32     `json:"total_duration_ms"`
}

// ConnectionParameters are the parts of a ConnectionURI.
type ConnectionParameters struct {
	Database   string `json:"database"`
	Password   string `json:"password"`
	Role       string `json:"role"`
	Host       string `json:"host"`
	PoolerHost string `json:"pooler_host"`
}

// ConnectionURI is one entry of a create answer's connection_uris: a
// postgresql:// URI for the direct host plus its parts.
type ConnectionURI struct {
	ConnectionURI        string               `json:"connection_uri"`
	ConnectionParameters ConnectionParameters `json:"connection_parameters"`
}

// CreatedProject is the 201 answer of POST /projects (and what
// Server.CreateProject returns).
type CreatedProject struct {
	Project        Project         `json:"project"`
	ConnectionURIs []ConnectionURI `json:"connection_uris"`
	Roles          []Role          `json:"roles"`
	Databases      []Database      `json:"databases"`
	Operations     []Operation     `json:"operations"`
	Branch         Branch          `json:"branch"`
	Endpoints      []Endpoint      `json:"endpoints"`
}

// CreatedBranch is the 201 answer of POST /projects/{id}/branches (and what
// Server.CreateBranch returns). ConnectionURIs is present only when an
// endpoint was created and the branch has exactly one role and one database.
type CreatedBranch struct {
	Branch         Branch          `json:"branch"`
	Endpoints      []Endpoint      `json:"endpoints"`
	Operations     []Operation     `json:"operations"`
	Roles          []Role          `json:"roles"`
	Databases      []Database      `json:"databases"`
	ConnectionURIs []ConnectionURI `json:"connection_uris,omitempty"`
}

// Operation statuses and the states of branches and endpoints.
const (
	OpScheduling = "scheduling"
	OpRunning    = "running"
	OpFinished   = "finished"
	OpFailed     = "failed"
	OpCancelled  = "cancelled"

	BranchInit  = "init"
	BranchReady = "ready"

	EndpointInit   = "init"
	EndpointActive = "active"
	EndpointIdle   = "idle"
)
