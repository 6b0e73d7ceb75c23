package supabase_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/provision/supabase/supabasetest"
)

func poolFromPEM(t *testing.T, pem []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no PEM certificates")
	}
	return pool
}

// TestCreateRoutes checks the endpoint of each route kind and that the
// generated password logs in through the pooler (or direct host).
func TestCreateRoutes(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, supabasetest.Config{})
	for _, tc := range []struct {
		name string
		cfg  supabase.Config
		host func(ref string) string
		port uint16
		user func(ref string) string
	}{
		{"transaction", supabase.Config{}, func(string) string { return supabasetest.PoolerHost(testRegion) }, 6543,
			func(ref string) string { return "postgres." + ref }},
		{"session", supabase.Config{PoolerMode: supabase.PoolerSession}, func(string) string { return supabasetest.PoolerHost(testRegion) }, 5432,
			func(ref string) string { return "postgres." + ref }},
		{"direct", supabase.Config{Endpoint: supabase.EndpointDirect}, func(ref string) string { return "db." + ref + ".supabase.co" }, 5432,
			func(string) string { return "postgres" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProvider(t, s, tc.cfg)
			ep, err := p.Create(t.Context(), "acme"+tc.name)
			if err != nil {
				t.Fatal(err)
			}
			ref := ep.ProviderID
			if len(ref) != 20 || ep.Host != tc.host(ref) || ep.Port != tc.port || ep.User != tc.user(ref) || ep.Database != "postgres" {
				t.Errorf("endpoint %v (ref %q)", ep, ref)
			}
			if err := login(t.Context(), s, ep); err != nil {
				t.Errorf("login with the generated password: %v", err)
			}
			wrong := ep
			wrong.Password = "wrong"
			if err := login(t.Context(), s, wrong); err == nil {
				t.Error("login with a wrong password succeeded")
			}
		})
	}
}

// TestCreatePollsUntilHealthy: a project that stays COMING_UP a while is
// polled, and only a healthy project is returned.
func TestCreatePollsUntilHealthy(t *testing.T) {
	s := newFake(t, supabasetest.Config{CreateDelay: 300 * time.Millisecond})
	p := newProvider(t, s, supabase.Config{})
	ep, err := p.Create(t.Context(), "slow")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Calls("GET /v1/projects/{ref}"); n < 2 {
		t.Errorf("%d status polls, want at least 2 (the project was COMING_UP first)", n)
	}
	if err := login(t.Context(), s, ep); err != nil {
		t.Error(err)
	}
	if got := p.CreateEstimate(); got != supabase.DefaultCreateEstimate {
		t.Errorf("CreateEstimate = %v", got)
	}
}

// TestRetries429: 429 and 503 answers are retried (after Retry-After);
// 401 is not.
func TestRetries429(t *testing.T) {
	s := newFake(t, supabasetest.Config{})
	p := newProvider(t, s, supabase.Config{})
	s.FailNext(http.StatusTooManyRequests, http.StatusServiceUnavailable)
	start := time.Now()
	if _, err := p.Create(t.Context(), "busy"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("Create took %v: the 429's Retry-After: 1 was not honoured", d)
	}
	if n := s.Count(p.ProjectName("busy")); n != 1 {
		t.Errorf("%d projects, want 1", n)
	}

	lists := s.Calls("GET /v1/projects")
	bad := newProvider(t, s, supabase.Config{AccessToken: "sbp_wrong"})
	_, err := bad.Create(t.Context(), "denied")
	var ae *supabase.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("Create with a wrong token = %v, want a 401 APIError", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte("sbp_wrong")) {
		t.Errorf("the error shows the token: %v", err)
	}
	if n := s.Calls("GET /v1/projects") - lists; n != 1 {
		t.Errorf("%d list calls: the 401 was retried", n)
	}
}

// TestLostCreateFoundByName: the create happens but its answer is lost;
// the same Create finds the project by name and the password it sent
// still logs in. No second POST.
func TestLostCreateFoundByName(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, supabasetest.Config{})
	p := newProvider(t, s, supabase.Config{})
	s.LoseNextCreate(p.ProjectName("lost"))
	ep, err := p.Create(t.Context(), "lost")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Calls("POST /v1/projects"); n != 1 {
		t.Errorf("%d creates, want 1", n)
	}
	if n := s.Calls("PATCH /v1/projects/{ref}/database/password"); n != 0 {
		t.Errorf("%d password resets, want 0: the password sent is known", n)
	}
	if n := s.Count(p.ProjectName("lost")); n != 1 {
		t.Errorf("%d projects, want 1", n)
	}
	if err := login(t.Context(), s, ep); err != nil {
		t.Error(err)
	}
}

// TestAdoptResetsPassword: a project that exists already (made by an
// earlier process, password unknown) is adopted, not duplicated, and gets a
// new password that logs in.
func TestAdoptResetsPassword(t *testing.T) {
	s := newFake(t, supabasetest.Config{})
	p := newProvider(t, s, supabase.Config{})
	body, _ := json.Marshal(map[string]string{"name": p.ProjectName("old"), "organization_id": testOrg, "region": testRegion, "db_pass": "unknown-to-the-provider"})
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL()+"/v1/projects", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %s", resp.Status)
	}
	ep, err := p.Create(t.Context(), "old")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Calls("POST /v1/projects"); n != 1 {
		t.Errorf("%d creates, want 1 (ours)", n)
	}
	if n := s.Count(p.ProjectName("old")); n != 1 {
		t.Errorf("%d projects, want 1", n)
	}
	if err := login(t.Context(), s, ep); err != nil {
		t.Errorf("login with the reset password: %v", err)
	}
}

// TestDeleteTwice: Delete removes the project and its database; a second
// Delete says ErrTenantNotFound.
func TestDeleteTwice(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, supabasetest.Config{})
	p := newProvider(t, s, supabase.Config{})
	ep, err := p.Create(t.Context(), "gone")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}
	if n := s.Count(p.ProjectName("gone")); n != 0 {
		t.Errorf("%d projects after Delete", n)
	}
	if err := login(t.Context(), s, ep); err == nil {
		t.Error("the deleted project still logs in")
	}
	if err := p.Delete(t.Context(), "gone"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Errorf("second Delete = %v, want ErrTenantNotFound", err)
	}
}

// TestConfigValidate covers the config rules and that String hides the token.
func TestConfigValidate(t *testing.T) {
	ok := supabase.Config{AccessToken: "sbp_secret", OrganizationID: "org", Region: "us-east-1"}
	for _, tc := range []struct {
		name   string
		change func(*supabase.Config)
		bad    bool
	}{
		{"minimal", func(*supabase.Config) {}, false},
		{"no token", func(c *supabase.Config) { c.AccessToken = "" }, true},
		{"no org", func(c *supabase.Config) { c.OrganizationID = "" }, true},
		{"no region", func(c *supabase.Config) { c.Region = "" }, true},
		{"bad endpoint", func(c *supabase.Config) { c.Endpoint = "ipv4" }, true},
		{"bad pooler mode", func(c *supabase.Config) { c.PoolerMode = "statement" }, true},
		{"bad plan", func(c *supabase.Config) { c.Plan = "team" }, true},
		{"url with credentials", func(c *supabase.Config) { c.APIURL = "https://u:p@api.supabase.com" }, true},
		{"direct session", func(c *supabase.Config) { c.Endpoint, c.PoolerMode = "direct", "session" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			if err := c.Validate(); (err != nil) != tc.bad {
				t.Errorf("Validate = %v, want error %v", err, tc.bad)
			}
		})
	}
	if s := ok.String(); bytes.Contains([]byte(s), []byte("sbp_secret")) {
		t.Errorf("String shows the token: %s", s)
	}
}
