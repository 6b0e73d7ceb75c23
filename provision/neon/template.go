package neon

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/pgtenant/pgtenant/provision"
)

// TemplateBranches returns the template branches tenants are branched from
// (ModeBranch): one per Config.Projects entry, in order, with
// ParentBranchID "" for a project's default branch. In ModeProject it
// returns nil: a tenant project is created empty, from no template.
func (p *Provider) TemplateBranches() []BranchProject {
	if p.cfg.Mode == ModeProject {
		return nil
	}
	return append([]BranchProject(nil), p.cfg.Projects...)
}

// TemplateRoute returns the route to the template branch of project pid
// (one of TemplateBranches), for migrating it: the direct (non-pooler)
// host of its read_write endpoint, port 5432, and the database, role and
// password a tenant branched from it gets (Config.Database and Config.Role,
// or the first database and its owner). It costs up to four API calls
// (default branch, endpoint, databases, password), through the provider's
// rate limiter. If the project does not store passwords, the template
// role's password is reset (existing branches keep theirs). A template
// branch without a read_write endpoint cannot be migrated: the error says
// to add one.
func (p *Provider) TemplateRoute(ctx context.Context, pid string) (provision.Endpoint, error) {
	var bp BranchProject
	found := false
	for _, c := range p.TemplateBranches() {
		if c.ID == pid {
			bp, found = c, true
			break
		}
	}
	if !found {
		return provision.Endpoint{}, fmt.Errorf("neon: project %s holds no template branch of this provider", pid)
	}
	loc := location{projectID: pid, branchID: bp.ParentBranchID}
	if loc.branchID == "" {
		bid, err := p.defaultBranch(ctx, pid)
		if err != nil {
			return provision.Endpoint{}, fmt.Errorf("neon: project %s: default branch: %w", pid, err)
		}
		loc.branchID = bid
	}
	ep, err := p.endpointOf(ctx, loc)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("neon: template branch %s/%s: %w (give it a read_write endpoint to migrate it)", pid, loc.branchID, err)
	}
	db, role, err := p.dbAndRole(ctx, loc, nil)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("neon: template branch: %w", err)
	}
	password, err := p.password(ctx, loc, role, false)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("neon: template branch %s/%s: %w", pid, loc.branchID, err)
	}
	return provision.Endpoint{
		Host:       provision.DirectHost(ep.Host),
		Port:       Port,
		Database:   db,
		User:       role,
		Password:   password,
		ProviderID: pid + "/" + loc.branchID,
	}, nil
}

// defaultBranch returns the id of project pid's default branch.
func (p *Provider) defaultBranch(ctx context.Context, pid string) (string, error) {
	q := url.Values{}
	for range 100 {
		var resp branchListResp
		_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/branches", args: []string{pid},
			query: q, repeatable: true}, &resp)
		if err != nil {
			return "", err
		}
		for _, b := range resp.Branches {
			if b.Default {
				return b.ID, nil
			}
		}
		if resp.Pagination == nil || resp.Pagination.Next == "" || len(resp.Branches) == 0 {
			break
		}
		q.Set("cursor", resp.Pagination.Next)
	}
	return "", fmt.Errorf("project %s has no default branch", pid)
}
