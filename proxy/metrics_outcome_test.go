package proxy

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

func TestOutcome(t *testing.T) {
	timeout := fmt.Errorf("read: %w", os.ErrDeadlineExceeded)
	routed := &session{routed: true}
	tests := []struct {
		name     string
		sess     *session
		err      error
		draining bool
		want     string
	}{
		{"clean end", routed, nil, false, OutcomeOK},
		{"client hung up mid-session", routed, syscall.ECONNRESET, false, OutcomeOK},
		{"cancel request", &session{cancelReq: true}, nil, false, OutcomeCancel},
		{"port probe", &session{}, io.EOF, false, OutcomeClientGone},
		{"startup timeout", &session{}, clientErr(codeProtocolViolation, "not completed", "", timeout), false, OutcomeTimeout},
		{"bad packet", &session{}, clientErr(codeProtocolViolation, "bad", "", nil), false, OutcomeProtocolError},
		{"protocol 2", &session{}, clientErr(codeFeatureNotSupported, "v2", "", nil), false, OutcomeUnsupported},
		{"wrong secret", &session{}, clientErr(codeInvalidPassword, "auth", "", nil), false, OutcomeAuthFailed},
		{"invalid tenant", &session{}, (&TenantConfig{}).invalid("X", "invalid tenant ID"), false, OutcomeInvalidTenant},
		{"blocked", &session{}, blockedError("acme"), false, OutcomeBlocked},
		{"limit", &session{}, clientErr(codeTooManyConnections, "limit", "", nil), false, OutcomeLimit},
		{"unknown tenant", &session{}, resolveError(context.Background(), "x", fmt.Errorf("%w %q", resolver.ErrUnknownTenant, "x")), false, OutcomeUnknownTenant},
		{"catalog down", &session{}, resolveError(context.Background(), "x", resolver.ErrCatalog), false, OutcomeCatalogError},
		{"unknown tenant answered as a wrong secret", &session{}, hiddenTenant(resolveError(context.Background(), "x", fmt.Errorf("%w: tenant %q", resolver.ErrTenantNotCreated, "x")), "x"), false, OutcomeUnknownTenant},
		{"creation limit", &session{}, resolveError(context.Background(), "x", fmt.Errorf("%w: %w", resolver.ErrCreateLimit, &provision.LimitError{Setting: provision.LimitMaxTenants, Max: 3})), false, OutcomeLimit},
		{"provider down", &session{}, resolveError(context.Background(), "x", resolver.ErrProvision), false, OutcomeProvisionError},
		{"upstream unreachable", &session{}, clientErr(codeConnectionFailure, "unreachable", "", io.EOF), false, OutcomeUpstreamError},
		{"upstream refused", &session{}, &ClientError{Code: "53300", Err: &pgconn.PgError{Code: "53300"}}, false, OutcomeUpstreamError},
		{"refused while draining", routed, clientErr(codeCannotConnectNow, "shutting down", "", nil), true, OutcomeShutdown},
		{"killed", routed, errKilled, false, OutcomeKilled},
		{"drained", routed, errKilled, true, OutcomeShutdown},
		{"idle", &session{routed: true, killedBy: idleError(false)}, errKilled, false, OutcomeIdleTimeout},
		{"idle in transaction", &session{routed: true, killedBy: idleError(true)}, errKilled, true, OutcomeIdleTimeout},
		{"blocked while draining", &session{routed: true, killedBy: blockedError("acme")}, errKilled, true, OutcomeBlocked},
		// The outcome travels with the error, not with its words.
		{"tenant named like a block", &session{}, (&TenantConfig{}).invalid("x is blocked", "invalid tenant ID \"x is blocked\""), false, OutcomeInvalidTenant},
		{"internal", &session{}, io.ErrShortWrite, false, OutcomeError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := outcome(tt.sess, tt.err, tt.draining); got != tt.want {
				t.Errorf("outcome = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.connOpened()
	m.connClosed(OutcomeOK, &session{})
	m.cancelRequest("unknown")
}
