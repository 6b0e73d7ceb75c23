package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Limits caps what clients may hold and throttles failed logins. The zero
// value limits nothing. Set it in Config.Limits and change it at runtime
// with Server.SetLimits; a lowered cap refuses new connections but never
// ends established ones.
type Limits struct {
	// MaxConnections caps the router's authenticated connections: routed
	// sessions plus those still being routed. Zero or negative: no cap.
	// Over it a client gets 53300 "router connection limit (N) reached".
	MaxConnections int
	// MaxConnectionsPerTenant caps each tenant's authenticated connections.
	// Zero or negative: no cap. Over it a client gets 53300 "too many
	// connections for tenant "x" (limit N)". A slot is taken only after the
	// client authenticated, and given back when its connection ends.
	MaxConnectionsPerTenant int
	// PerTenantSource, when set, says where MaxConnectionsPerTenant comes
	// from, for the refusal's message (e.g. this instance's share of a
	// cluster-wide cap).
	PerTenantSource string
	// MaxHandshakes caps the connections that have not finished
	// authenticating (startup, TLS, SCRAM; cancel requests included). Zero or
	// negative: no cap. Over it a new connection is refused at once, before
	// anything is read from it, with 53300 "too many connections starting up
	// (limit N)".
	MaxHandshakes int
	// AuthBackoff throttles a client address for a tenant after failed
	// authentication.
	AuthBackoff AuthBackoff
	// CancelRate caps the CancelRequests taken from one client address
	// (IPv6: per /64, as AuthBackoff counts) per second, so that cancel
	// keys cannot be guessed by flooding: a token bucket of CancelBurst
	// refilled at CancelRate a second. A request over it is dropped
	// silently (the connection closed, as for an unknown key) and counted
	// as rate_limited in Metrics.CancelRequests. Zero or negative: no cap.
	CancelRate int
	// CancelBurst is how many CancelRequests an address may send at once
	// before CancelRate applies. Zero or negative means CancelRate.
	CancelBurst int
	// IdleTimeout ends a session whose client has sent nothing for that long
	// while its upstream waited for it (after a ReadyForQuery), as Postgres'
	// idle_session_timeout: FATAL 57P05, or 25P03 inside a transaction. It is
	// checked by a sweeper that Serve runs, every tenth of IdleTimeout (at
	// least 10ms, at most 10s), so a session ends between IdleTimeout and 1.2
	// times it. Zero or negative: off.
	IdleTimeout time.Duration
}

// AuthBackoff throttles brute-force attempts on the app secret. It counts
// failed authentications per (client address, tenant) — not per address
// alone, as many clients may share one behind NAT; IPv6 addresses count per
// /64. After Threshold failures the pair is refused for Initial, and each
// further failure doubles that, up to Max; one success clears the count.
// While refused, a client gets 28P01 "too many failed authentication
// attempts" before it is asked for its password, so the answer is the same
// whether its password is right or not. The zero value is off.
type AuthBackoff struct {
	// Threshold is the number of failures that starts the refusals. Zero or
	// negative: off.
	Threshold int
	// Initial is the first refusal period. Zero or negative means 1s.
	Initial time.Duration
	// Max caps the refusal period. Zero or negative means 1m (and never
	// less than Initial).
	Max time.Duration
	// Window is how long after the last failure (or the end of its
	// refusal) the failures are forgotten. Zero or negative means 10m.
	Window time.Duration
}

func (b *AuthBackoff) initial() time.Duration {
	if b.Initial <= 0 {
		return time.Second
	}
	return b.Initial
}

func (b *AuthBackoff) max() time.Duration {
	m := b.Max
	if m <= 0 {
		m = time.Minute
	}
	return max(m, b.initial())
}

func (b *AuthBackoff) window() time.Duration {
	if b.Window <= 0 {
		return 10 * time.Minute
	}
	return b.Window
}

// delay is the refusal period after the n-th failure (n >= Threshold).
func (b *AuthBackoff) delay(n int) time.Duration {
	d, m := b.initial(), b.max()
	for i := b.Threshold; i < n && d < m; i++ {
		d *= 2
	}
	return min(d, m)
}

func (l *Limits) cancelBurst() int {
	if l.CancelBurst <= 0 {
		return l.CancelRate
	}
	return l.CancelBurst
}

// KeepAlive configures TCP keepalives on client connections and on upstream
// connections made by the default dialer (Config.DialUpstream nil). They
// find peers that vanished without closing (a dropped NAT mapping, a
// crashed host): the session then ends after Idle + Interval*Count.
type KeepAlive struct {
	// Idle is how long a connection is idle before the first probe. Zero
	// means 60s; negative turns keepalives off.
	Idle time.Duration
	// Interval is the time between probes. Zero or negative means 10s.
	Interval time.Duration
	// Count is how many unanswered probes drop the connection. Zero or
	// negative means 6.
	Count int
	// SetByListener says the client connections come from a listener whose
	// socket carries these keepalives already (Linux copies a listening
	// socket's keepalive options to the sockets it accepts): ServeConn
	// then leaves them alone, four system calls fewer per connection.
	SetByListener bool
}

// Config returns the keepalives as the net package takes them (Enable
// false when they are off).
func (k KeepAlive) Config() net.KeepAliveConfig {
	if k.Idle < 0 {
		return net.KeepAliveConfig{}
	}
	c := net.KeepAliveConfig{Enable: true, Idle: k.Idle, Interval: k.Interval, Count: k.Count}
	if c.Idle == 0 {
		c.Idle = 60 * time.Second
	}
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.Count <= 0 {
		c.Count = 6
	}
	return c
}

// apply sets the keepalives of a client connection, unless its listener
// did.
func (k KeepAlive) apply(c net.Conn) {
	if k.SetByListener {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(k.Config())
	}
}

// Dialer returns a net.Dialer with a 10s connect timeout and these
// keepalives: the default upstream dialer.
func (k KeepAlive) Dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAliveConfig: k.Config()}
	if !d.KeepAliveConfig.Enable {
		d.KeepAlive = -1
	}
	return d
}

// backoffEntries caps the remembered (address, tenant) pairs. The least
// recently failed pair is forgotten first; an attacker would have to fail
// this many logins to push its own pair out.
const backoffEntries = 1 << 16

// cancelEntries caps the client addresses whose CancelRequest budget is
// remembered; the least recently seen is forgotten first (it gets a full
// burst again, which an attacker with that many addresses has anyway).
const cancelEntries = 1 << 16

// tlsRetryWindow is how soon after a failed login over TLS a failed login
// in plaintext from the same address for the same tenant counts as the
// same failure: libpq with sslmode=prefer (the default) retries a refused
// TLS login in plaintext at once, with the same password.
const tlsRetryWindow = time.Second

// limiter holds the state of Limits and of the block list. Its counters are
// guarded by short critical sections without I/O.
type limiter struct {
	now     func() time.Time
	limits  atomic.Pointer[Limits]
	blocked atomic.Pointer[map[string]struct{}] // SetBlocked's; empty at first
	wake    chan struct{}                       // pokes the sweeper after SetLimits
	// sweepMu keeps two sweepers (Serve on two listeners) from racing on
	// the sessions' sweeper-only idle fields.
	sweepMu sync.Mutex

	handshakes atomic.Int64

	mu struct {
		sync.Mutex
		total     int            // guarded by mu
		perTenant map[string]int // guarded by mu
	}

	backoff struct {
		sync.Mutex
		lru *simplelru.LRU[backoffKey, backoffEntry] // guarded by backoff
	}

	cancels struct {
		sync.Mutex
		lru *simplelru.LRU[string, cancelBucket] // by addrKey; guarded by cancels
	}
}

// cancelBucket is a client address's CancelRequest budget: tokens as of at.
type cancelBucket struct {
	tokens float64
	at     time.Time
}

type backoffKey struct{ addr, tenant string }

type backoffEntry struct {
	failures    int
	last, until time.Time
	// tlsFailed is when the last failure over TLS was, while a plaintext
	// retry of it may still come (zero: none pending; see tlsRetryWindow).
	tlsFailed time.Time
}

// forgetAt is when e no longer matters.
func (e backoffEntry) forgetAt(b *AuthBackoff) time.Time {
	if e.until.After(e.last) {
		return e.until.Add(b.window())
	}
	return e.last.Add(b.window())
}

func newLimiter(cfg *Config) *limiter {
	l := &limiter{now: cfg.Now, wake: make(chan struct{}, 1)}
	if l.now == nil {
		l.now = time.Now
	}
	lim := cfg.Limits
	l.limits.Store(&lim)
	l.blocked.Store(&map[string]struct{}{})
	l.mu.perTenant = make(map[string]int)
	cache, err := simplelru.NewLRU[backoffKey, backoffEntry](backoffEntries, nil)
	if err != nil {
		panic("proxy: " + err.Error()) // unreachable: the size is positive
	}
	l.backoff.lru = cache
	cancels, err := simplelru.NewLRU[string, cancelBucket](cancelEntries, nil)
	if err != nil {
		panic("proxy: " + err.Error()) // unreachable: the size is positive
	}
	l.cancels.lru = cancels
	return l
}

// SetLimits replaces the limits at once. Connections already admitted stay;
// the new caps apply to the next ones. Safe for concurrent use.
func (s *Server) SetLimits(l Limits) {
	s.lim.limits.Store(&l)
	select {
	case s.lim.wake <- struct{}{}:
	default:
	}
}

// Limits returns the limits in force. Safe for concurrent use.
func (s *Server) Limits() Limits { return *s.lim.limits.Load() }

// SetBlocked replaces the block list (empty until the first call): the
// list is whatever was given last; the router package owns what belongs on
// it. A blocked tenant's new connections are refused after
// authentication with 28000 "tenant "x" is blocked", and its live sessions
// are ended at once with FATAL 57P01 ("terminating connection because tenant
// "x" was blocked by an administrator") at a message boundary. Unblocking
// lets new connections in again. It does not wait for the sessions to end.
// Safe for concurrent use.
func (s *Server) SetBlocked(tenants []string) {
	set := setOfTenants(tenants)
	// Store first: a session registering after the sweep below sees the new
	// set when it checks again (serve does, after registering).
	s.lim.blocked.Store(&set)
	if len(set) == 0 {
		return
	}
	var ended atomic.Int64
	s.live.each("", func(ls *liveSession) {
		if _, ok := set[ls.tenant]; ok {
			ended.Add(1)
			ls.kill(&ClientError{Code: CodeAdminShutdown,
				Msg: fmt.Sprintf("terminating connection because tenant %q was blocked by an administrator", ls.tenant)})
		}
	})
	if n := ended.Load(); n > 0 {
		s.log.Info("blocked tenants' sessions ended", "sessions", n, "blocked", len(set))
	}
}

// Blocked returns the blocked tenants, SetBlocked's last list, sorted. Safe for concurrent use.
func (s *Server) Blocked() []string {
	set := *s.lim.blocked.Load()
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

func (s *Server) isBlocked(tenant string) bool {
	_, ok := (*s.lim.blocked.Load())[tenant]
	return ok
}

func setOfTenants(tenants []string) map[string]struct{} {
	set := make(map[string]struct{}, len(tenants))
	for _, t := range tenants {
		set[t] = struct{}{}
	}
	return set
}

func blockedError(tenant string) *ClientError {
	ce := clientErr(codeInvalidAuthSpec, fmt.Sprintf("tenant %q is blocked", tenant),
		"An administrator blocked this tenant; connections are refused until it is unblocked.", nil)
	ce.Outcome = OutcomeBlocked
	return ce
}

// enterHandshake takes a handshake slot; release gives it back and may be
// called more than once.
func (s *Server) enterHandshake() (release func(), err error) {
	n := s.lim.handshakes.Add(1)
	if m := s.lim.limits.Load().MaxHandshakes; m > 0 && n > int64(m) {
		s.lim.handshakes.Add(-1)
		return func() {}, clientErr(codeTooManyConnections,
			fmt.Sprintf("too many connections starting up (limit %d)", m),
			"The router is busy accepting connections; retry in a moment.", nil)
	}
	var once sync.Once
	return func() { once.Do(func() { s.lim.handshakes.Add(-1) }) }, nil
}

// admit lets an authenticated client in for tenant, or says why not: the
// block list, then the connection caps. release gives the slot back.
func (s *Server) admit(tenant string) (release func(), err error) {
	if s.isBlocked(tenant) {
		return nil, blockedError(tenant)
	}
	l := s.lim.limits.Load()
	m := &s.lim.mu
	m.Lock()
	n := m.perTenant[tenant]
	switch {
	case l.MaxConnections > 0 && m.total >= l.MaxConnections:
		m.Unlock()
		return nil, clientErr(codeTooManyConnections,
			fmt.Sprintf("router connection limit (%d) reached", l.MaxConnections),
			"Close idle connections or use a connection pool, then retry.", nil)
	case l.MaxConnectionsPerTenant > 0 && n >= l.MaxConnectionsPerTenant:
		m.Unlock()
		limit := strconv.Itoa(l.MaxConnectionsPerTenant)
		if l.PerTenantSource != "" {
			limit += ": " + l.PerTenantSource
		}
		return nil, clientErr(codeTooManyConnections,
			fmt.Sprintf("too many connections for tenant %q (limit %s)", tenant, limit),
			"Close idle connections of this tenant or use a connection pool, then retry.", nil)
	}
	m.total++
	m.perTenant[tenant] = n + 1
	m.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.Lock()
			m.total--
			if n := m.perTenant[tenant] - 1; n > 0 {
				m.perTenant[tenant] = n
			} else {
				delete(m.perTenant, tenant)
			}
			m.Unlock()
		})
	}, nil
}

// authenticateClient authenticates c for tenant under the auth backoff: a
// throttled (address, tenant) is refused before it is asked for a password,
// a wrong password counts as a failure and a success clears the failures.
// On success it returns the exchange's final messages, for greet to send,
// and the credential the client used (Credential*).
func (s *Server) authenticateClient(c net.Conn, user, tenant string) ([]byte, string, error) {
	b := s.lim.limits.Load().AuthBackoff
	if b.Threshold <= 0 {
		return s.auth.authenticate(c, user, tenant, s.cfg.maxStartupPacket())
	}
	key := backoffKey{addr: addrKey(c.RemoteAddr()), tenant: tenant}
	if wait := s.lim.throttled(key); wait > 0 {
		secs := (wait + time.Second - 1) / time.Second
		return nil, "", clientErr(codeInvalidPassword,
			fmt.Sprintf("too many failed authentication attempts for tenant %q from this address; retry in %ds", tenant, secs),
			"After repeated wrong passwords the router refuses an address for a while, longer after each further failure. Check the app secret.", nil)
	}
	final, cred, err := s.auth.authenticate(c, user, tenant, s.cfg.maxStartupPacket())
	var ce *ClientError
	switch {
	case err == nil:
		s.lim.authSucceeded(key)
	case errors.As(err, &ce) && ce.Code == codeInvalidPassword:
		_, overTLS := c.(*tlsConn)
		s.lim.authFailed(key, &b, overTLS)
	}
	return final, cred, err
}

// throttled returns how long key is still refused (0: not refused).
func (l *limiter) throttled(key backoffKey) time.Duration {
	now := l.now()
	l.backoff.Lock()
	defer l.backoff.Unlock()
	e, ok := l.backoff.lru.Peek(key)
	if !ok || !now.Before(e.until) {
		return 0
	}
	return e.until.Sub(now)
}

// authFailed counts a failed login of key, made over TLS or not. A
// plaintext failure within tlsRetryWindow of a TLS one is libpq's
// sslmode=prefer retry of the same login: it is not counted again, so
// that one typo is one failure.
func (l *limiter) authFailed(key backoffKey, b *AuthBackoff, overTLS bool) {
	now := l.now()
	l.backoff.Lock()
	defer l.backoff.Unlock()
	e, ok := l.backoff.lru.Peek(key)
	if ok && now.After(e.forgetAt(b)) {
		e = backoffEntry{}
	}
	retry := !overTLS && !e.tlsFailed.IsZero() && !now.Before(e.tlsFailed) && now.Sub(e.tlsFailed) <= tlsRetryWindow
	e.tlsFailed = time.Time{}
	if overTLS {
		e.tlsFailed = now
	}
	if retry {
		e.last = now
		l.backoff.lru.Add(key, e)
		return
	}
	e.failures++
	e.last = now
	if e.failures >= b.Threshold {
		e.until = now.Add(b.delay(e.failures))
	}
	l.backoff.lru.Add(key, e)
}

func (l *limiter) authSucceeded(key backoffKey) {
	l.backoff.Lock()
	l.backoff.lru.Remove(key)
	l.backoff.Unlock()
}

// sweepBackoff forgets the pairs whose failures no longer matter, oldest
// failure first.
func (l *limiter) sweepBackoff(now time.Time) {
	b := l.limits.Load().AuthBackoff
	l.backoff.Lock()
	defer l.backoff.Unlock()
	for {
		k, e, ok := l.backoff.lru.GetOldest()
		if !ok || !now.After(e.forgetAt(&b)) {
			return
		}
		l.backoff.lru.Remove(k)
	}
}

// allowCancel reports whether a CancelRequest from addr (an addrKey) is
// within Limits.CancelRate, and takes it from the address's budget if so.
func (l *limiter) allowCancel(addr string) bool {
	lim := l.limits.Load()
	if lim.CancelRate <= 0 {
		return true
	}
	rate, burst := float64(lim.CancelRate), float64(lim.cancelBurst())
	now := l.now()
	l.cancels.Lock()
	defer l.cancels.Unlock()
	b, ok := l.cancels.lru.Get(addr)
	if !ok {
		b.tokens = burst
	} else if d := now.Sub(b.at); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
	}
	b.tokens = min(b.tokens, burst) // the burst may have been lowered
	b.at = now
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	l.cancels.lru.Add(addr, b)
	return allowed
}

// sweepCancels forgets the addresses whose budget has refilled: they are
// as good as new.
func (l *limiter) sweepCancels(now time.Time) {
	lim := l.limits.Load()
	l.cancels.Lock()
	defer l.cancels.Unlock()
	if lim.CancelRate <= 0 {
		l.cancels.lru.Purge()
		return
	}
	full := time.Duration(float64(lim.cancelBurst()) / float64(lim.CancelRate) * float64(time.Second))
	for {
		k, b, ok := l.cancels.lru.GetOldest()
		if !ok || now.Sub(b.at) < full {
			return
		}
		l.cancels.lru.Remove(k)
	}
}

// addrKey is the client address the auth backoff and the cancel rate count by: the IPv4
// address, or the /64 of an IPv6 one (a host often has a whole /64).
func addrKey(a net.Addr) string {
	if a == nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.WithZone("").Prefix(64)
	if err != nil {
		return ip.String()
	}
	return p.String()
}
