package proxy

import (
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// SQLSTATE codes the router sends itself.
const (
	codeProtocolViolation     = "08P01"
	codeConnectionFailure     = "08006"
	codeCannotConnect         = "08001"
	codeFeatureNotSupported   = "0A000"
	codeInvalidAuthSpec       = "28000"
	codeInvalidPassword       = "28P01"
	codeCannotConnectNow      = "57P03"
	codeTooManyConnections    = "53300"
	codeInternal              = "XX000"
	codeInvalidParameterValue = "22023"
)

// CodeAdminShutdown is the SQLSTATE live sessions are ended with when the
// router drains or their tenant is blocked or deleted, as Postgres'
// pg_terminate_backend does. Exported so admin ends sessions with the same code.
const CodeAdminShutdown = "57P01"

// ClientError is an error the client is told about. Only Code, Msg and Hint
// are sent to the client; Err (the cause) is for the router's log.
type ClientError struct {
	Code string // SQLSTATE
	Msg  string // primary message, said to the client
	Hint string // what to do about it; optional
	Err  error  // underlying cause; never sent to the client

	// Outcome is the ConnectionsFinished label a connection ended by this
	// error is counted under, set where the error is made when Code alone
	// does not say it (a blocked tenant and a bad tenant name share 28000).
	// Empty: derived from Code.
	Outcome string
}

func (e *ClientError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (%s): %v", e.Msg, e.Code, e.Err)
	}
	return e.Msg + " (" + e.Code + ")"
}

func (e *ClientError) Unwrap() error { return e.Err }

func clientErr(code, msg, hint string, cause error) *ClientError {
	return &ClientError{Code: code, Msg: msg, Hint: hint, Err: cause}
}

// toErrorResponse maps any error to what the client may see: a *ClientError
// keeps its text, everything else becomes "internal error" so that no
// internal detail (and no secret) leaks.
func toErrorResponse(err error) *pgproto3.ErrorResponse {
	var ce *ClientError
	if !errors.As(err, &ce) {
		ce = &ClientError{Code: codeInternal, Msg: "internal error in pgtenant router", Hint: "Retry; if it persists, check the router's log."}
	}
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                ce.Code,
		Message:             ce.Msg,
		Hint:                ce.Hint,
	}
}

// writeError sends err to the client as a FATAL ErrorResponse. The caller
// closes the connection afterwards.
func writeError(c net.Conn, err error) error {
	buf, encErr := toErrorResponse(err).Encode(nil)
	if encErr != nil {
		return encErr
	}
	_, werr := c.Write(buf)
	return werr
}

// codeConfigLimitExceeded (configuration_limit_exceeded) answers a tenant
// creation refused by tenant.max_tenants or tenant.creates_per_minute.
const codeConfigLimitExceeded = "53400"

// passwordFailed is the answer to a wrong app secret. A client naming a
// tenant it may not create (tenant.create api or off) gets the very same
// answer (hiddenTenant), so that the answer tells it nothing about which
// tenants exist.
func passwordFailed(user string, cause error) *ClientError {
	return clientErr(codeInvalidPassword,
		fmt.Sprintf("password authentication failed for user %q", truncate(user, 64)),
		"Use the router's app secret, or the tenant's own secret where it has one, as the password (not a tenant database's password).", cause)
}

// hiddenTenant answers resolver.ErrTenantNotCreated as a wrong password for
// user; other errors pass unchanged. The cause stays for the log and for
// the connection's outcome (unknown_tenant).
func hiddenTenant(err error, user string) error {
	if errors.Is(err, resolver.ErrTenantNotCreated) {
		ce := passwordFailed(user, err)
		ce.Outcome = OutcomeUnknownTenant
		return ce
	}
	return err
}

// createLimitError answers a creation refused by a cluster-wide limit
// (resolver.ErrCreateLimit) with 53400, naming the limit and what to do.
func createLimitError(tenant string, err error) *ClientError {
	var le *provision.LimitError
	if !errors.As(err, &le) {
		le = &provision.LimitError{}
	}
	ce := clientErr(codeConfigLimitExceeded,
		fmt.Sprintf("tenant %q cannot be created: %s", tenant, le.Error()),
		"Delete tenants that are no longer needed (pgtenant tenants delete), or ask the operator to raise tenant.max_tenants.", err)
	if le.Setting == provision.LimitCreatesPerMinute {
		ce.Hint = fmt.Sprintf("Retry in %d s; the operator can raise tenant.creates_per_minute.", le.RetrySeconds())
	}
	ce.Outcome = OutcomeLimit
	return ce
}

// noRouteError answers a tenant its provider has no database for (the
// static provider knows no route for it) with 28000, as Postgres answers
// a role that does not exist: the tenant is named in the user name. The
// client authenticated with the app secret first, as with tenant.create
// auto, where any such client learns which tenants exist.
func noRouteError(tenant string, err error) *ClientError {
	ce := clientErr(codeInvalidAuthSpec,
		fmt.Sprintf("tenant %q does not exist: no route to its database", tenant),
		"The router routes this tenant only once an operator registers it: provider.static.routes, provider.static.template, or PUT /v1/tenants/{id}/route (pgtenant tenants route).", err)
	ce.Outcome = OutcomeUnknownTenant
	return ce
}
