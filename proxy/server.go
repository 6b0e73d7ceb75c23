package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sync/singleflight"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// Resolver finds a tenant's upstream. *resolver.Resolver implements it.
type Resolver interface {
	// Resolve returns the tenant's route, creating the tenant's database
	// first if needed. It blocks until then or until ctx ends.
	Resolve(ctx context.Context, tenant string) (resolver.Route, error)
	// Invalidate forgets a cached route, e.g. after its upstream refused us.
	Invalidate(tenant string)
}

// Config configures a Server. The zero value works except for Auth, which
// must name a secret (or trust, on loopback).
type Config struct {
	// Auth is how clients authenticate to the router.
	Auth Auth
	// Tenant says where the tenant is named (user name, options, SNI,
	// database) and what a valid ID looks like.
	Tenant TenantConfig
	// Limits caps connections and throttles failed logins (limits.go);
	// change them at runtime with SetLimits. The zero value limits nothing.
	Limits Limits
	// KeepAlive configures TCP keepalives toward clients and upstreams
	// (limits.go). The zero value enables them with defaults.
	KeepAlive KeepAlive
	// Now is the clock of the auth backoff and the idle timeout. Nil means
	// time.Now.
	Now func() time.Time
	// HandshakeTimeout bounds the startup negotiation and client
	// authentication. Zero or negative means 10s.
	HandshakeTimeout time.Duration
	// ConnectTimeout bounds resolving the tenant (including creating its
	// database on first connect) plus logging in upstream. Zero or negative
	// means 60s. A client that runs out of it gets 57P03.
	ConnectTimeout time.Duration
	// MaxStartupPacket caps the size of startup-phase packets. Zero or
	// negative means DefaultMaxStartupPacket (10000, as Postgres).
	MaxStartupPacket int
	// InstanceID is put in every cancel key this router issues (the top
	// byte of its process ID), so that several instances can tell whose
	// key it is (cancel.go).
	InstanceID uint8
	// Forward hands CancelRequests with another instance's key to that
	// instance, and takes those it forwards here (ServePeers; cancel.go).
	// The zero value forwards nothing.
	Forward CancelForwarding
	// DialUpstream dials upstream TCP connections (also for cancels). Nil
	// means a net.Dialer with TCP keepalives as KeepAlive says.
	DialUpstream func(ctx context.Context, network, addr string) (net.Conn, error)
	// Upstream says how to talk to upstreams (TLS, forwarded parameters).
	Upstream UpstreamConfig
	// Upstreams, when not nil, overrides Upstream for the routes of the
	// providers it names (resolver.Route's Provider): several providers
	// at once, each reached its own way (upstream.go).
	Upstreams map[string]*UpstreamConfig
	// Pool shares upstream server connections between clients (pooling.go).
	// The zero value gives each client one of its own.
	Pool PoolConfig
	// TLS is how clients' TLS is terminated (see tls.go). The zero value
	// declines it.
	TLS TLSConfig
	// DrainTimeout is how long Serve, once its ctx ends, lets live sessions
	// finish on their own before ending them with 57P01. Zero ends them at
	// once.
	DrainTimeout time.Duration
	// Log receives one line per finished session plus errors. Nil discards.
	Log *slog.Logger
	// Metrics records connections, latencies and bytes (see metrics.go).
	// Nil records nothing. Several Servers may share one.
	Metrics *Metrics
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout <= 0 {
		return 10 * time.Second
	}
	return c.HandshakeTimeout
}

func (c *Config) connectTimeout() time.Duration {
	if c.ConnectTimeout <= 0 {
		return 60 * time.Second
	}
	return c.ConnectTimeout
}

func (c *Config) maxStartupPacket() int {
	if c.MaxStartupPacket <= 0 {
		return DefaultMaxStartupPacket
	}
	return c.MaxStartupPacket
}

// Server routes client connections to their tenants' databases.
// Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	res     Resolver
	auth    *authenticator
	cancels *cancelRegistry
	fwd     *forwarder // nil: cancel forwarding off (cancel.go)
	log     *slog.Logger
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	scram   *scramClients // upstream SCRAM clients, caching derived keys (login.go)

	nextConn atomic.Uint64
	conns    sync.WaitGroup // the sessions Serve started before the drain
	connMu   sync.Mutex     // orders conns.Go before drain's conns.Wait

	greetings *lru.Cache[greetingKey, *greeting] // transaction pooling's cached greetings (pooled.go)
	// greetFlight shares one greeting borrow among a tenant's clients
	// connecting at once (pooled.go).
	greetFlight singleflight.Group
	live        registry
	draining    atomic.Bool
	tls         *tlsTerminator // nil: TLS disabled
	lim         *limiter       // limits, block list, auth backoff (limits.go)

	tenantModes atomic.Pointer[map[string]PoolMode] // SetTenantPoolModes'; nil: none (pooling.go)
}

// killGrace is how long Serve waits for killed sessions to send their
// ErrorResponse before closing every connection.
const killGrace = 2 * time.Second

// New returns a Server that routes through r.
func New(cfg Config, r Resolver) (*Server, error) {
	auth, err := newAuthenticator(cfg.Auth)
	if err != nil {
		return nil, err
	}
	if err := cfg.validateUpstreams(); err != nil {
		return nil, err
	}
	if err := cfg.Tenant.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Pool.validate(); err != nil {
		return nil, err
	}
	fwd, err := newForwarder(cfg.Forward, cfg.InstanceID)
	if err != nil {
		return nil, err
	}
	greetings, err := lru.New[greetingKey, *greeting](maxGreetings)
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	term, err := newTLSTerminator(cfg.TLS, log)
	if err != nil {
		return nil, err
	}
	dial := cfg.DialUpstream
	if dial == nil {
		dial = cfg.KeepAlive.Dialer().DialContext
	}
	return &Server{
		cfg:     cfg,
		res:     r,
		auth:    auth,
		cancels: newCancelRegistry(cfg.InstanceID),
		fwd:     fwd,
		log:     log,
		dial:    dial,
		scram:   newSCRAMClients(upstreamSCRAMCacheSize),
		tls:     term,
		lim:     newLimiter(&cfg),

		greetings: greetings,
	}, nil
}

// Serve accepts connections on ln and serves each in its own goroutine until
// ctx ends. It then drains: Draining reports true, new clients are told
// 57P03 (cannot connect now), live sessions get DrainTimeout to end on their
// own, then are ended with 57P01 (admin shutdown); ln is closed and Serve
// returns once every connection has finished.
// Serve refuses trust authentication on a listener that is not loopback.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.auth.trust && !isLoopback(ln.Addr()) {
		_ = ln.Close()
		return fmt.Errorf("proxy: trust authentication is only allowed on a loopback listener, not %s", ln.Addr())
	}
	// Sessions outlive ctx by the drain; connCtx closes what is left after.
	connCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	// Idle plaintext sessions wait in an epoll set rather than on
	// goroutines (evrelay_linux.go); nil elsewhere than on Linux.
	poll, err := newPoller(s, connCtx)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("proxy: %w", err)
	}
	if poll != nil {
		defer poll.close() // runs after the drain (deferred before finish runs): no session is left on it
	}
	defer s.startSweeper()() // idle timeout, old auth failures (idle.go)
	// The event-relayed sessions have no goroutine of their own to see
	// connCtx end: one hook for all of them ends them (ServeConn's
	// per-connection one covers the rest).
	defer context.AfterFunc(connCtx, func() {
		s.live.each("", func(ls *liveSession) {
			if ls.ev.p == poll && poll != nil {
				ls.ev.abort()
			}
		})
	})()
	// When ctx ends the listener stays open for the drain: a client that
	// connects meanwhile is told 57P03 (as Postgres tells it during a
	// shutdown), not "connection refused", and its CancelRequests still
	// reach the sessions being drained. Those connections are counted in
	// refusing, apart from the sessions the drain waits for.
	var refusing sync.WaitGroup
	drained := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		s.drain(hardStop)
		_ = ln.Close()
		close(drained)
	})
	finish := func() {
		if stop() { // ended without ctx (the listener failed): drain all the same
			s.drain(hardStop)
			_ = ln.Close()
		} else {
			<-drained
		}
		waitRefused(&refusing, hardStop)
	}

	for {
		c, err := s.accept(ctx, ln, "accept")
		if err != nil {
			finish()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.connMu.Lock() // against drain's switch to draining: conns gets no Go once its Wait may run
		wg, p := &s.conns, poll
		if s.draining.Load() {
			// Refused once its startup packet is read: never relayed, so
			// never on the poller (whose sessions end with s.conns.Done).
			wg, p = &refusing, nil
		}
		wg.Add(1) // Done when the session ends, which may be after serveConn returns
		go func() { _ = s.serveConn(connCtx, c, p, wg) }()
		s.connMu.Unlock()
	}
}

// waitRefused gives connections accepted during the drain a moment to be
// told 57P03, then closes what is left of them.
func waitRefused(refusing *sync.WaitGroup, hardStop context.CancelFunc) {
	done := make(chan struct{})
	go func() { refusing.Wait(); close(done) }()
	t := time.NewTimer(killGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		hardStop()
		<-done
	}
}

// Draining reports whether the server is shutting down (for readiness).
func (s *Server) Draining() bool { return s.draining.Load() }

// drain waits for the connections to end, up to DrainTimeout, then ends the
// live sessions with 57P01 and, after a short grace, closes everything.
func (s *Server) drain(hardStop context.CancelFunc) {
	s.connMu.Lock()
	s.draining.Store(true)
	s.connMu.Unlock()
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-t.C:
			return false
		}
	}
	if s.cfg.DrainTimeout > 0 && wait(s.cfg.DrainTimeout) {
		return
	}
	if n := s.CloseSessions("", CodeAdminShutdown, "terminating connection due to administrator command"); n > 0 {
		s.log.Info("drain: ending live sessions", "sessions", n)
	}
	if !wait(killGrace) {
		hardStop()
		<-done
	}
}

// errShuttingDown refuses a new session while the router drains.
func errShuttingDown() *ClientError {
	ce := clientErr(codeCannotConnectNow, "the router is shutting down",
		"Connect again: another router instance (or this one, restarted) will take the session.", nil)
	ce.Outcome = OutcomeShutdown
	return ce
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// session is what one client connection's log line reports.
type session struct {
	tenant    string
	user      string // the startup packet's user name
	via       resolver.Via
	routed    bool
	cancelReq bool
	direct    bool  // on the direct endpoint (pgtenant.endpoint=direct)
	ownSecret bool  // logged in with the tenant's own secret (Auth.PerTenant)
	secretLen uint8 // of the client's cancel key: shortSecret, or longSecret for protocol 3.2
	upPID     uint32
	bytesIn   atomic.Int64 // client → upstream
	bytesOut  atomic.Int64 // upstream → client
	sni       string       // TLS server name the client sent

	killedBy *ClientError // why the router ended the routed session, if it did (metrics)

	// poll, when set, is the Serve's epoll set, where the session may wait
	// between messages without a goroutine (evrelay_linux.go).
	poll *poller

	// client and live are set once the client has its ReadyForQuery:
	// ServeConn then relays the session (see there why not serve).
	client net.Conn
	live   *liveSession
	pooled *pooledClient // set instead of a relay for a pooled session (pooled.go)
	// liveStore is live's memory for an unpooled session: allocated with
	// the session, as held sessions are most of the router's memory.
	liveStore liveSession
	cancel    issued // the session's entry in the cancel registry (unpooled)
	// ends are what the session holds (its connection slot, upstream
	// connection, cancel key, place in the registry), released in reverse
	// order by ServeConn once the session is over.
	ends []func()
}

// onEnd has f run when the session ends, before what was registered earlier.
func (s *session) onEnd(f func()) { s.ends = append(s.ends, f) }

// end releases what the session held, last registered first.
func (s *session) end() {
	for i := len(s.ends) - 1; i >= 0; i-- {
		s.ends[i]()
	}
	s.ends = nil
}

// ServeConn handles one client connection and always closes c. It blocks
// until either peer hangs up or ctx ends. The returned error is the one the
// session ended with (also logged); nil for a clean end.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	return s.serveConn(ctx, c, nil, nil)
}

// serveConn is ServeConn for Serve. With poll set, a plaintext session is
// handed to the event relay after its handshake and serveConn returns nil
// at once; with wg set, wg.Done runs when the session has ended, whenever
// that is. Serve's own hook, not ctx, then ends such a session on a hard
// stop.
func (s *Server) serveConn(ctx context.Context, c net.Conn, poll *poller, wg *sync.WaitGroup) error {
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	start := time.Now()
	sess := &session{poll: poll}
	var log *slog.Logger
	id := s.nextConn.Add(1)
	// The handshake (TLS, SCRAM, the upstream login, logging) runs deep
	// call chains. Run on this goroutine, they would grow its stack, which
	// then stays that size for the whole session; with many held, idle
	// sessions, stacks are most of the router's memory. So it runs on a
	// goroutine that ends with it, and this one relays on a stack that
	// stayed small.
	err := onFreshStack(func() error {
		log = s.log.With("conn", id, "remote", c.RemoteAddr().String())
		s.cfg.Metrics.connOpened()
		return s.serve(ctx, c, sess, log)
	})
	var ev *evRelay
	switch {
	case sess.pooled != nil:
		ev = &sess.pooled.ls.ev
	case sess.live != nil:
		ev = &sess.live.ev
	}
	if err == nil && ev != nil && ev.p != nil { // (Serve gave a poller only with wg = &s.conns: evRelay.end says Done to it)
		// No goroutine waits for the session from here: the last of its
		// directions to end does what follows relay or run below
		// (evRelay.end).
		stop() // if ctx ended already, c is closed and the relay ends at once
		ev.start(start, id)
		return nil
	}
	defer func() {
		stop()
		_ = c.Close()
		if wg != nil {
			wg.Done()
		}
	}()
	switch {
	case err == nil && sess.pooled != nil:
		err = sess.pooled.run(ctx)
		sess.killedBy = sess.pooled.ls.killed.Load()
	case err == nil && sess.live != nil:
		err = relay(sess.client, sess.live.upstream, sess.live)
		sess.killedBy = sess.live.killed.Load() // why the router ended it, if it did (metrics)
	}
	return s.ended(ctx, sess, log, start, err)
}

// ended releases what the session held, counts it and logs it. It is not
// part of ServeConn so that ServeConn's frame, which is on the stack for the
// whole relay, stays small: with it, the relay's call chain fits the
// goroutine's first 2 KiB stack (see ServeConn).
//
//go:noinline
func (s *Server) ended(ctx context.Context, sess *session, log *slog.Logger, start time.Time, err error) error {
	sess.end()
	s.cfg.Metrics.connClosed(s.outcome(ctx, sess, err), sess)

	switch {
	case sess.cancelReq:
		return err
	case !sess.routed && isQuietEOF(err):
		// A port probe, or psql hanging up to ask the user for a password.
		log.Debug("client left during startup", "tenant", sess.tenant, "err", err)
		return err
	}
	attrs := []any{
		"tenant", sess.tenant,
		"duration", time.Since(start).Round(time.Microsecond),
		"bytes_in", sess.bytesIn.Load(),
		"bytes_out", sess.bytesOut.Load(),
	}
	if sess.routed {
		attrs = append(attrs, "via", sess.via.String(), "upstream_pid", sess.upPID)
	}
	if sess.sni != "" {
		attrs = append(attrs, "sni", sess.sni)
	}
	if sess.direct {
		attrs = append(attrs, "endpoint", "direct")
	}
	if sess.ownSecret { // a person's own access to one tenant, worth telling apart
		attrs = append(attrs, "credential", CredentialTenant)
	}
	if err != nil && !(sess.routed && isQuietEOF(err)) && ctx.Err() == nil {
		attrs = append(attrs, "err", err)
		log.Warn("session failed", attrs...)
		return err
	}
	log.Info("session", attrs...)
	return nil
}

// onFreshStack runs f on a goroutine of its own and waits for it, so that
// f's call chains do not grow the caller's stack (see ServeConn).
func onFreshStack(f func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	return <-errc
}

// accept takes the next connection from ln. A failure that is not the
// listener's end (out of file descriptors and the like) is logged as what
// failed and retried after a backoff, as net/http does; the listener's end
// (ctx ended, or ln closed) is returned.
func (s *Server) accept(ctx context.Context, ln net.Listener, what string) (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err == nil || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
			return c, err
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		s.log.Warn(what+" failed; retrying", "err", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
	}
}

// isQuietEOF reports whether err only says that a peer went away.
func isQuietEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (s *Server) serve(ctx context.Context, c net.Conn, sess *session, log *slog.Logger) error {
	begin := time.Now()
	doneHandshake, err := s.enterHandshake() // Limits.MaxHandshakes (limits.go)
	if err != nil {
		return s.fail(c, err)
	}
	defer doneHandshake()
	s.cfg.KeepAlive.apply(c)
	_ = c.SetDeadline(time.Now().Add(s.cfg.handshakeTimeout()))
	var p startupPacket
	c, p, err = s.negotiate(c) // c: TLS from here on if the client asked
	if err != nil {
		return s.fail(c, err)
	}
	sess.sni = p.sni
	s.cfg.Metrics.handshakeDone(begin)
	if p.kind == kindCancel {
		sess.cancelReq = true
		if !s.lim.allowCancel(addrKey(c.RemoteAddr())) { // Limits.CancelRate (limits.go)
			s.cfg.Metrics.cancelRequest(CancelRateLimited)
			log.Debug("cancel request over the address's rate dropped", "pid", p.pid)
			return nil
		}
		s.handleCancel(ctx, p, log)
		return nil
	}
	if s.draining.Load() { // where Postgres says it during a shutdown: before authentication
		return s.fail(c, errShuttingDown())
	}

	user := p.params["user"]
	if user == "" {
		return s.fail(c, clientErr(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet",
			s.cfg.Tenant.noUserHint(), nil))
	}
	if v, ok := p.params["replication"]; ok {
		switch repl, valid := parseBool(v); {
		case v == "database" || valid && repl:
			return s.fail(c, clientErr(codeFeatureNotSupported, "replication connections are not supported by the pgtenant router",
				"Connect to the tenant's database directly for replication.", nil))
		case !valid:
			return s.fail(c, clientErr(codeInvalidParameterValue, fmt.Sprintf("invalid value for parameter \"replication\": %q", truncate(v, 32)),
				`Valid values are: "false", 0, "true", 1, "database".`, nil))
		}
	}
	tenant, err := s.cfg.Tenant.fromStartup(&p) // carriers.go; drops the tenant option
	if err != nil {
		return s.fail(c, err)
	}
	sess.tenant, sess.user = tenant, user

	// Protocol 3.2 as Postgres 18 speaks it (docs/protocol-3.2.md): a
	// client asking for 3.2 gets it (its only change is the cancel key's
	// length); one asking for a later 3.x, or for protocol options (none
	// are known), hears NegotiateProtocolVersion with the version it gets;
	// 3.1, which no Postgres ever spoke, goes on as 3.0 without one, as
	// Postgres does. The upstream hop stays 3.0: the client's key is ours.
	minor := min(p.minor, newestMinor)
	sess.secretLen = shortSecret
	if minor >= 2 {
		sess.secretLen = longSecret
	}
	if p.minor > newestMinor || len(p.protoOptions) > 0 {
		opts := p.protoOptions
		if opts == nil {
			opts = []string{}
		}
		// The full version number, as Postgres sends it (libpq 18 refuses a
		// bare minor as a downgrade to before 3.0).
		v := uint32(p.major)<<16 | uint32(minor)
		if err := writeMsgs(c, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: v, UnrecognizedOptions: opts}); err != nil {
			return err
		}
	}
	authStart := time.Now()
	// The exchange's last messages (AuthenticationOk) go with the greeting:
	// a session refused before it hears nothing a wrong password does not.
	authFinal, cred, err := s.authenticateClient(c, user, tenant) // with the auth backoff (limits.go)
	if err != nil {
		return s.fail(c, err)
	}
	sess.ownSecret = cred == CredentialTenant
	s.cfg.Metrics.authDone(authStart, cred)
	doneHandshake()
	releaseSlot, err := s.admit(tenant) // block list, connection caps (limits.go)
	if err != nil {
		return s.fail(c, err)
	}
	sess.onEnd(releaseSlot)
	direct, err := directEndpoint(p.params) // pooling.go; drops the endpoint option
	if err != nil {
		return s.fail(c, err)
	}
	sess.direct = direct
	mode, want, err := s.pooledStartup(tenant, direct, p.params) // pooling.go; drops the pool mode option
	if err != nil {
		return s.fail(c, err)
	}
	if mode != PoolOff {
		return s.servePooled(ctx, c, sess, log, tenant, mode, want, authFinal)
	}

	// Authenticated: only now may anything be resolved or created.
	cctx, cancel := context.WithTimeout(ctx, s.cfg.connectTimeout())
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(s.cfg.connectTimeout()))
	var up *pgconn.HijackedConn
	var rt resolver.Route
	up, rt, err = s.connectUpstream(cctx, tenant, p.params, direct)
	cancel() // now: its timer and its place among ctx's children would last the session
	if err != nil {
		return s.fail(c, hiddenTenant(err, user)) // errors.go
	}
	// Held sessions are most of the router's memory: nothing below keeps
	// up (its parameter map) alive past the greeting, only the connection.
	upConn := up.Conn
	ls := &sess.liveStore // one allocation for both
	ls.session, ls.remote, ls.start = sess, c.RemoteAddr().String(), stampOf(time.Now())
	evRelayed := canEventRelay(sess.poll, c, upConn)
	if evRelayed {
		// Serve's hook closes it on a hard stop (serveConn). Nothing but
		// the relay holds the connections: a cold session closes them
		// (evcold_linux.go).
		ls.ev.init(sess.poll, ls, c, upConn)
		sess.onEnd(ls.ev.closeUpstream)
	} else {
		ls.upstream = upConn
		stopUp := context.AfterFunc(ctx, func() { _ = upConn.Close() })
		sess.onEnd(func() { stopUp(); _ = upConn.Close() })
	}
	sess.routed, sess.via, sess.upPID = true, rt.Via, up.PID
	sess.onEnd(s.live.add(ls))
	if s.draining.Load() { // started draining while we connected
		return s.fail(c, errShuttingDown())
	}
	if s.isBlocked(tenant) { // blocked while we connected, after SetBlocked's sweep
		return s.fail(c, blockedError(tenant))
	}

	sess.cancel.target = cancelTarget{
		addr:      rt.Addr(),
		pid:       up.PID,
		secret:    up.SecretKey,
		tlsConfig: up.TLSConfig,
		dial:      s.dial,
	}
	key, release := s.cancels.registerIn(&sess.cancel, int(sess.secretLen))
	sess.onEnd(release)

	if err := greet(c, authFinal, up.ParameterStatuses, key, up.TxStatus); err != nil {
		return err
	}
	_ = c.SetDeadline(time.Time{}) // from here on liveness is TCP keepalive's job

	sess.live = ls
	if !evRelayed {
		sess.client = c
	}
	return nil
}

// relay pumps bytes both ways until one side ends (or the session is
// killed), then closes both and waits for the other pump. A clean end of
// either side returns nil.
func relay(client, upstream net.Conn, ls *liveSession) error {
	errc := make(chan error, 1)
	go func() {
		err := pumpToClient(client, upstream, ls)
		if err == errKilled {
			// Our ErrorResponse is on its way: half-close, and unblock the
			// other pump without resetting the connection under it.
			if tc, ok := client.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			_ = client.SetReadDeadline(time.Now())
		} else {
			_ = client.Close()
		}
		_ = upstream.Close()
		errc <- err
	}()
	err := pump(upstream, client, &ls.bytesIn)
	_ = client.Close()
	_ = upstream.Close()
	err2 := <-errc
	switch {
	case err2 == errKilled:
		return errKilled
	case isQuietEOF(err):
		err = nil
	}
	if err == nil && !isQuietEOF(err2) {
		err = err2
	}
	return err
}

// greet ends a client's login in one write: first, the authentication's
// last messages (authFinal: AuthenticationOk, after SCRAM's final message),
// then the server's parameters, the client's cancel key (the router's, see
// cancelKey) and ReadyForQuery.
func greet(c net.Conn, authFinal []byte, params map[string]string, key cancelKey, txStatus byte) error {
	buf := append(make([]byte, 0, len(authFinal)+32*len(params)+64), authFinal...)
	var err error
	for name, value := range params {
		if buf, err = (&pgproto3.ParameterStatus{Name: name, Value: value}).Encode(buf); err != nil {
			return err
		}
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: key.pid, SecretKey: key.secret}).Encode(buf)
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: txStatus}).Encode(buf)
	_, err = c.Write(buf)
	return err
}

// negotiate reads startup-phase packets until a StartupMessage or a
// CancelRequest. It terminates TLS as s.cfg.TLS says (after an SSLRequest,
// or at once for direct TLS) and declines GSS encryption; each may be asked
// once. It returns the connection to go on with: c, or TLS over c (also
// with an error, which must then be sent over it).
func (s *Server) negotiate(c net.Conn) (net.Conn, startupPacket, error) {
	c, r, err := s.tls.start(c)
	if err != nil {
		return c, startupPacket{}, err
	}
	_, sslAsked := c.(*tlsConn) // direct TLS
	gssAsked := false
	sr := &startupReader{r: r}
	for {
		body, err := sr.next(s.cfg.maxStartupPacket())
		if err != nil {
			return c, startupPacket{}, err
		}
		sr.r = c // the byte start peeked at is consumed
		if len(sr.pending) > 0 {
			// More came before we answered: data that should have waited
			// for TLS, or for authentication. Postgres refuses the first
			// ("received unencrypted data after SSL request").
			return c, startupPacket{}, clientErr(codeProtocolViolation,
				"the client sent more data before the router answered its startup packet", "", nil)
		}
		p, err := parseStartup(body)
		if err != nil {
			return c, startupPacket{}, err
		}
		switch p.kind {
		case kindSSLRequest:
			if sslAsked {
				return c, startupPacket{}, clientErr(codeProtocolViolation, "SSLRequest sent twice", "", nil)
			}
			sslAsked = true
			if c, err = s.tls.answerSSLRequest(c); err != nil {
				return c, startupPacket{}, err
			}
			sr.r = c
		case kindGSSENCRequest:
			if gssAsked {
				return c, startupPacket{}, clientErr(codeProtocolViolation, "GSSENCRequest sent twice", "", nil)
			}
			if _, encrypted := c.(*tlsConn); encrypted {
				// Postgres takes no GSSENCRequest once TLS is up either (it
				// reads one as protocol 1234.5680); answering 'N' would
				// leave the client waiting on an encryption it cannot get.
				return c, startupPacket{}, clientErr(codeProtocolViolation, "GSSENCRequest on a connection already encrypted with TLS", "", nil)
			}
			gssAsked = true
			if _, err := c.Write([]byte{'N'}); err != nil {
				return c, startupPacket{}, err
			}
		default:
			return c, p, s.tls.admit(c, &p)
		}
	}
}

// fail tells the client why its connection ends (when the cause is worth
// telling: not when the client itself went away) and returns err.
func (s *Server) fail(c net.Conn, err error) error {
	if isQuietEOF(err) {
		return err
	}
	var ce *ClientError
	var ne net.Error
	if !errors.As(err, &ce) && errors.As(err, &ne) && ne.Timeout() {
		err = clientErr(codeProtocolViolation,
			fmt.Sprintf("connection startup not completed within %s", s.cfg.handshakeTimeout()),
			"Check the client's network; the router closes connections that stall during startup.", err)
	}
	_ = c.SetWriteDeadline(time.Now().Add(time.Second)) // a stalled client cannot hold us
	if writeError(c, err) == nil {
		lingerClose(c, refuseLinger)
	}
	return err
}

// How long lingerClose waits: after a refusal, after a kill.
const (
	refuseLinger = 100 * time.Millisecond
	// A killed session's client may be busy elsewhere for a while before
	// it writes again; 1s proved short on a loaded machine (a client that
	// wrote 1s after its session was killed lost its 57P01 to the reset).
	killLinger = 3 * time.Second
)

// lingerClose half-closes c and discards what the client already sent, so
// that closing does not turn into a TCP reset that could destroy our
// ErrorResponse before the client reads it (as when a client sends more than
// the router read, e.g. an HTTP request).
//
// d bounds the wait: refusals at login linger briefly (the client reads
// our answer at once), a killed session longer (its client may be busy,
// and write again before it reads). A client that reads the error and
// hangs up ends it sooner.
func lingerClose(c net.Conn, d time.Duration) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, _ = io.CopyN(io.Discard, c, 1<<16)
}

// handleCancel delivers a CancelRequest: to the upstream, for a key this
// router issued; to the instance that issued it, for a key carrying
// another instance's ID when forwarding is on (cancel.go). Other keys are
// ignored, as Postgres does: the client gets no answer either way, so keys
// cannot be probed.
func (s *Server) handleCancel(ctx context.Context, p startupPacket, log *slog.Logger) {
	if s.cancelLocal(ctx, p.pid, p.secret, log) {
		return
	}
	if owner, ok := keyOwner(p.pid, p.secret); ok && owner != s.cfg.InstanceID && s.fwd != nil {
		s.fwd.forward(ctx, owner, p.pid, p.secret, log)
		return
	}
	s.cfg.Metrics.cancelRequest("unknown")
	log.Debug("cancel request with unknown key ignored", "pid", p.pid)
}

// cancelLocal sends a CancelRequest to the upstream of the key (pid,
// secret) if this router issued it, and reports whether it did (nothing is
// counted when it did not).
func (s *Server) cancelLocal(ctx context.Context, pid uint32, secret []byte, log *slog.Logger) bool {
	t, ok := s.cancels.lookup(pid, secret)
	if !ok {
		return false
	}
	if t.follow != nil { // a pooled client: cancel on the connection it holds now
		cur := t.follow.Load()
		if cur == nil {
			s.cfg.Metrics.cancelRequest("unknown")
			log.Debug("cancel request for a pooled client between transactions ignored", "pid", pid)
			return true
		}
		t = *cur
	}
	if err := t.send(ctx); err != nil {
		s.cfg.Metrics.cancelRequest("failed")
		log.Warn("cancel request not delivered", "pid", pid, "err", err)
		return true
	}
	s.cfg.Metrics.cancelRequest("forwarded")
	log.Debug("cancel request forwarded", "pid", pid, "upstream", t.addr)
	return true
}

// connectUpstream resolves tenant and logs in to its database (its direct
// endpoint when direct), through routed.
func (s *Server) connectUpstream(ctx context.Context, tenant string, params map[string]string, direct bool) (*pgconn.HijackedConn, resolver.Route, error) {
	return routed(ctx, s, tenant, nil, func(rt resolver.Route) (*pgconn.HijackedConn, resolver.Route, error) {
		if direct {
			rt.Host = provision.DirectHost(rt.Host)
		}
		dialStart := time.Now()
		hj, err := s.login(ctx, rt, s.upstreamOf(rt).upstreamParams(params, rt.Host))
		if err == nil {
			s.cfg.Metrics.upstreamConnected(dialStart)
		}
		return hj, rt, err
	})
}

// routed runs try on tenant's route: known, if set (a route resolved a
// moment ago), else a resolved one. A route whose upstream cannot be
// reached or refuses the router's login is invalidated and try runs once
// more on a route resolved afresh (the catalog may have newer credentials,
// or the cache an old address). try may adjust the route it is given (the
// one returned); a *ClientError from it ends the attempts as it is, other
// errors reach the client through upstreamError. (The route goes in and out
// by value: a pointer to it would move it to the heap, once per pooled
// transaction.)
func routed[T any](ctx context.Context, s *Server, tenant string, known *resolver.Route, try func(resolver.Route) (T, resolver.Route, error)) (T, resolver.Route, error) {
	var zero T
	var lastErr error
	for attempt := range 2 {
		if attempt > 0 {
			s.res.Invalidate(tenant)
		}
		var rt resolver.Route
		if attempt == 0 && known != nil {
			rt = *known
		} else {
			resolveStart := time.Now()
			var err error
			rt, err = s.res.Resolve(ctx, tenant)
			s.cfg.Metrics.resolved(resolveStart, rt, err)
			if err != nil {
				return zero, rt, resolveError(ctx, tenant, err)
			}
		}
		v, rt, err := try(rt)
		if err == nil {
			return v, rt, nil
		}
		var ce *ClientError
		if errors.As(err, &ce) {
			return zero, rt, err
		}
		lastErr = upstreamError(tenant, rt, err)
		if ctx.Err() != nil || !retryableUpstream(err) {
			break
		}
	}
	return zero, resolver.Route{}, lastErr
}

// retryableUpstream reports whether a failed upstream login may succeed with
// a freshly resolved route.
func retryableUpstream(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "28"), pgErr.Code == "3D000":
			return true // stale credentials or database
		}
		return false
	}
	return true // network-level failure
}

func upstreamError(tenant string, rt resolver.Route, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if strings.HasPrefix(pgErr.Code, "28") {
			return clientErr(codeCannotConnect,
				fmt.Sprintf("the database of tenant %q refused the router's login", tenant),
				"The router's stored credentials for this tenant are out of date; ask an operator to re-provision the tenant.", err)
		}
		// The upstream's own refusal (too many connections, shutting down, ...)
		// is meaningful to the client as it is. Some proxies (Neon's) send
		// no SQLSTATE at all: the client still gets one.
		code := pgErr.Code
		if len(code) != 5 {
			code = codeCannotConnect
		}
		return &ClientError{Code: code, Msg: "upstream: " + pgErr.Message, Hint: pgErr.Hint, Err: err}
	}
	return clientErr(codeConnectionFailure,
		fmt.Sprintf("cannot connect to the database of tenant %q at %s", tenant, rt.Addr()),
		"The tenant's database server is unreachable; retry in a moment.", err)
}

func resolveError(ctx context.Context, tenant string, err error) error {
	var ce *ClientError
	switch {
	case errors.As(err, &ce):
		return ce // the resolver's wrapper said what to tell the client
	case errors.Is(err, resolver.ErrCreating):
		return creatingError(tenant, err) // errors.go
	case errors.Is(err, resolver.ErrCreateFailed):
		return createFailedError(tenant, err) // errors.go
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return clientErr(codeCannotConnectNow,
			fmt.Sprintf("the database of tenant %q is not ready yet", tenant),
			"It is probably still being created; retry in a few seconds.", err)
	case errors.Is(err, resolver.ErrUnknownTenant) && errors.Is(err, provision.ErrTenantNotFound):
		return noRouteError(tenant, err) // errors.go
	case errors.Is(err, resolver.ErrUnknownTenant):
		return clientErr(codeInvalidAuthSpec,
			fmt.Sprintf("tenant %q does not exist", tenant),
			"This router does not create tenants on connect; ask an operator to create it.", err)
	case errors.Is(err, resolver.ErrCreateLimit):
		return createLimitError(tenant, err) // errors.go
	case errors.Is(err, resolver.ErrCatalog):
		return clientErr(codeCannotConnectNow,
			"the router cannot read its tenant catalog right now",
			"Retry in a few seconds; if it persists, the router's log says why.", err)
	}
	return clientErr(codeCannotConnectNow,
		fmt.Sprintf("the database of tenant %q could not be created right now", tenant),
		"Retry in a few seconds; if it persists, the router's log says why.", err)
}
