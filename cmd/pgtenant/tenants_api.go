package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/router"
)

// apiClient talks to a router's admin API (package admin).
type apiClient struct {
	base  string // e.g. http://127.0.0.1:9090
	token string
}

// do sends method path and decodes a 2xx JSON answer into out. Other
// answers become errors carrying the API's {"error": ...}.
func (c apiClient) do(ctx context.Context, method, path string, out any) error {
	return c.send(ctx, method, path, nil, out)
}

// send is do with in, when not nil, sent as the JSON body.
func (c apiClient) send(ctx context.Context, method, path string, in, out any) error {
	u, err := url.Parse(strings.TrimRight(c.base, "/") + path)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: --admin %q: want a URL like http://127.0.0.1:9090", errUsage, c.base)
	}
	if c.token == "" {
		return fmt.Errorf("%w: no admin API token: set %s (or --token)", errUsage, router.EnvAdminToken)
	}
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), reqBody)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	// Warming may create a tenant: that takes as long as the provider needs.
	hc := &http.Client{Timeout: 10 * time.Minute}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("admin API: %s %s: %w", method, u.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		return &apiError{status: resp.StatusCode, msg: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: %s %s: bad answer: %w", method, u.Path, err)
	}
	return nil
}

// apiError is a non-2xx answer of the admin API.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("admin API: %s (HTTP %d)", e.msg, e.status)
}

// runTenantsAPI runs a tenants command through a router's admin API. mode
// is pool-mode's: session, transaction, off or default (clear).
func runTenantsAPI(ctx context.Context, w io.Writer, c apiClient, verb, tenant, mode, after string, limit int) error {
	t := "/v1/tenants/" + url.PathEscape(tenant)
	switch verb {
	case "list":
		q := url.Values{"limit": {strconv.Itoa(limit)}}
		if after != "" {
			q.Set("after", after)
		}
		var l adminapi.TenantList
		if err := c.do(ctx, http.MethodGet, "/v1/tenants?"+q.Encode(), &l); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tPROVIDER\tPROVIDER ID\tUPSTREAM\tDATABASE\tUSER\tSTATE\tBLOCKED\tCREATED")
		for _, e := range l.Tenants {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\n", e.Tenant, e.Provider, e.ProviderID, e.Host, e.Port,
				e.Database, e.User, e.State, yesNo(e.Blocked), e.CreatedAt.UTC().Format("2006-01-02 15:04:05"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if l.Next != "" {
			fmt.Fprintf(w, "(more: --after %s)\n", l.Next)
		}
		return nil

	case "show":
		var st adminapi.TenantStatus
		if err := c.do(ctx, http.MethodGet, t, &st); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant       %s\n", st.Tenant)
		if st.Route != nil {
			r := st.Route
			fmt.Fprintf(w, "upstream     postgres://%s:xxxxx@%s:%d/%s\nprovider id  %s\n", r.User, r.Host, r.Port, r.Database, r.ProviderID)
		} else {
			fmt.Fprintln(w, "upstream     not in the catalog")
		}
		fmt.Fprintf(w, "blocked      %s\npool mode    %s\ncached       %s (on this router)\nsessions     %d (on this router)\n",
			yesNo(st.Blocked), cmp.Or(st.PoolMode, "the router's default"), yesNo(st.Cached), len(st.Sessions))
		for _, s := range st.Sessions {
			fmt.Fprintf(w, "  %s  since %s  via %s  upstream pid %d  in %d B  out %d B\n",
				s.Remote, s.Start.UTC().Format(time.RFC3339), s.Via, s.UpstreamPID, s.BytesIn, s.BytesOut)
		}
		if cr := st.Creation; cr != nil { // a slow provider's background creation
			if cr.State == "failed" {
				fmt.Fprintf(w, "creation     failed at %s: %s\n", cr.Failed.UTC().Format(time.RFC3339), cr.Error)
			} else {
				fmt.Fprintf(w, "creation     running since %s (%s)\n", cr.Started.UTC().Format(time.RFC3339), about(cr.RemainingSeconds))
			}
		}
		return nil

	case "evict":
		var res adminapi.ActionResult
		if err := c.do(ctx, http.MethodPost, t+"/evict", &res); err != nil {
			return err
		}
		was := res.Evicted != nil && *res.Evicted
		fmt.Fprintf(w, "tenant %s: cached route dropped on this router (was cached: %s)\n", res.Tenant, yesNo(was))
		return nil

	case "block", "unblock":
		var res adminapi.ActionResult
		if err := c.do(ctx, http.MethodPost, t+"/"+verb, &res); err != nil {
			return err
		}
		if verb == "block" {
			n := 0
			if res.SessionsClosed != nil {
				n = *res.SessionsClosed
			}
			fmt.Fprintf(w, "tenant %s blocked (%d live sessions ended on this router; other routers follow within admin.blocked_refresh)\n", res.Tenant, n)
		} else {
			fmt.Fprintf(w, "tenant %s unblocked (other routers follow within admin.blocked_refresh)\n", res.Tenant)
		}
		return nil

	case "pool-mode":
		var res adminapi.ActionResult
		var err error
		if mode == "default" {
			err = c.do(ctx, http.MethodDelete, t+"/pool-mode", &res)
		} else {
			err = c.send(ctx, http.MethodPut, t+"/pool-mode", map[string]string{"mode": mode}, &res)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s: pool mode %s for new connections (sessions running keep theirs; other routers follow within admin.blocked_refresh)\n",
			res.Tenant, cmp.Or(mode, "default"))
		return nil

	case "delete":
		var res adminapi.ActionResult
		if err := c.do(ctx, http.MethodDelete, t+"?confirm="+url.QueryEscape(tenant), &res); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s deleted (provider: %s; catalog: %s)\n", res.Tenant, res.Provider, res.Catalog)
		return nil
	}
	return fmt.Errorf("%w: unknown tenants command %q", errUsage, verb)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
