package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/resolver"
)

// resetTimeout bounds the reset of a server connection a client gave back.
const resetTimeout = 5 * time.Second

// terminateMsg is the client's Terminate, which a pooled client's server
// connection must not see.
var terminateMsg = []byte{'X', 0, 0, 0, 4}

// pooledClient is a client whose server connections are borrowed from the
// pool: for its whole session (session mode) or for each transaction.
//
// Two goroutines relay: run reads the client and writes to the server it
// holds, borrowing one first when it holds none; pumpServer (one per
// borrowed connection) writes the server's replies to the client and, in
// transaction mode, gives the connection back at a ReadyForQuery 'I' once
// every request is answered. mu orders the two on the connection's
// state: run counts a request before it writes it, so pumpServer never
// gives back a connection something is still in flight on.
type pooledClient struct {
	s      *Server
	mode   PoolMode
	client net.Conn
	tenant string
	ls     *liveSession
	log    *slog.Logger
	// defaults says the first borrow is yet to add the login's defaults
	// to want.
	defaults bool
	// tag fingerprints want (0: not yet computed), for pool.Server.Tag.
	tag uint64
	// rt is the route borrowed on last, resolved at rtAt; key is its
	// pool's (setRoute).
	rt   resolver.Route
	rtAt time.Time
	key  pool.Key
	// tls is the upstream TLS configuration of rt's host (for cancels).
	tls                           *tls.Config
	tlsHost, tlsProvider, tlsMode string

	// current is the cancel target of the connection held now (nil: none),
	// for the client's cancel key; targets, those of the connections held
	// last, most recent first, so that a transaction on one of them does
	// not make its target again. Under mu.
	current atomic.Pointer[cancelTarget]
	targets [4]*cancelTarget

	mu   sync.Mutex
	want map[string]setting // what the client's session says; pumpServer updates it from ParameterStatus
	conn *pool.Conn         // the connection held; nil between transactions
	tr   pool.Tracker       // the server's replies since conn was borrowed
	base int64              // tr.Ready() when it was
	reqs pool.Requests      // the client's requests since then
	// dirty marks conn as not reusable whatever the counts say (a
	// Terminate that could not be held back whole).
	dirty    bool
	stopping bool           // run has ended the session: pumpServer must stop, not give back
	done     chan serverEnd // the running pumpServer's end
	pausing  bool           // run needs the connection to itself for a moment: pumpServer must stop
	progress chan struct{}  // pumpServer passed on some replies (for run waiting for quiet)

	// Transaction mode: the client's named statements (stmts.go), run's
	// alone.
	rw        *stmtRewriter
	unnamedOK bool // the held connection's unnamed statement is the client's
	scratch   []byte
	need      []*statement
	bctx      *borrowCtx // the last borrow's context, reused if nothing waited on it

	// stopRead tells the client's reader, when the event relay runs it
	// (evrelay_linux.go), that the deadline it hit was endClient's.
	stopRead atomic.Bool
}

// serverEnd is why a pumpServer ended.
type serverEnd struct {
	kind int
	err  error
}

const (
	endReturned   = iota // transaction over: the connection went back to its pool
	endStopped           // run ended the session and stopped the pump
	endPaused            // run stopped the pump to talk to the server itself
	endKilled            // the session was killed and the client told why
	endClientGone        // writing to the client failed
	endServerGone        // the server connection failed or closed
)

// servePooled finishes a pooled client's login: it borrows a server
// connection, applies the client's settings, greets the client with the
// server's parameters and its own cancel key, and leaves the session to
// ServeConn (sess.pooled), holding the connection in session mode and
// having given it back in transaction mode.
func (s *Server) servePooled(ctx context.Context, c net.Conn, sess *session, log *slog.Logger, tenant string, mode PoolMode, want map[string]setting, authFinal []byte) error {
	pc := &pooledClient{s: s, mode: mode, client: c, tenant: tenant, want: want, log: log}
	pc.tr.OnParameter = pc.onParameter
	pc.defaults = true
	pc.progress = make(chan struct{}, 1)
	if mode == PoolTransaction {
		pc.rw = &stmtRewriter{}
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.connectTimeout())
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(s.cfg.connectTimeout()))
	resolveStart := time.Now()
	rt, err := s.res.Resolve(cctx, tenant) // creates the tenant on its first connect
	s.cfg.Metrics.resolved(resolveStart, rt, err)
	if err != nil {
		cancel()
		return s.fail(c, hiddenTenant(resolveError(cctx, tenant, err), sess.user)) // errors.go
	}
	pc.setRoute(rt)
	// In transaction mode a client that asks what an earlier one asked
	// (the usual case: one app, one driver) is greeted with what that one
	// was told, and borrows only for its first transaction.
	gk := greetingKey{pc.key, settingsTag(want)}
	var conn *pool.Conn
	var g *greeting
	if mode == PoolTransaction {
		if g, _ = s.greetings.Get(gk); g != nil && time.Since(g.at) > greetingTTL {
			g = nil // the server's own settings may have changed (ALTER DATABASE ... SET)
		}
	}
	switch {
	case g == nil && mode == PoolTransaction:
		// A tenant's clients connecting at once share one borrow for the
		// greeting: without it each logs in upstream when the tenant has
		// no idle server connection (BENCHMARKS.md §9).
		led := false
		v, err, _ := s.greetFlight.Do(gk.flightKey(), func() (any, error) {
			led = true
			conn, _, err := pc.borrow(cctx)
			if err != nil {
				return nil, err
			}
			g := &greeting{params: maps.Clone(conn.Params), pid: conn.PID, at: time.Now()}
			s.greetings.Add(gk, g)
			conn.Release(conn.TxStatus == 'I')
			return g, nil
		})
		if err != nil {
			cancel()
			return s.fail(c, err)
		}
		g = v.(*greeting)
		if !led {
			pc.defaults = false // as for a cached greeting
		}
	case g == nil:
		if conn, _, err = pc.borrow(cctx); err != nil {
			cancel()
			return s.fail(c, err)
		}
		g = &greeting{params: maps.Clone(conn.Params), pid: conn.PID, at: time.Now()}
	default:
		pc.defaults = false // the greeting says the login's defaults
	}
	cancel()
	// The client keeps what it is told now of the settings it may change.
	for k, v := range g.params {
		if lk := strings.ToLower(k); trackedParams[lk] {
			pc.want[lk] = setting{k, v}
		}
	}
	pc.tag = 0
	sess.routed, sess.via, sess.upPID = true, rt.Via, g.pid
	ls := &sess.liveStore // one allocation for both
	ls.session, ls.remote, ls.start, ls.wake = sess, c.RemoteAddr().String(), stampOf(time.Now()), pc.wake
	pc.ls = ls
	// In transaction mode the client's reader may wait without a goroutine
	// (a session-mode client holds a server connection, and its pump's
	// goroutine, throughout). Set up before kill can see the session.
	if mode == PoolTransaction && canEventRelay(sess.poll, c) {
		ls.ev.initPooled(sess.poll, ls, pc)
	}
	sess.onEnd(s.live.add(ls))
	giveBack := func() {
		if conn != nil {
			conn.Release(conn.TxStatus == 'I')
		}
	}
	if s.draining.Load() {
		giveBack()
		return s.fail(c, errShuttingDown())
	}
	if s.isBlocked(tenant) {
		giveBack()
		return s.fail(c, blockedError(tenant))
	}
	key, release := s.cancels.register(cancelTarget{pid: g.pid, follow: &pc.current}, int(sess.secretLen))
	sess.onEnd(release)

	if err := greet(c, authFinal, g.params, key, 'I'); err != nil {
		giveBack()
		return err
	}
	_ = c.SetDeadline(time.Time{})
	if mode == PoolTransaction {
		giveBack()
	} else {
		pc.mu.Lock()
		pc.attachLocked(conn, rt, true)
		pc.mu.Unlock()
	}
	sess.client, sess.pooled = c, pc
	return nil
}

// greeting is what a pooled client is told at login: the server's
// parameters (its settings applied) and a backend pid for its cancel key.
type greeting struct {
	params map[string]string
	pid    uint32
	at     time.Time
}

// greetingTTL is how long a greeting is told to other clients.
const greetingTTL = time.Minute

// greetingKey is a route's pool and a client's settings (settingsTag).
type greetingKey struct {
	pool pool.Key
	tag  uint64
}

// flightKey names k in Server.greetFlight.
func (k greetingKey) flightKey() string {
	return k.pool.Tenant + "\x00" + k.pool.Server + "\x00" + k.pool.Database + "\x00" + k.pool.User + "\x00" + strconv.FormatUint(k.tag, 16)
}

// maxGreetings bounds the greetings kept (a few hundred bytes each).
const maxGreetings = 4096

// borrow takes a server connection for the client and applies its
// settings to it.
func (pc *pooledClient) borrow(ctx context.Context) (*pool.Conn, resolver.Route, error) {
	var known *resolver.Route
	if time.Since(pc.rtAt) < routeReuse {
		known = &pc.rt
	}
	conn, rt, err := pc.s.acquire(ctx, pc.tenant, known, pc.key)
	if err != nil {
		return nil, rt, err
	}
	if known == nil {
		pc.setRoute(rt)
	}
	if pc.defaults {
		// What the client did not ask for of the settings it may change
		// is the login's default, not what an earlier client left.
		pc.defaults = false
		for k, v := range conn.Login {
			if lk := strings.ToLower(k); trackedParams[lk] {
				if _, asked := pc.want[lk]; !asked {
					pc.want[lk] = setting{k, v}
				}
			}
		}
	}
	if pc.tag == 0 {
		pc.tag = settingsTag(pc.want)
	}
	if conn.Tag != pc.tag { // else it holds this client's settings already
		if err := applySettings(ctx, conn, pc.want); err != nil {
			conn.Release(false)
			return nil, rt, settingError(err)
		}
		conn.Tag = pc.tag
	}
	return conn, rt, nil
}

// borrowCtx is the context of a transaction's borrow: what
// context.WithTimeout(parent, connectTimeout) would be, the deadline taken
// when the borrow begins, without what that costs (a timer, a child
// registered on the context all sessions share, four allocations) unless
// something waits on it. A borrow that finds an idle connection already
// holding the client's settings, nearly every one, only asks Err; the
// first Done or Value (a wait in the queue, a dial, a SET, a prepare)
// makes the real context, which stop cancels.
type borrowCtx struct {
	parent   context.Context
	deadline time.Time

	mu     sync.Mutex
	ctx    context.Context // context.WithDeadline(parent, deadline) once needed; after stop, a cancelled one
	cancel context.CancelFunc
	used   bool // ctx was handed out (Done, Value): another goroutine may hold this
}

// borrowCtx returns a borrowCtx bounded by the connect timeout: the one of
// the last borrow again if nothing but Err was asked of it (nothing can
// still hold it), else a new one.
func (pc *pooledClient) borrowCtx(parent context.Context) *borrowCtx {
	c := pc.bctx
	if c == nil || c.isUsed() {
		c = &borrowCtx{}
		pc.bctx = c
	}
	c.parent, c.deadline = parent, time.Now().Add(pc.s.cfg.connectTimeout())
	if d, ok := parent.Deadline(); ok && d.Before(c.deadline) {
		c.deadline = d
	}
	c.ctx, c.cancel = nil, nil
	return c
}

func (c *borrowCtx) isUsed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// real is the context the borrow stands for, made on first use.
func (c *borrowCtx) real() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	c.used = true
	return c.ctx
}

func (c *borrowCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *borrowCtx) Done() <-chan struct{}       { return c.real().Done() }
func (c *borrowCtx) Value(key any) any           { return c.real().Value(key) }

// Err is the real context's Err once there is one; before, what it would
// say: the parent's error, or the deadline passed.
func (c *borrowCtx) Err() error {
	c.mu.Lock()
	ctx := c.ctx
	c.mu.Unlock()
	if ctx != nil {
		return ctx.Err()
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// stop ends the borrow's context, as the CancelFunc of WithTimeout does.
func (c *borrowCtx) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		c.cancel()
		return
	}
	c.ctx = cancelledCtx
}

// cancelledCtx is a borrowCtx's after stop when it never made one.
var cancelledCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// setRoute makes rt, resolved now, the route to borrow on.
func (pc *pooledClient) setRoute(rt resolver.Route) {
	pc.rt, pc.rtAt, pc.key = rt, time.Now(), pool.KeyFor(pc.tenant, rt.Endpoint)
}

// routeReuse is how long a pooled client borrows on the route it resolved
// last without resolving again.
const routeReuse = time.Second

// attachLocked makes conn, at ReadyForQuery, the connection the client
// holds and starts its pump, or (!pump) readies it for inlineReplies.
func (pc *pooledClient) attachLocked(conn *pool.Conn, rt resolver.Route, pump bool) {
	if pump {
		_ = conn.Conn.SetDeadline(time.Time{}) // a wake or a stop may have left one
	} else {
		// The transaction's one deadline: inlineReplies' (set under mu,
		// so that a wake from now on cuts it short). It replaces what a
		// wake, a stop or the last transaction's inline read left on the
		// read side; a connection is never given back clean with a write
		// deadline (only pool.Server's exchanges and prepare set one, and
		// they clear it when they succeed).
		_ = conn.Conn.SetReadDeadline(time.Now().Add(inlineFor))
	}
	pc.conn = conn
	pc.tr.Reset()
	pc.reqs.Reset()
	pc.tr.Feed([]byte{'Z', 0, 0, 0, 5, conn.TxStatus}) // counting starts at the ReadyForQuery it is at
	pc.base = pc.tr.Ready()
	pc.unnamedOK = false
	pc.current.Store(pc.cancelTargetLocked(conn, rt))
	if pump {
		pc.startPumpLocked()
	}
}

func (pc *pooledClient) startPumpLocked() {
	pc.pausing = false
	pc.done = make(chan serverEnd, 1)
	go pc.pumpServer(pc.conn, pc.done)
}

// cancelTargetLocked is the cancel target of conn, of route rt.
func (pc *pooledClient) cancelTargetLocked(conn *pool.Conn, rt resolver.Route) *cancelTarget {
	addr, tc := conn.Key().Server, pc.tlsConfig(rt) // the Key's Server is rt.Addr()
	for _, t := range pc.targets {
		if t != nil && t.pid == conn.PID && t.addr == addr && t.tlsConfig == tc && bytes.Equal(t.secret, conn.SecretKey) {
			return t
		}
	}
	t := &cancelTarget{addr: addr, pid: conn.PID, secret: conn.SecretKey, tlsConfig: tc, dial: pc.s.dial}
	copy(pc.targets[1:], pc.targets[:len(pc.targets)-1])
	pc.targets[0] = t
	return t
}

func (pc *pooledClient) tlsConfig(rt resolver.Route) *tls.Config {
	if pc.tlsHost != rt.Host || pc.tlsProvider != rt.Provider || pc.tlsMode != rt.TLS || pc.tls == nil {
		pc.tls, pc.tlsHost, pc.tlsProvider, pc.tlsMode = pc.s.upstreamOf(rt).routeTLS(rt), rt.Host, rt.Provider, rt.TLS
	}
	return pc.tls
}

// releasableLocked reports whether the held connection has nothing in
// flight for the client: the replies end at a ReadyForQuery and answer
// every request.
func (pc *pooledClient) releasableLocked() bool {
	return !pc.dirty && pc.tr.Err() == nil && pc.tr.AtReady() &&
		pc.reqs.Err() == nil && pc.reqs.AtBoundary() && !pc.reqs.Pending() &&
		pc.reqs.Count() == pc.tr.Ready()-pc.base
}

// onParameter follows a setting the server reports while the client holds
// it (the client SET it): the server's session says so now, and the
// client's does too, wherever it goes next. Called under mu, by Feed.
func (pc *pooledClient) onParameter(name, value string) {
	lk := strings.ToLower(name)
	if pc.conn != nil {
		if pc.conn.Params == nil {
			pc.conn.Params = make(map[string]string)
		}
		pc.conn.Params[name] = value
		delete(pc.conn.Settings, lk)
	}
	if trackedParams[lk] {
		pc.want[lk] = setting{name, value}
		pc.tag = settingsTag(pc.want)
		if pc.conn != nil {
			pc.conn.Tag = pc.tag // the server's session says it too now
		}
	}
}

// wake interrupts whichever side is blocked for the session, so that it
// notices a kill: the server pump if a connection is held, else run.
func (pc *pooledClient) wake() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.conn != nil {
		_ = pc.conn.Conn.SetReadDeadline(time.Now())
		return
	}
	_ = pc.client.SetReadDeadline(time.Now())
	pc.ls.ev.wakeIn()
}

// pumpServer copies conn's replies to the client until the session ends,
// or, in transaction mode, until conn goes back to its pool.
func (pc *pooledClient) pumpServer(conn *pool.Conn, done chan<- serverEnd) {
	r := newLazyReader(conn.Conn)
	defer r.done()
	extended := false
	for {
		b, rerr := r.read()
		if len(b) > 0 {
			werr := pc.relayChunk(b)
			r.done()
			if werr != nil {
				_ = pc.client.Close() // wakes run
				pc.ls.ev.wakeIn()
				done <- serverEnd{endClientGone, werr}
				return
			}
		}
		pc.mu.Lock()
		stopping, pausing, atBoundary := pc.stopping, pc.pausing, pc.tr.AtBoundary() || pc.tr.AtReady()
		pc.mu.Unlock()
		select {
		case pc.progress <- struct{}{}:
		default:
		}
		switch {
		case stopping:
			done <- serverEnd{kind: endStopped}
			return
		case pausing:
			done <- serverEnd{kind: endPaused}
			return
		}
		if reason := pc.ls.killed.Load(); reason != nil {
			if atBoundary {
				_ = writeMsgs(pc.client, toErrorResponse(reason))
				pc.endClient()
				done <- serverEnd{kind: endKilled}
				return
			}
			if !extended && (rerr == nil || isTimeout(rerr)) {
				extended = true // mid-message: let the server finish it, briefly
				_ = conn.Conn.SetReadDeadline(time.Now().Add(time.Second))
				continue
			}
			if rerr != nil {
				_ = pc.client.Close()
				pc.ls.ev.wakeIn()
				done <- serverEnd{kind: endKilled}
				return
			}
			continue
		}
		if rerr != nil {
			if atBoundary && !isQuietEOF(rerr) {
				_ = writeMsgs(pc.client, toErrorResponse(clientErr(codeConnectionFailure,
					"lost the connection to the tenant's database", "Reconnect.", rerr)))
			}
			pc.endClient()
			done <- serverEnd{endServerGone, rerr}
			return
		}
		if pc.mode == PoolTransaction {
			pc.mu.Lock()
			if !pc.stopping && !pc.pausing && pc.tr.Idle() && pc.releasableLocked() {
				pc.conn = nil
				pc.current.Store(nil)
				pc.mu.Unlock()
				conn.TxStatus = 'I'
				conn.Release(true)
				done <- serverEnd{kind: endReturned}
				return
			}
			pc.mu.Unlock()
		}
	}
}

// endClient half-closes the client after a last message of ours and wakes
// run without resetting the connection under that message.
func (pc *pooledClient) endClient() {
	if tc, ok := pc.client.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	pc.stopRead.Store(true)
	_ = pc.client.SetReadDeadline(time.Now())
	pc.ls.ev.wakeIn()
}

// run relays the client's messages until the session ends, then gives the
// held connection back (reset) or closes it, and returns why the session
// ended (nil for a clean end).
func (pc *pooledClient) run(ctx context.Context) error {
	r := newLazyReader(pc.client)
	defer r.done()
	for {
		b, rerr := r.read()
		if len(b) > 0 {
			pc.ls.bytesIn.Add(int64(len(b)))
			err := pc.forward(ctx, b)
			r.done()
			if err != nil {
				return pc.finish(err)
			}
		}
		if rerr != nil {
			return pc.finish(rerr)
		}
	}
}

// errTerminated ends a session whose client said Terminate.
var errTerminated = errors.New("client terminated the session")

// missing is what must be prepared on conn before the client's next
// bytes: the named statements they use that conn lacks, and the client's
// unnamed statement if they use it and conn's is not the client's (always
// so for a connection just borrowed).
func (pc *pooledClient) missing(conn *pool.Conn, need []*statement, fresh bool) []*statement {
	missing := missingOn(conn, need)
	if w := pc.rw; w != nil && w.use && w.unnamed != nil && (fresh || !pc.unnamedOK) {
		missing = append(missing, &statement{parse: w.unnamed})
	}
	return missing
}

func hasUnnamed(sts []*statement) bool {
	return slices.ContainsFunc(sts, func(st *statement) bool { return st.server == "" })
}

// quietTimeout bounds how long run waits for a connection to have nothing
// in flight before preparing statements on it.
const quietTimeout = 30 * time.Second

// forward writes b, the client's next bytes, to the connection it holds,
// borrowing one first if it holds none, and in transaction mode first
// prepares there the statements b refers to.
func (pc *pooledClient) forward(ctx context.Context, b []byte) error {
	if pc.ls.killed.Load() != nil { // what comes after a kill stays off the server: it can then be reset
		return errKilled
	}
	need := pc.need[:0]
	if pc.rw != nil {
		var err error
		pc.scratch, need, err = pc.rw.feed(pc.scratch[:0], b, need)
		if err != nil {
			return clientErr(codeProtocolViolation, "invalid message from the client", "", err)
		}
		b = pc.scratch
		if len(b) == 0 { // all held back until the rest of a message comes
			return nil
		}
	}
	defer func() { clear(need); pc.need = need[:0] }()
	var quietSince time.Time
	inline := false
	pc.mu.Lock()
	for {
		if pc.conn == nil {
			pc.mu.Unlock()
			if bytes.Equal(b, terminateMsg) {
				return errTerminated
			}
			bctx := pc.borrowCtx(ctx)
			conn, rt, err := pc.borrow(bctx)
			var missing []*statement
			if err == nil {
				if missing = pc.missing(conn, need, true); len(missing) > 0 {
					if err = prepare(bctx, conn, missing, need); err != nil {
						conn.Release(false)
						err = clientErr(codeConnectionFailure, "lost the connection to the tenant's database while preparing statements", "Reconnect.", err)
					}
				}
			}
			bctx.stop()
			if err != nil {
				return err
			}
			pc.mu.Lock()
			pc.attachLocked(conn, rt, false) // the replies are read inline, see inlineReplies
			pc.unnamedOK = hasUnnamed(missing)
			inline = true
			break
		}
		missing := pc.missing(pc.conn, need, false)
		if len(missing) == 0 {
			break
		}
		if !pc.releasableLocked() { // replies still due: wait for them, then prepare
			pc.mu.Unlock()
			if quietSince.IsZero() {
				quietSince = time.Now()
			} else if time.Since(quietSince) > quietTimeout {
				return clientErr(codeProtocolViolation, "in transaction pooling, a statement new to the server cannot be pipelined behind unanswered requests",
					"Wait for the replies before using a newly prepared statement, or use session pooling (options='-c pgtenant.pool_mode=session').", nil)
			}
			select {
			case <-pc.progress:
			case <-time.After(10 * time.Millisecond):
			}
			pc.mu.Lock()
			continue
		}
		// Quiet: stop the pump, prepare, start it again.
		conn, done := pc.conn, pc.done
		pc.pausing = true
		_ = conn.Conn.SetReadDeadline(time.Now())
		pc.mu.Unlock()
		end := <-done
		if end.kind != endPaused { // the session is ending: leave the end for finish
			pc.mu.Lock()
			pc.done = make(chan serverEnd, 1)
			pc.done <- end
			pc.mu.Unlock()
			return errKilled
		}
		_ = conn.Conn.SetDeadline(time.Time{})
		err := prepare(ctx, conn, missing, need)
		pc.mu.Lock()
		if err != nil {
			pc.dirty = true
			pc.done = make(chan serverEnd, 1)
			pc.done <- serverEnd{endServerGone, err}
			pc.mu.Unlock()
			return err
		}
		pc.startPumpLocked()
		pc.unnamedOK = pc.unnamedOK || hasUnnamed(missing)
	}
	if pc.rw != nil {
		switch {
		case pc.rw.own:
			pc.unnamedOK = true
		case pc.rw.lost:
			pc.unnamedOK = false
		}
	}
	conn := pc.conn
	pc.reqs.Feed(b)
	perr, term := pc.reqs.Err(), pc.reqs.Terminated()
	if term {
		if bytes.HasSuffix(b, terminateMsg) {
			b = b[:len(b)-len(terminateMsg)]
		} else {
			pc.dirty = true // split, or followed by more: the server saw part of it
		}
	}
	pc.mu.Unlock()
	if perr != nil {
		return clientErr(codeProtocolViolation, "invalid message framing from the client", "", perr)
	}
	if len(b) > 0 {
		if _, err := conn.Conn.Write(b); err != nil {
			if inline {
				pc.mu.Lock()
				pc.handoffLocked()
				pc.mu.Unlock()
			}
			return err
		}
	}
	if inline {
		pc.inlineReplies(conn, term)
	}
	if term {
		return errTerminated
	}
	return nil
}

// inlineFor is how long run reads a transaction's replies itself before
// it hands them to a server pump and goes back to reading the client.
const inlineFor = 20 * time.Millisecond

// inlineReplies reads the replies to the request that began a transaction
// on run's own goroutine, for at most inlineFor (the read deadline
// attachLocked set): a lone statement (most
// of what transaction pooling serves) is then answered and its connection
// given back with no pump started. Anything else (a transaction left
// open, a slow or partial answer, COPY, an error, a kill) goes on to a
// server pump, which takes up the stream where this left it.
func (pc *pooledClient) inlineReplies(conn *pool.Conn, term bool) {
	pc.mu.Lock()
	complete := !term && !pc.dirty && pc.reqs.AtBoundary() && !pc.reqs.Pending() && pc.reqs.Count() > pc.tr.Ready()-pc.base
	pc.mu.Unlock()
	if !complete {
		pc.mu.Lock()
		pc.handoffLocked()
		pc.mu.Unlock()
		return
	}
	// A plain Read into a pooled buffer (lazyReader without raw): run
	// blocks at most inlineFor on it, and a reader per transaction would
	// cost three allocations.
	r := lazyReader{conn: conn.Conn}
	defer r.done()
	for {
		b, rerr := r.read()
		var werr error
		if len(b) > 0 {
			werr = pc.relayChunk(b)
			r.done()
		}
		pc.mu.Lock()
		if werr == nil && rerr == nil && pc.ls.killed.Load() == nil {
			if pc.tr.Idle() && pc.releasableLocked() {
				pc.conn = nil
				pc.current.Store(nil)
				pc.mu.Unlock()
				conn.TxStatus = 'I'
				conn.Release(true)
				return
			}
			if !pc.tr.AtReady() { // more to come
				pc.mu.Unlock()
				continue
			}
		}
		// A transaction left open, an error, a timeout, a kill: the pump
		// takes over (and finds out about the error again itself).
		pc.handoffLocked()
		pc.mu.Unlock()
		return
	}
}

// handoffLocked starts the server pump on the held connection, which run
// was reading itself; a kill meanwhile is left for the pump to see.
func (pc *pooledClient) handoffLocked() {
	if pc.ls.killed.Load() != nil {
		_ = pc.conn.Conn.SetReadDeadline(time.Now())
	} else {
		_ = pc.conn.Conn.SetReadDeadline(time.Time{})
	}
	pc.startPumpLocked()
}

// relayChunk passes b, the server's next bytes, to the client, following
// them with the Tracker.
func (pc *pooledClient) relayChunk(b []byte) error {
	pc.mu.Lock()
	before := pc.tr.Ready()
	pc.tr.Feed(b)
	st, ready := pc.tr.TxStatus(), pc.tr.Ready() != before
	pc.mu.Unlock()
	if ready { // before the write: the client cannot have answered yet
		pc.ls.noteReady(st)
	}
	nw, werr := pc.client.Write(b)
	pc.ls.bytesOut.Add(int64(nw))
	return werr
}

// finish ends the session: it stops the server pump, gives the held
// connection back if nothing is in flight on it (reset as the mode says;
// rolled back if the client left inside a transaction) or closes it, and
// tells the client why if it is still there to hear it.
func (pc *pooledClient) finish(cause error) error {
	pc.mu.Lock()
	pc.stopping = true
	conn, done := pc.conn, pc.done
	pc.mu.Unlock()
	if conn == nil { // between transactions: nothing held, run alone writes to the client
		if reason := pc.ls.killed.Load(); reason != nil {
			_ = writeMsgs(pc.client, toErrorResponse(reason))
			lingerClose(pc.client, killLinger)
			return errKilled
		}
		return pc.tell(cause)
	}
	_ = conn.Conn.SetReadDeadline(time.Now())
	end := <-done
	pc.mu.Lock()
	clean := end.kind != endServerGone && pc.releasableLocked()
	st := pc.tr.TxStatus()
	atBoundary := pc.tr.AtBoundary() || pc.tr.AtReady()
	pc.conn = nil
	pc.current.Store(nil)
	pc.mu.Unlock()
	if clean {
		query := ""
		if pc.mode == PoolSession {
			query = pc.s.cfg.Pool.resetQuery()
		}
		conn.TxStatus = st
		rctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
		if err := conn.ResetRelease(rctx, st, query); err != nil && !errors.Is(err, pool.ErrClosed) {
			pc.log.Warn("pooled server connection could not be reset; closed", "err", err)
		}
		cancel()
	} else {
		conn.Release(false)
	}
	switch end.kind {
	case endKilled:
		lingerClose(pc.client, killLinger) // what the client sent meanwhile must not reset our ErrorResponse away
		return errKilled
	case endClientGone, endServerGone:
		return end.err
	}
	if reason := pc.ls.killed.Load(); reason != nil && atBoundary {
		// Killed, and run ended the session (the client wrote again)
		// before the pump could tell the client: tell it here.
		_ = writeMsgs(pc.client, toErrorResponse(reason))
		lingerClose(pc.client, killLinger)
		return errKilled
	}
	return pc.tell(cause)
}

// tell sends the client an error of ours that ended its session, and
// returns cause as the session's end.
func (pc *pooledClient) tell(cause error) error {
	if errors.Is(cause, errTerminated) {
		return nil
	}
	var ce *ClientError
	if errors.As(cause, &ce) {
		_ = writeError(pc.client, cause)
		lingerClose(pc.client, refuseLinger)
	}
	return cause
}
