package supabase

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/provision/internal/backoff"
)

const (
	maxBody         = 16 << 20
	maxErrorMessage = 500
)

// APIError is an error answer of the Management API: its status and the
// body's message (docs/supabase-api.md §1).
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	s := strconv.Itoa(e.Status)
	if t := http.StatusText(e.Status); t != "" {
		s += " " + t
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// LostError means a call that creates something got no usable answer (a
// transport error, a timeout, or a 5xx other than 503): it may or may not
// have taken effect, so it is never re-sent blindly (§9).
type LostError struct {
	Op  string
	Err error
}

func (e *LostError) Error() string {
	return e.Op + ": no usable answer, the request may or may not have taken effect: " + e.Err.Error()
}

func (e *LostError) Unwrap() error { return e.Err }

func apiStatus(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// client sends API calls through the limiter, with retries. Safe for
// concurrent use.
type client struct {
	base   string
	token  string // secret
	http   *http.Client
	lim    *limiter
	budget time.Duration
	delay  time.Duration
	log    *slog.Logger
}

// call is one API call. path is relative to /v1 and already escaped;
// scope is the rate-limit scope (§8).
type call struct {
	method, path, scope string
	body                any
	// repeatable: sending it twice does no harm, so a lost answer is retried.
	repeatable bool
}

func (r *call) name() string { return r.method + " /v1" + r.path }

// do sends r and decodes a 2xx answer into out (if not nil). It retries
// 429 and 503 answers always, other 5xx and transport errors only when
// r.repeatable, until c.budget passes; lost answers to other calls come
// back as *LostError, error answers as *APIError.
func (c *client) do(ctx context.Context, r call, out any) error {
	var body []byte
	if r.body != nil {
		var err error
		if body, err = json.Marshal(r.body); err != nil {
			return fmt.Errorf("%s: encode body: %w", r.name(), err)
		}
	}
	start := time.Now()
	for attempt := 0; ; attempt++ {
		if err := c.lim.wait(ctx, r.scope); err != nil {
			return fmt.Errorf("%s: waiting for the rate limiter: %w", r.name(), err)
		}
		retryAfter, err := c.once(ctx, &r, body, out)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", r.name(), ctx.Err())
		}
		var ae *APIError
		isAPI := errors.As(err, &ae)
		switch {
		case isAPI && (ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusServiceUnavailable):
		case isAPI && ae.Status >= 500 && r.repeatable:
		case !isAPI && r.repeatable: // transport error
		case !isAPI || ae.Status >= 500:
			return &LostError{Op: r.name(), Err: err}
		default:
			return fmt.Errorf("%s: %w", r.name(), err)
		}
		d := max(backoff.Full(attempt, c.delay), retryAfter)
		if elapsed := time.Since(start); elapsed+d > c.budget {
			return fmt.Errorf("%s: gave up after %d attempts in %v: %w", r.name(), attempt+1, elapsed.Round(time.Millisecond), err)
		}
		c.log.Debug("supabase api: retrying", "call", r.name(), "attempt", attempt+1, "delay", d, "err", err)
		if err := backoff.Sleep(ctx, d); err != nil {
			return fmt.Errorf("%s: %w", r.name(), err)
		}
	}
}

// once sends one attempt. retryAfter comes from an error answer's
// Retry-After or, failing that, X-RateLimit-Reset (seconds, §8).
func (c *client) once(ctx context.Context, r *call, body []byte, out any) (retryAfter time.Duration, err error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, c.base+"/v1"+r.path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return 0, fmt.Errorf("read answer (status %d): %w", resp.StatusCode, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		headers := []string{"Retry-After"}
		if resp.StatusCode == http.StatusTooManyRequests {
			// Every answer carries X-RateLimit-Reset; only after a 429
			// does it say how long to wait (§8).
			headers = append(headers, "X-RateLimit-Reset")
		}
		for _, h := range headers {
			if s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get(h))); err == nil && s > 0 {
				retryAfter = time.Duration(s) * time.Second
				break
			}
		}
		return retryAfter, decodeAPIError(resp.StatusCode, data)
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return 0, &APIError{Status: resp.StatusCode, Message: "undecodable answer: " + err.Error()}
		}
	}
	return 0, nil
}

// decodeAPIError keeps the body's message, never a non-JSON body (an
// HTML error page says nothing useful and may be large).
func decodeAPIError(status int, body []byte) *APIError {
	e := &APIError{Status: status}
	var g struct {
		Message string `json:"message"`
		Error   string `json:"error"`
	}
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' && json.Unmarshal(t, &g) == nil {
		e.Message = g.Message
		if e.Message == "" {
			e.Message = g.Error
		}
	}
	if len(e.Message) > maxErrorMessage {
		e.Message = e.Message[:maxErrorMessage] + "..."
	}
	return e
}

// Rate-limit scopes (§8).
const scopeAccount = "account"

func projectScope(ref string) string { return "project/" + ref }

func projectPath(ref string, rest string) string { return "/projects/" + url.PathEscape(ref) + rest }

// limiter keeps each scope under perMinute requests in any 60 seconds: a
// GCRA per scope whose burst plus its refill over a minute equals the
// limit, so no window, wherever it starts, holds more (§8). Callers
// reserve a slot and sleep until it comes up. Safe for concurrent use.
type limiter struct {
	burst    int
	interval time.Duration
	mu       struct {
		sync.Mutex
		tat map[string]time.Time // guarded by mu; scope -> theoretical arrival time
	}
}

func newLimiter(perMinute int) *limiter {
	burst := max(1, min(perMinute/4, 30))
	refill := max(1, perMinute-burst)
	l := &limiter{burst: burst, interval: time.Minute / time.Duration(refill)}
	l.mu.tat = make(map[string]time.Time)
	return l
}

func (l *limiter) reserve(scope string, now time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	tat := l.mu.tat[scope]
	at := now
	if t := tat.Add(-time.Duration(l.burst-1) * l.interval); t.After(now) {
		at = t
	}
	if tat.Before(at) {
		tat = at
	}
	l.mu.tat[scope] = tat.Add(l.interval)
	return at
}

func (l *limiter) wait(ctx context.Context, scope string) error {
	return backoff.Sleep(ctx, time.Until(l.reserve(scope, time.Now())))
}
