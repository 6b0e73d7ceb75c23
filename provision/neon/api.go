package neon

// Wire shapes of the Neon API v2, reduced to the fields this package reads
// (docs/neon-api.md §3.2-§3.4). Unknown fields are ignored when decoding.

type apiProject struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	RegionID  string `json:"region_id"`
	ProxyHost string `json:"proxy_host"`
	CreatedAt string `json:"created_at"`
}

type apiBranch struct {
	ID           string `json:"id"`
	ProjectID    string `json:"project_id"`
	ParentID     string `json:"parent_id"`
	Name         string `json:"name"`
	CurrentState string `json:"current_state"`
	PendingState string `json:"pending_state"`
	Default      bool   `json:"default"`
	CreatedAt    string `json:"created_at"`
}

type apiEndpoint struct {
	ID           string `json:"id"`
	Host         string `json:"host"`
	ProjectID    string `json:"project_id"`
	BranchID     string `json:"branch_id"`
	Type         string `json:"type"`
	CurrentState string `json:"current_state"`
	Disabled     bool   `json:"disabled"`
}

type apiOperation struct {
	ID         string `json:"id"`
	ProjectID  string `json:"project_id"`
	BranchID   string `json:"branch_id"`
	EndpointID string `json:"endpoint_id"`
	Action     string `json:"action"`
	Status     string `json:"status"`
	Error      string `json:"error"`
}

type apiRole struct {
	BranchID string `json:"branch_id"`
	Name     string `json:"name"`
	Password string `json:"password"` // only in create-project and reset-password answers
}

type apiDatabase struct {
	BranchID  string `json:"branch_id"`
	Name      string `json:"name"`
	OwnerName string `json:"owner_name"`
}

type apiConnURI struct {
	// ConnectionURI holds the password too; it is never read or logged.
	Params struct {
		Database   string `json:"database"`
		Password   string `json:"password"`
		Role       string `json:"role"`
		Host       string `json:"host"`
		PoolerHost string `json:"pooler_host"`
	} `json:"connection_parameters"`
}

// createdResp is the answer to POST /projects and POST .../branches
// (docs/neon-api.md §3.2 and §4.2); Project is empty for a branch.
type createdResp struct {
	Project        apiProject     `json:"project"`
	Branch         apiBranch      `json:"branch"`
	Endpoints      []apiEndpoint  `json:"endpoints"`
	Operations     []apiOperation `json:"operations"`
	Roles          []apiRole      `json:"roles"`
	Databases      []apiDatabase  `json:"databases"`
	ConnectionURIs []apiConnURI   `json:"connection_uris"`
}

type branchListResp struct {
	Branches   []apiBranch `json:"branches"`
	Pagination *struct {
		Next string `json:"next"`
	} `json:"pagination"`
}

type branchResp struct {
	Branch apiBranch `json:"branch"`
}

type projectListResp struct {
	Projects   []apiProject `json:"projects"`
	Pagination *struct {
		Cursor string `json:"cursor"`
	} `json:"pagination"`
}

type countResp struct {
	Count int `json:"count"`
}

type endpointsResp struct {
	Endpoints []apiEndpoint `json:"endpoints"`
}

type databasesResp struct {
	Databases []apiDatabase `json:"databases"`
}

type operationResp struct {
	Operation apiOperation `json:"operation"`
}

type operationsResp struct {
	Operations []apiOperation `json:"operations"`
}

type passwordResp struct {
	Password string `json:"password"`
}

type resetPasswordResp struct {
	Role       apiRole        `json:"role"`
	Operations []apiOperation `json:"operations"`
}

// Request bodies.

type endpointOptions struct {
	Type                  string  `json:"type"`
	AutoscalingLimitMinCU float64 `json:"autoscaling_limit_min_cu,omitempty"`
	AutoscalingLimitMaxCU float64 `json:"autoscaling_limit_max_cu,omitempty"`
	SuspendTimeoutSeconds int64   `json:"suspend_timeout_seconds,omitempty"`
}

type createBranchReq struct {
	Branch struct {
		Name     string `json:"name"`
		ParentID string `json:"parent_id,omitempty"`
	} `json:"branch"`
	Endpoints []endpointOptions `json:"endpoints"`
}

type defaultEndpointSettings struct {
	AutoscalingLimitMinCU float64 `json:"autoscaling_limit_min_cu,omitempty"`
	AutoscalingLimitMaxCU float64 `json:"autoscaling_limit_max_cu,omitempty"`
	SuspendTimeoutSeconds int64   `json:"suspend_timeout_seconds,omitempty"`
}

type createProjectReq struct {
	Project struct {
		Name                    string                   `json:"name"`
		RegionID                string                   `json:"region_id,omitempty"`
		PGVersion               int                      `json:"pg_version,omitempty"`
		OrgID                   string                   `json:"org_id,omitempty"`
		DefaultEndpointSettings *defaultEndpointSettings `json:"default_endpoint_settings,omitempty"`
		Branch                  struct{}                 `json:"branch"` // neonctl always sends it (docs/neon-api.md §3.1)
	} `json:"project"`
}

// Operation statuses (docs/neon-api.md §7.1).
// An unknown status counts as in flight: the wait then ends at OpTimeout
// with an error that names it.
func opDone(status string) bool {
	switch status {
	case "finished", "skipped", "failed", "error", "cancelled":
		return true
	}
	return false
}

func opFailed(status string) bool {
	switch status {
	case "failed", "error", "cancelled":
		return true
	}
	return false
}
