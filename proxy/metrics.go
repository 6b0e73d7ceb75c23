package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/resolver"
)

// Metrics are the proxy's Prometheus metrics. Create them with NewMetrics
// and hand them to every Server of the process through Config.Metrics. A nil
// *Metrics records nothing. No metric has a tenant label: tenant IDs are
// unbounded, so they only appear in logs and in the admin API.
//
// Connection outcomes (label outcome of ConnectionsFinished):
//
//	ok               a routed session ended normally (either side hung up)
//	cancel           a CancelRequest connection (see CancelRequests)
//	client_gone      the client hung up before it was routed (port probes, psql asking for a password)
//	timeout          the startup was not completed within handshake_timeout
//	protocol_error   malformed or oversized startup packets (08P01)
//	unsupported      protocol 2, replication and the like (0A000)
//	auth_failed      wrong app secret, or refused by the auth backoff (28P01)
//	invalid_tenant   missing or invalid tenant in the user name (28000)
//	unknown_tenant   the tenant does not exist and provisioning is off
//	blocked          the tenant is blocked by an operator (28000)
//	limit            a connection limit refused the client (53300)
//	catalog_error    the catalog could not be read or written (57P03)
//	provision_error  the tenant's database could not be created in time (57P03)
//	upstream_error   the tenant's database was unreachable or refused the login
//	killed           an operator ended the session (block, delete)
//	idle_timeout     the session was idle for limits.idle_timeout (57P05, 25P03)
//	shutdown         the router shut down (drain, 57P01)
//	error            anything else (a broken pipe mid-session, an internal error)
//
// Accepted = sum(Finished) + Active at any moment.
type Metrics struct {
	// ConnectionsAccepted counts client connections handed to ServeConn.
	ConnectionsAccepted prometheus.Counter
	// ConnectionsActive is the number of client connections open now.
	ConnectionsActive prometheus.Gauge
	// ConnectionsFinished counts closed client connections by outcome.
	ConnectionsFinished *prometheus.CounterVec
	// SessionsCold is the number of idle sessions held cold now: their
	// sockets as bare descriptors, no goroutine (evcold_linux.go).
	SessionsCold prometheus.Gauge
	// HandshakeSeconds is the time from accept to a complete startup
	// packet (TLS included), for connections that got that far.
	HandshakeSeconds prometheus.Histogram
	// ClientAuthSeconds is the time the client took to authenticate
	// successfully (SCRAM round trips).
	ClientAuthSeconds prometheus.Histogram
	// ResolveSeconds is the time to find the tenant's route, creating the
	// tenant's database when needed. Label via: cache, catalog, created or
	// error.
	ResolveSeconds *prometheus.HistogramVec
	// UpstreamConnectSeconds is the time to log in to the tenant's database.
	UpstreamConnectSeconds prometheus.Histogram
	// BytesIn counts bytes relayed from clients to upstreams, added when a
	// session ends.
	BytesIn prometheus.Counter
	// BytesOut counts bytes relayed from upstreams to clients, added when a
	// session ends.
	BytesOut prometheus.Counter
	// ClientLogins counts successful client authentications by the
	// credential used: app (the app secret), tenant (the tenant's own
	// secret, Auth.PerTenant) or trust. Failures are connection outcomes
	// (auth_failed).
	ClientLogins *prometheus.CounterVec
	// CancelRequests counts CancelRequests by outcome: forwarded, unknown
	// (a key this router did not issue or that expired; ignored), failed,
	// or rate_limited (dropped unread: over Limits.CancelRate for its
	// client address). All but rate_limited were served.
	CancelRequests *prometheus.CounterVec
}

// Outcome label values of Metrics.ConnectionsFinished.
const (
	OutcomeOK             = "ok"
	OutcomeCancel         = "cancel"
	OutcomeClientGone     = "client_gone"
	OutcomeTimeout        = "timeout"
	OutcomeProtocolError  = "protocol_error"
	OutcomeUnsupported    = "unsupported"
	OutcomeAuthFailed     = "auth_failed"
	OutcomeInvalidTenant  = "invalid_tenant"
	OutcomeUnknownTenant  = "unknown_tenant"
	OutcomeBlocked        = "blocked"
	OutcomeLimit          = "limit"
	OutcomeCatalogError   = "catalog_error"
	OutcomeProvisionError = "provision_error"
	OutcomeUpstreamError  = "upstream_error"
	OutcomeKilled         = "killed"
	OutcomeIdleTimeout    = "idle_timeout"
	OutcomeShutdown       = "shutdown"
	OutcomeError          = "error"
)

// CancelRateLimited is the Metrics.CancelRequests outcome of a request
// dropped because its client address was over Limits.CancelRate.
const CancelRateLimited = "rate_limited"

// NewMetrics creates the proxy metrics and registers them on reg (nil: not
// registered, e.g. for tests that read them directly). It panics if they
// are already registered on reg, as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "pgtenant", "proxy"
	m := &Metrics{
		ConnectionsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_accepted_total",
			Help: "Client connections accepted.",
		}),
		ConnectionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_active",
			Help: "Client connections open now (in startup or routed).",
		}),
		SessionsCold: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "sessions_cold",
			Help: "Idle routed sessions held cold now (sockets as bare descriptors, no goroutine).",
		}),
		ConnectionsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_finished_total",
			Help: "Client connections closed, by outcome.",
		}, []string{"outcome"}),
		HandshakeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "handshake_seconds",
			Help:    "Time from accept to a complete startup packet (TLS included).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		ClientAuthSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "client_auth_seconds",
			Help:    "Time of successful client authentication.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		ClientLogins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "client_logins_total",
			Help: "Successful client authentications, by credential (app: the app secret, tenant: the tenant's own secret, trust).",
		}, []string{"credential"}),
		ResolveSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "resolve_seconds",
			Help:    "Time to find a tenant's route, including creating its database; by how it was found (cache, catalog, created, error).",
			Buckets: []float64{.00001, .0001, .001, .005, .01, .05, .1, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"via"}),
		UpstreamConnectSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "upstream_connect_seconds",
			Help:    "Time to log in to a tenant's database (TCP, TLS, SCRAM).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		BytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "client_to_upstream_bytes_total",
			Help: "Bytes relayed from clients to upstreams (added when a session ends).",
		}),
		BytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "upstream_to_client_bytes_total",
			Help: "Bytes relayed from upstreams to clients (added when a session ends).",
		}),
		CancelRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "cancel_requests_total",
			Help: "CancelRequests received, by outcome (forwarded, unknown, failed; rate_limited: dropped over limits.cancel_rate).",
		}, []string{"outcome"}),
	}
	// Export the label values up front, so that rates work from the start.
	for _, o := range []string{OutcomeOK, OutcomeCancel, OutcomeClientGone, OutcomeAuthFailed, OutcomeInvalidTenant,
		OutcomeLimit, OutcomeProvisionError, OutcomeUpstreamError, OutcomeShutdown, OutcomeError} {
		m.ConnectionsFinished.WithLabelValues(o)
	}
	for _, o := range []string{"forwarded", "unknown", "failed", CancelRateLimited} {
		m.CancelRequests.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.ConnectionsAccepted, m.ConnectionsActive, m.ConnectionsFinished, m.SessionsCold,
			m.HandshakeSeconds, m.ClientAuthSeconds, m.ClientLogins, m.ResolveSeconds, m.UpstreamConnectSeconds,
			m.BytesIn, m.BytesOut, m.CancelRequests)
	}
	return m
}

// cold counts a session going cold (+1) or warming up (-1).
func (m *Metrics) cold(delta float64) {
	if m != nil {
		m.SessionsCold.Add(delta)
	}
}

func (m *Metrics) connOpened() {
	if m == nil {
		return
	}
	m.ConnectionsAccepted.Inc()
	m.ConnectionsActive.Inc()
}

func (m *Metrics) connClosed(outcome string, sess *session) {
	if m == nil {
		return
	}
	m.ConnectionsActive.Dec()
	m.ConnectionsFinished.WithLabelValues(outcome).Inc()
	if n := sess.bytesIn.Load(); n > 0 {
		m.BytesIn.Add(float64(n))
	}
	if n := sess.bytesOut.Load(); n > 0 {
		m.BytesOut.Add(float64(n))
	}
}

func (m *Metrics) handshakeDone(start time.Time) {
	if m != nil {
		m.HandshakeSeconds.Observe(time.Since(start).Seconds())
	}
}

func (m *Metrics) authDone(start time.Time, credential string) {
	if m != nil {
		m.ClientAuthSeconds.Observe(time.Since(start).Seconds())
		m.ClientLogins.WithLabelValues(credential).Inc()
	}
}

func (m *Metrics) resolved(start time.Time, rt resolver.Route, err error) {
	if m == nil {
		return
	}
	via := "error"
	if err == nil {
		via = rt.Via.String()
	}
	m.ResolveSeconds.WithLabelValues(via).Observe(time.Since(start).Seconds())
}

func (m *Metrics) upstreamConnected(start time.Time) {
	if m != nil {
		m.UpstreamConnectSeconds.Observe(time.Since(start).Seconds())
	}
}

func (m *Metrics) cancelRequest(outcome string) {
	if m != nil {
		m.CancelRequests.WithLabelValues(outcome).Inc()
	}
}

// outcome classifies how a connection ended, for ConnectionsFinished.
// draining says whether the server was shutting down when it ended.
func outcome(sess *session, err error, draining bool) string {
	switch {
	case sess.cancelReq:
		return OutcomeCancel
	case err == nil:
		return OutcomeOK
	case errors.Is(err, errKilled):
		switch {
		case sess.killedBy != nil && sess.killedBy.Outcome != "":
			return sess.killedBy.Outcome
		case draining:
			return OutcomeShutdown
		}
		return OutcomeKilled
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return OutcomeUpstreamError // the upstream refused us or the client
	}
	var ce *ClientError
	if errors.As(err, &ce) {
		if ce.Outcome != "" {
			return ce.Outcome
		}
		switch {
		case errors.Is(err, resolver.ErrUnknownTenant):
			return OutcomeUnknownTenant
		case errors.Is(err, resolver.ErrCatalog):
			return OutcomeCatalogError
		}
		switch ce.Code {
		case codeInvalidPassword:
			return OutcomeAuthFailed
		case codeInvalidAuthSpec:
			return OutcomeInvalidTenant
		case codeTooManyConnections:
			return OutcomeLimit
		case codeFeatureNotSupported:
			return OutcomeUnsupported
		case codeProtocolViolation:
			if isTimeout(err) {
				return OutcomeTimeout
			}
			return OutcomeProtocolError
		case codeConnectionFailure, codeCannotConnect:
			return OutcomeUpstreamError
		case CodeAdminShutdown:
			return OutcomeShutdown
		case codeCannotConnectNow:
			if sess.routed || (draining && ce.Err == nil) {
				return OutcomeShutdown // refused: the router started draining
			}
			return OutcomeProvisionError
		}
		return OutcomeError
	}
	if isQuietEOF(err) {
		if sess.routed {
			return OutcomeOK
		}
		return OutcomeClientGone
	}
	if !sess.routed && isTimeout(err) {
		return OutcomeTimeout
	}
	return OutcomeError
}

// outcome is the package-level outcome, with ctx's end counted as shutdown.
func (s *Server) outcome(ctx context.Context, sess *session, err error) string {
	if err != nil && !sess.cancelReq && ctx.Err() != nil {
		return OutcomeShutdown
	}
	return outcome(sess, err, s.draining.Load())
}
