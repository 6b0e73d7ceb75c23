package supabase

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/internal/backoff"
)

// Provider creates a Supabase project per tenant. Safe for concurrent use;
// calls for one tenant are serialised in the process.
type Provider struct {
	cfg Config
	c   *client
	log *slog.Logger

	mu struct {
		sync.Mutex
		locks map[string]*tenantLock // guarded by mu
	}
}

type tenantLock struct {
	mu   sync.Mutex
	refs int // guarded by Provider.mu
}

var (
	_ provision.Provider  = (*Provider)(nil)
	_ provision.Estimator = (*Provider)(nil)
)

// New checks cfg and returns a Provider. It does no I/O.
func New(cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: DefaultHTTPTimeout}
	}
	p := &Provider{cfg: cfg, log: log, c: &client{
		base:   cfg.apiURL(),
		token:  cfg.AccessToken,
		http:   hc,
		lim:    newLimiter(cfg.rpm()),
		budget: orDefault(cfg.RetryBudget, DefaultRetryBudget),
		delay:  orDefault(cfg.RetryDelay, DefaultRetryDelay),
		log:    log,
	}}
	p.mu.locks = make(map[string]*tenantLock)
	return p, nil
}

// Name is "supabase".
func (p *Provider) Name() string { return "supabase" }

// CreateEstimate is Config.CreateEstimate (default 2 minutes): how long a
// new project takes to become healthy (docs/supabase-api.md §4).
func (p *Provider) CreateEstimate() time.Duration {
	return orDefault(p.cfg.CreateEstimate, DefaultCreateEstimate)
}

// CloseIdleConnections closes the HTTP client's idle connections.
func (p *Provider) CloseIdleConnections() { p.c.http.CloseIdleConnections() }

// ProjectName is the name of tenant's project: NamePrefix + tenant.
func (p *Provider) ProjectName(tenant string) string { return p.cfg.prefix() + tenant }

// project is the API's project object (§3).
type project struct {
	ID             string `json:"id"`
	Ref            string `json:"ref"`
	OrganizationID string `json:"organization_id"`
	Name           string `json:"name"`
	Region         string `json:"region"`
	CreatedAt      string `json:"created_at"`
	Status         string `json:"status"`
	Database       struct {
		Host string `json:"host"`
	} `json:"database"`
}

func (pr *project) ref() string { return cmp.Or(pr.Ref, pr.ID) }

// poolerEntry is one element of the pooler configuration (§5).
type poolerEntry struct {
	DatabaseType string `json:"database_type"`
	DBHost       string `json:"db_host"`
	DBPort       int    `json:"db_port"`
	DBUser       string `json:"db_user"`
	DBName       string `json:"db_name"`
	PoolMode     string `json:"pool_mode"`
}

// lock serialises calls for tenant within this process (a second Create
// waits and then adopts what the first made).
func (p *Provider) lock(tenant string) (unlock func()) {
	p.mu.Lock()
	l := p.mu.locks[tenant]
	if l == nil {
		l = &tenantLock{}
		p.mu.locks[tenant] = l
	}
	l.refs++
	p.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		p.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(p.mu.locks, tenant)
		}
		p.mu.Unlock()
	}
}

// find lists the projects named name in the organization, oldest first
// (names need not be unique: §9).
func (p *Provider) find(ctx context.Context, name string) ([]project, error) {
	var all []project
	if err := p.c.do(ctx, call{method: http.MethodGet, path: "/projects", scope: scopeAccount, repeatable: true}, &all); err != nil {
		return nil, err
	}
	var out []project
	for _, pr := range all {
		if pr.Name == name && pr.OrganizationID == p.cfg.OrganizationID && pr.Status != "REMOVED" && pr.Status != "GOING_DOWN" {
			out = append(out, pr)
		}
	}
	slices.SortStableFunc(out, func(a, b project) int {
		return cmp.Or(cmp.Compare(a.CreatedAt, b.CreatedAt), cmp.Compare(a.ref(), b.ref()))
	})
	return out, nil
}

// Create finds tenant's project by name or creates it, waits until it is
// healthy and returns its route. A project it adopts without knowing its
// password gets a new password (§9).
func (p *Provider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	unlock := p.lock(tenant)
	defer unlock()
	name := p.ProjectName(tenant)
	found, err := p.find(ctx, name)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("supabase: find project %q: %w", name, err)
	}
	var (
		pr       project
		password string
		adopted  = len(found) > 0
	)
	if adopted {
		pr = found[0]
	} else {
		password = rand.Text()
		pr, err = p.createProject(ctx, name, password)
		if err != nil {
			return provision.Endpoint{}, err
		}
	}
	if pr, err = p.waitHealthy(ctx, pr.ref()); err != nil {
		return provision.Endpoint{}, fmt.Errorf("supabase: project %s (%s): %w", pr.ref(), name, err)
	}
	if adopted {
		password = rand.Text()
		body := map[string]string{"password": password}
		c := call{method: http.MethodPatch, path: projectPath(pr.ref(), "/database/password"), scope: projectScope(pr.ref()), body: body, repeatable: true}
		if err := p.c.do(ctx, c, nil); err != nil {
			return provision.Endpoint{}, fmt.Errorf("supabase: adopt project %s (%s): set a new database password: %w", pr.ref(), name, err)
		}
	}
	ep, err := p.route(ctx, pr, password)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("supabase: project %s (%s): %w", pr.ref(), name, err)
	}
	p.log.Info("supabase: tenant ready", "tenant", tenant, "project", pr.ref(), "adopted", adopted)
	return ep, nil
}

// createProject POSTs the project. If the answer is lost it looks for the
// project by name for up to LostWait, since the create may have happened
// (§9); password is then still the one sent.
func (p *Provider) createProject(ctx context.Context, name, password string) (project, error) {
	body := map[string]string{
		"name":            name,
		"organization_id": p.cfg.OrganizationID,
		"region":          p.cfg.Region,
		"db_pass":         password,
	}
	if p.cfg.Plan != "" {
		body["plan"] = p.cfg.Plan
	}
	if p.cfg.InstanceSize != "" {
		body["desired_instance_size"] = p.cfg.InstanceSize
	}
	var pr project
	err := p.c.do(ctx, call{method: http.MethodPost, path: "/projects", scope: scopeAccount, body: body}, &pr)
	if err == nil {
		if pr.ref() == "" {
			return pr, fmt.Errorf("supabase: create project %q: the answer holds no project ref", name)
		}
		return pr, nil
	}
	var lost *LostError
	if !errors.As(err, &lost) {
		return pr, fmt.Errorf("supabase: create project %q: %w", name, err)
	}
	deadline := time.Now().Add(orDefault(p.cfg.LostWait, DefaultLostWait))
	for {
		found, ferr := p.find(ctx, name)
		if ferr == nil && len(found) > 0 {
			p.log.Info("supabase: found the project of a create whose answer was lost", "project", found[0].ref(), "name", name)
			return found[0], nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return pr, fmt.Errorf("supabase: create project %q: no project appeared after the answer was lost: %w", name, err)
		}
		if serr := backoff.Sleep(ctx, orDefault(p.cfg.PollInterval, DefaultPollInterval)); serr != nil {
			return pr, fmt.Errorf("supabase: create project %q: %w (after: %w)", name, serr, err)
		}
	}
}

// Statuses a new project passes through on its way to ACTIVE_HEALTHY (§4).
var pendingStatus = map[string]bool{
	"COMING_UP": true, "UNKNOWN": true, "RESTARTING": true, "RESTORING": true,
	"UPGRADING": true, "RESIZING": true, "ACTIVE_UNHEALTHY": true, "": true,
}

// waitHealthy polls the project until it is ACTIVE_HEALTHY, fails, or
// CreateTimeout passes.
func (p *Provider) waitHealthy(ctx context.Context, ref string) (project, error) {
	ctx, cancel := context.WithTimeout(ctx, orDefault(p.cfg.CreateTimeout, DefaultCreateTimeout))
	defer cancel()
	interval := orDefault(p.cfg.PollInterval, DefaultPollInterval)
	for {
		var pr project
		c := call{method: http.MethodGet, path: projectPath(ref, ""), scope: projectScope(ref), repeatable: true}
		if err := p.c.do(ctx, c, &pr); err != nil {
			return pr, fmt.Errorf("wait until healthy: %w", err)
		}
		if pr.ref() == "" {
			pr.ID = ref
		}
		switch {
		case pr.Status == "ACTIVE_HEALTHY":
			return pr, nil
		case !pendingStatus[pr.Status]:
			return pr, fmt.Errorf("project status is %s, not ACTIVE_HEALTHY: see the Supabase dashboard", pr.Status)
		}
		if err := backoff.Sleep(ctx, interval); err != nil {
			return pr, fmt.Errorf("wait until healthy (status %s): %w", pr.Status, err)
		}
	}
}

// route builds the tenant's endpoint (§5, §6).
func (p *Provider) route(ctx context.Context, pr project, password string) (provision.Endpoint, error) {
	ref := pr.ref()
	ep := provision.Endpoint{Database: "postgres", Password: password, ProviderID: ref}
	if p.cfg.endpoint() == EndpointDirect {
		ep.Host = cmp.Or(pr.Database.Host, "db."+ref+".supabase.co")
		ep.Port = portOr(p.cfg.DirectPort, DefaultDirectPort)
		ep.User = "postgres"
		return ep, nil
	}
	var entries []poolerEntry
	c := call{method: http.MethodGet, path: projectPath(ref, "/config/database/pooler"), scope: projectScope(ref), repeatable: true}
	if err := p.c.do(ctx, c, &entries); err != nil {
		return ep, fmt.Errorf("pooler config: %w", err)
	}
	i := slices.IndexFunc(entries, func(e poolerEntry) bool { return e.DatabaseType == "PRIMARY" || e.DatabaseType == "" })
	if i < 0 || entries[i].DBHost == "" {
		return ep, errors.New("pooler config: no PRIMARY pooler with a host")
	}
	e := entries[i]
	ep.Host = e.DBHost
	ep.User = cmp.Or(e.DBUser, "postgres."+ref)
	ep.Database = cmp.Or(e.DBName, "postgres")
	if p.cfg.poolerMode() == PoolerSession {
		ep.Port = portOr(p.cfg.SessionPort, DefaultSessionPort)
	} else {
		ep.Port = portOr(p.cfg.TransactionPort, DefaultTransactionPort)
	}
	return ep, nil
}

// Delete deletes every project named for tenant (§9). It returns
// provision.ErrTenantNotFound when there is none.
func (p *Provider) Delete(ctx context.Context, tenant string) error {
	unlock := p.lock(tenant)
	defer unlock()
	name := p.ProjectName(tenant)
	found, err := p.find(ctx, name)
	if err != nil {
		return fmt.Errorf("supabase: find project %q: %w", name, err)
	}
	if len(found) == 0 {
		return provision.ErrTenantNotFound
	}
	for _, pr := range found {
		c := call{method: http.MethodDelete, path: projectPath(pr.ref(), ""), scope: projectScope(pr.ref()), repeatable: true}
		if err := p.c.do(ctx, c, nil); err != nil && apiStatus(err) != http.StatusNotFound {
			return fmt.Errorf("supabase: delete project %s (%s): %w", pr.ref(), name, err)
		}
		p.log.Info("supabase: project deleted", "tenant", tenant, "project", pr.ref())
	}
	return nil
}

// CountProjects is how many live projects in the organization are named
// for tenant (0 or 1 unless something else made one with that name).
func (p *Provider) CountProjects(ctx context.Context, tenant string) (int, error) {
	found, err := p.find(ctx, p.ProjectName(tenant))
	return len(found), err
}

// SessionEndpoint implements provision.SessionRouter: a route through
// the pooler's transaction port goes to its session port instead (same
// host and user, docs/supabase-api.md); session-mode and direct routes
// keep a session already.
func (p *Provider) SessionEndpoint(ep provision.Endpoint) provision.Endpoint {
	if p.cfg.endpoint() == EndpointPooler && ep.Port == portOr(p.cfg.TransactionPort, DefaultTransactionPort) {
		ep.Port = portOr(p.cfg.SessionPort, DefaultSessionPort)
	}
	return ep
}
