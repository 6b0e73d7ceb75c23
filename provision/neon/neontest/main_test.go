package neontest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const testOpDelay = 20 * time.Millisecond

func testLogger() *slog.Logger {
	if os.Getenv("NEONTEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newBackend returns a Backend on the shared test cluster, closed in
// t.Cleanup.
func newBackend(t *testing.T) *Backend {
	t.Helper()
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	be, err := NewBackendConfig(ctx, BackendConfig{AdminDSN: c.AdminDSN("postgres"), Log: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close)
	return be
}

// newServer starts a Server (OpDelay 20ms unless cfg says otherwise),
// closed in t.Cleanup.
func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.OpDelay == 0 {
		cfg.OpDelay = testOpDelay
	}
	cfg.Log = testLogger()
	srv, err := NewServer(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// apiClient is a minimal Neon API client: plain net/http.
type apiClient struct {
	t    *testing.T
	base string
	key  string
	hc   *http.Client
}

func newClient(t *testing.T, srv *Server, key string) *apiClient {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &apiClient{t: t, base: srv.URL(), key: key, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// call sends a request and decodes a 2xx answer into out (if non-nil). It
// returns the status and the raw body.
func (c *apiClient) call(method, path string, body, out any) (int, []byte) {
	c.t.Helper()
	status, raw, err := c.try(method, path, body, out)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	return status, raw
}

func (c *apiClient) try(method, path string, body, out any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if out != nil && resp.StatusCode/100 == 2 && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return 0, nil, err
		}
	}
	return resp.StatusCode, raw, nil
}

// apiErr decodes an error body.
func apiErr(t *testing.T, raw []byte) APIError {
	t.Helper()
	var e APIError
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("error body is not JSON: %q", raw)
	}
	return e
}

// waitOpsDone polls GET operation until every op is terminal, as a client
// would, and fails unless all finished.
func (c *apiClient) waitOpsDone(projectID string, ops []Operation) {
	c.t.Helper()
	for _, op := range ops {
		poll.Until(c.t, 20*time.Second, "operation "+op.Action+" to finish", func() bool {
			var got struct{ Operation Operation }
			if st, raw := c.call("GET", "/projects/"+projectID+"/operations/"+op.ID, nil, &got); st != 200 {
				c.t.Fatalf("get operation: %d %s", st, raw)
			}
			if got.Operation.Status != OpFinished && got.Operation.Status != OpScheduling && got.Operation.Status != OpRunning {
				c.t.Fatalf("operation %s ended %s: %s", got.Operation.Action, got.Operation.Status, got.Operation.Error)
			}
			return got.Operation.Status == OpFinished
		})
	}
}

var (
	projectIDRe  = regexp.MustCompile(`^[a-z]+-[a-z]+-[0-9]{8}$`)
	branchIDRe   = regexp.MustCompile(`^br-[a-z]+-[a-z]+-[a-z0-9]{8}$`)
	endpointIDRe = regexp.MustCompile(`^ep-[a-z]+-[a-z]+-[a-z0-9]{8}$`)
	passwordRe   = regexp.MustCompile(`^npg_[A-Za-z0-9]{12}$`)
	uuidRe       = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)
