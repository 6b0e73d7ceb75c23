package pool

import (
	"context"
	"maps"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/provision"
)

// Key identifies a pool: one per tenant route. Two clients whose Keys are
// equal may share server connections. The password is deliberately not
// part of it: a rotated password keeps the pool (its connections are
// already logged in), and a Key is safe to log.
type Key struct {
	Tenant   string
	Server   string // host:port, the budget the pool draws on
	Database string
	User     string
}

// KeyFor is the Key of a tenant's route to ep.
func KeyFor(tenant string, ep provision.Endpoint) Key {
	return Key{Tenant: tenant, Server: ep.Addr(), Database: ep.Database, User: ep.User}
}

// Server is one logged-in server connection, as a DialFunc returns it:
// the connection positioned after ReadyForQuery and what the server said
// during login.
type Server struct {
	// Conn is the raw connection (TLS, when the login negotiated it).
	Conn net.Conn
	// Params is the server's ParameterStatus values. Reset keeps it
	// current with what the server reports during a reset.
	Params map[string]string
	// PID and SecretKey are the server's BackendKeyData, for cancel
	// requests.
	PID       uint32
	SecretKey []byte
	// TxStatus is the status of the server's last ReadyForQuery that this
	// package saw (at login, or after Reset).
	TxStatus byte
	// Login is the ParameterStatus values the server sent at login: the
	// session's defaults, which RESET restores. Not to be modified.
	Login map[string]string
	// Settings is the caller's record of the session settings it made on
	// the connection for its clients (by lower-case name), for settings the
	// server does not report in ParameterStatus. Reset with a query (which
	// is there to undo session state) clears it.
	Settings map[string]string
	// Prepared is the caller's record of the named statements it prepared
	// on the connection (name → a use counter of its own, for eviction).
	// Reset with a query clears it: a reset query such as DISCARD ALL
	// deallocates them.
	Prepared map[string]uint64
	// Tag is the caller's mark of the session state it last set up on the
	// connection (a fingerprint of a client's settings, say), so that the
	// next client wanting the same can skip setting it up; zero means
	// none. Reset with a query clears it.
	Tag uint64
}

// FromHijacked is the Server of a connection taken over from pgconn.
func FromHijacked(hj *pgconn.HijackedConn) Server {
	return Server{Conn: hj.Conn, Params: hj.ParameterStatuses, Login: maps.Clone(hj.ParameterStatuses),
		PID: hj.PID, SecretKey: hj.SecretKey, TxStatus: hj.TxStatus}
}

// DialFunc opens and logs in one server connection for a pool. It is the
// caller's (the proxy's login) and runs on the goroutine that called
// Acquire, bounded by its ctx. It must return a connection at
// ReadyForQuery, or an error and no connection.
type DialFunc func(ctx context.Context) (Server, error)

// Conn states.
const (
	stateActive = iota + 1 // handed out
	stateIdle              // in its pool's idle list
	stateClosed
)

// links are a Conn's place in one of the two intrusive lists it may be on
// while idle: its pool's (LIFO) and its budget's (LRU, for eviction).
type links struct{ prev, next *Conn }

// Conn is a server connection acquired from a Manager. The caller owns it
// until it calls Release or ResetRelease, exactly once; after that it must
// not use it, nor the Server fields. A Conn is not safe for concurrent use.
type Conn struct {
	Server

	p         *pool
	created   time.Time
	idleSince time.Time
	turn      time.Time // when its current turn with its tenant's waiters began; guarded by p.b.mu
	state     uint8
	l         [2]links // guarded by p.b.mu; listPool, listBudget
}

// Key is the Key of the pool c belongs to.
func (c *Conn) Key() Key { return c.p.key }

// Created is when c was logged in.
func (c *Conn) Created() time.Time { return c.created }

// IdleSince is when c was last given back to its pool, before the Acquire
// that handed it out; zero for a connection dialled for that Acquire.
func (c *Conn) IdleSince() time.Time { return c.idleSince }

// Release gives c back to its pool. clean says it can serve another
// client as it is: the server is at ReadyForQuery 'I' with nothing in
// flight and its session state is what the pool's users expect. A clean
// connection is kept for reuse (unless it outlived Config.MaxLifetime or
// the Manager is closed); any other is closed. Never blocks on I/O beyond
// closing the connection.
func (c *Conn) Release(clean bool) { c.p.m.release(c, clean) }

// ResetRelease resets c (Server.Reset: ROLLBACK unless txStatus, the
// status of the server's last ReadyForQuery, is 'I', then query unless
// empty) and releases it: clean if the reset worked, closed
// if not. The server must be at ReadyForQuery with nothing in flight; a
// connection whose client left mid-query must be released dirty instead.
// It returns the reset's error, for logging, or ErrClosed (without a
// reset) once the Manager is closed.
func (c *Conn) ResetRelease(ctx context.Context, txStatus byte, query string) error {
	if c.p.m.closed.Load() { // it will be closed anyway
		c.Release(false)
		return ErrClosed
	}
	err := c.Reset(ctx, txStatus, query)
	c.Release(err == nil)
	return err
}

const (
	listPool   = 0
	listBudget = 1
)

// connList is an intrusive doubly linked list of Conns over one of their
// link sets: pushing and removing allocate nothing.
type connList struct {
	head, tail *Conn
	n          int
	k          int // listPool or listBudget
}

func (l *connList) pushFront(c *Conn) {
	c.l[l.k] = links{next: l.head}
	if l.head != nil {
		l.head.l[l.k].prev = c
	} else {
		l.tail = c
	}
	l.head = c
	l.n++
}

func (l *connList) remove(c *Conn) {
	lk := &c.l[l.k]
	if lk.prev != nil {
		lk.prev.l[l.k].next = lk.next
	} else {
		l.head = lk.next
	}
	if lk.next != nil {
		lk.next.l[l.k].prev = lk.prev
	} else {
		l.tail = lk.prev
	}
	*lk = links{}
	l.n--
}
