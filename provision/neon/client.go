package neon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/provision/internal/backoff"
)

const (
	// maxBody caps how much of an answer is read. Lists are searched by
	// name, so real answers are far smaller.
	maxBody = 16 << 20
)

// client sends API requests through the limiter, with retries. Safe for
// concurrent use.
type client struct {
	base   string
	key    string // secret
	http   *http.Client
	lim    *limiter
	budget time.Duration
	delay  time.Duration
	log    *slog.Logger
}

// request is one API call. route is the path template with "{}" for each
// of args, which are path-escaped into it; the limiter and errors name the
// call by method and template.
type request struct {
	method string
	route  string
	args   []string
	query  url.Values
	body   any
	// repeatable means sending the request twice does no harm (reads,
	// deletes, password resets): a lost answer is then retried like a 503.
	// A lost answer to any other request is returned as a *LostError.
	repeatable bool
}

func (r *request) name() string { return r.method + " " + r.route }

func (r *request) path() string {
	var b strings.Builder
	args := r.args
	rest := r.route
	for {
		i := strings.Index(rest, "{}")
		if i < 0 || len(args) == 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:i])
		b.WriteString(url.PathEscape(args[0]))
		args, rest = args[1:], rest[i+2:]
	}
	return b.String()
}

// do sends r and decodes a successful answer's body into out (when out is
// not nil and there is a body). It returns the answer's status.
//
// It retries 423, 429 and 503 answers (and, for repeatable requests, other
// 5xx answers and transport errors) with exponential backoff and full
// jitter until c.budget has passed since the first attempt or ctx ends;
// every attempt waits for the limiter. Other error answers come back as
// *APIError, lost answers to unrepeatable requests as *LostError, both
// wrapped with the method and path.
func (c *client) do(ctx context.Context, r request, out any) (int, error) {
	var body []byte
	if r.body != nil {
		var err error
		if body, err = json.Marshal(r.body); err != nil {
			return 0, fmt.Errorf("%s: encode body: %w", r.name(), err)
		}
	}
	start := time.Now()
	for attempt := 0; ; attempt++ {
		if err := c.lim.wait(ctx, r.name()); err != nil {
			return 0, fmt.Errorf("%s %s: waiting for the rate limiter: %w", r.method, r.path(), err)
		}
		status, retryAfter, err := c.once(ctx, &r, body, out)
		if err == nil {
			return status, nil
		}
		if ctx.Err() != nil {
			return status, fmt.Errorf("%s %s: %w", r.method, r.path(), ctx.Err())
		}
		var ae *APIError
		var de *decodeError
		switch {
		case errors.As(err, &de) && r.repeatable: // retrying would get the same answer
			return status, fmt.Errorf("%s %s: %w", r.method, r.path(), err)
		case errors.As(err, &ae) && retryableStatus(ae):
		case errors.As(err, &ae) && ae.Status >= 500 && r.repeatable:
		case ae == nil && r.repeatable: // transport error
		case ae == nil || ae.Status >= 500:
			return status, fmt.Errorf("%s %s: %w", r.method, r.path(), &LostError{Op: r.name(), Err: err})
		default:
			return status, fmt.Errorf("%s %s: %w", r.method, r.path(), err)
		}
		d := max(backoff.Full(attempt, c.delay), retryAfter)
		if elapsed := time.Since(start); elapsed+d > c.budget {
			return status, fmt.Errorf("%s %s: gave up after %d attempts in %v: %w",
				r.method, r.path(), attempt+1, elapsed.Round(time.Millisecond), err)
		}
		c.log.Debug("neon api: retrying", "call", r.name(), "path", r.path(), "status", status,
			"attempt", attempt+1, "delay", d, "err", err)
		if err := backoff.Sleep(ctx, d); err != nil {
			return status, fmt.Errorf("%s %s: %w", r.method, r.path(), err)
		}
	}
}

// once sends one attempt. An error answer is an *APIError; any other error
// is a transport (or decoding) error. retryAfter is the answer's
// Retry-After in seconds, if any (Neon documents none; docs/neon-api.md §2.3).
func (c *client) once(ctx context.Context, r *request, body []byte, out any) (status int, retryAfter time.Duration, err error) {
	u := c.base + r.path()
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, rd)
	if err != nil {
		return 0, 0, err
	}
	reqID := newRequestID()
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Request-ID", reqID)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, 0, fmt.Errorf("read answer (status %d): %w", resp.StatusCode, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			retryAfter = time.Duration(s) * time.Second
		}
		return resp.StatusCode, retryAfter, decodeAPIError(resp.StatusCode, data, reqID)
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, 0, &decodeError{status: resp.StatusCode, err: err}
		}
	}
	return resp.StatusCode, 0, nil
}

// decodeError is a successful answer whose body could not be decoded.
type decodeError struct {
	status int
	err    error
}

func (e *decodeError) Error() string {
	return fmt.Sprintf("decode answer (status %d): %v", e.status, e.err)
}

func (e *decodeError) Unwrap() error { return e.err }

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pgtenant-" + hex.EncodeToString(b)
}
