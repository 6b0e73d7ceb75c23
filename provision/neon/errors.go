package neon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// APIError is an error answer of the Neon API: the HTTP status and the
// decoded body {"code", "message", "request_id"} (docs/neon-api.md §2.1).
// Code is often empty; branch on Status first.
type APIError struct {
	Status    int
	Code      string // e.g. "BRANCHES_LIMIT_EXCEEDED"; may be empty
	Message   string
	RequestID string // Neon's request id, or the X-Request-ID this package sent
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(e.Status))
	if t := http.StatusText(e.Status); t != "" {
		b.WriteString(" " + t)
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" (request id " + e.RequestID + ")")
	}
	return b.String()
}

// Error codes this package branches on (docs/neon-api.md §2.2).
const (
	codeBranchesLimit     = "BRANCHES_LIMIT_EXCEEDED"
	codeRootBranchesLimit = "ROOT_BRANCHES_LIMIT_EXCEEDED"
)

// maxErrorMessage caps how much of an error message is kept.
const maxErrorMessage = 500

// decodeAPIError builds an APIError from an error answer. A body that is
// not Neon's JSON (such as Cloudflare's HTML 524 page) is not echoed: the
// message is then the status text.
func decodeAPIError(status int, body []byte, requestID string) *APIError {
	e := &APIError{Status: status, RequestID: requestID}
	var g struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id"`
	}
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' && json.Unmarshal(t, &g) == nil {
		e.Code, e.Message = g.Code, g.Message
		if g.RequestID != "" {
			e.RequestID = g.RequestID
		}
	}
	if len(e.Message) > maxErrorMessage {
		e.Message = e.Message[:maxErrorMessage] + "..."
	}
	if e.Message == "" && e.Code == "" {
		e.Message = "(no error body)"
	}
	return e
}

// apiStatus returns the status of the *APIError in err's chain, or 0.
func apiStatus(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// isBranchLimit reports whether err is Neon refusing a branch because the
// project holds as many as its plan allows.
func isBranchLimit(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity &&
		(ae.Code == codeBranchesLimit || ae.Code == codeRootBranchesLimit)
}

// retryableStatus reports whether an answer with this status did nothing
// and may be sent again, whatever the method (docs/neon-api.md §2.2): 423
// Locked, 429 Too Many Requests, 503 Service Unavailable, and 422 "branch
// not ready yet", which Neon's own test client retries.
func retryableStatus(e *APIError) bool {
	switch e.Status {
	case http.StatusLocked, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return true
	case http.StatusUnprocessableEntity:
		return strings.Contains(strings.ToLower(e.Message), "not ready")
	}
	return false
}

// LostError means a request that creates or changes something got no
// usable answer (a transport error, a timeout, or a 5xx other than 503), so
// it may or may not have taken effect. It is never blindly re-sent: Create
// looks the tenant up by name and adopts what exists.
type LostError struct {
	Op  string // "POST /projects/{}/branches"
	Err error
}

func (e *LostError) Error() string {
	return e.Op + ": no usable answer, the request may or may not have taken effect: " + e.Err.Error()
}

func (e *LostError) Unwrap() error { return e.Err }

// OperationError is an operation that ended in failure (failed, error or
// cancelled; docs/neon-api.md §7.1).
type OperationError struct {
	ProjectID, ID, Action, Status string
	Reason                        string // the operation's error text
}

func (e *OperationError) Error() string {
	msg := fmt.Sprintf("operation %s %s (%s, project %s)", e.Action, e.Status, e.ID, e.ProjectID)
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}
