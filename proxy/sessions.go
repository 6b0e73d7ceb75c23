package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/resolver"
)

// SessionInfo describes a live routed session (for the admin API).
type SessionInfo struct {
	Tenant      string
	Remote      string
	Start       time.Time
	Via         resolver.Via
	UpstreamPID uint32
	BytesIn     int64 // client → upstream so far
	BytesOut    int64 // upstream → client so far
}

// liveSession is a routed session the server can end on request: the pump
// toward the client stops at a message boundary and the client is told why
// with a FATAL ErrorResponse, as Postgres does when a backend is terminated.
type liveSession struct {
	*session
	remote   string
	start    stamp
	upstream net.Conn
	// wake, when set, replaces the read deadline on upstream that kill uses
	// to interrupt the session (a pooled session's connection changes).
	wake func()

	killed atomic.Pointer[ClientError] // set once, by the first kill

	idle idleState // for Limits.IdleTimeout (idle.go)

	ev evRelay // set up (ev.p set) when the session is event-relayed (evrelay_linux.go)
}

// kill asks the session to end with err; it returns at once.
func (ls *liveSession) kill(err *ClientError) {
	if !ls.killed.CompareAndSwap(nil, err) {
		return // killed already
	}
	// Interrupt a pump blocked reading the upstream; it then finishes the
	// message in flight, sends err and ends the session.
	if ls.ev.p != nil { // parked: start the direction toward the client
		ls.ev.wakeOut()
		return
	}
	if ls.wake != nil {
		ls.wake()
		return
	}
	_ = ls.upstream.SetReadDeadline(time.Now())
}

// epoch is when the process started. A held session keeps its times as
// stamps, offsets from it: 8 bytes where a time.Time takes 24, and held
// sessions are most of the router's memory.
var epoch = time.Now()

// stamp is a time as nanoseconds since epoch (monotonic when the time
// has a monotonic reading).
type stamp int64

func stampOf(t time.Time) stamp { return stamp(t.Sub(epoch)) }
func (s stamp) time() time.Time { return epoch.Add(time.Duration(s)) }

// registry holds the live routed sessions of a Server.
type registry struct {
	mu struct {
		sync.Mutex
		sessions map[*liveSession]struct{} // guarded by mu
	}
}

func (r *registry) add(ls *liveSession) (remove func()) {
	r.mu.Lock()
	if r.mu.sessions == nil {
		r.mu.sessions = make(map[*liveSession]struct{})
	}
	r.mu.sessions[ls] = struct{}{}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.mu.sessions, ls)
		r.mu.Unlock()
	}
}

// each calls f for every live session matching tenant ("" = all), outside
// the lock.
func (r *registry) each(tenant string, f func(*liveSession)) int {
	r.mu.Lock()
	var list []*liveSession
	for ls := range r.mu.sessions {
		if tenant == "" || ls.tenant == tenant {
			list = append(list, ls)
		}
	}
	r.mu.Unlock()
	for _, ls := range list {
		f(ls)
	}
	return len(list)
}

// Sessions lists the live routed sessions of tenant, or all when tenant is
// empty.
func (s *Server) Sessions(tenant string) []SessionInfo {
	var out []SessionInfo
	s.live.each(tenant, func(ls *liveSession) {
		out = append(out, SessionInfo{
			Tenant: ls.tenant, Remote: ls.remote, Start: ls.start.time(), Via: ls.via, UpstreamPID: ls.upPID,
			BytesIn: ls.bytesIn.Load(), BytesOut: ls.bytesOut.Load(),
		})
	})
	return out
}

// CloseSessions ends the live sessions of tenant (all sessions when tenant
// is empty): each client gets a FATAL ErrorResponse with code and msg at
// the next message boundary, then both connections close. It returns how
// many sessions it asked to end and does not wait for them.
func (s *Server) CloseSessions(tenant, code, msg string) int {
	err := &ClientError{Code: code, Msg: msg}
	return s.live.each(tenant, func(ls *liveSession) { ls.kill(err) })
}

// framer follows the message framing of the upstream → client byte stream
// (type byte, int32 length including itself, body), so the router knows
// when it may inject a message of its own.
type framer struct {
	hdr       [5]byte
	hdrN      uint8
	broken    bool
	ready     byte // status of a ReadyForQuery fed since the caller last cleared it
	remaining int64
}

func (f *framer) feed(b []byte) {
	for len(b) > 0 && !f.broken {
		if f.remaining > 0 {
			if f.remaining == 1 && f.hdr[0] == 'Z' {
				f.ready = b[0] // ReadyForQuery's one-byte body: the transaction status
			}
			k := min(int64(len(b)), f.remaining)
			f.remaining -= k
			b = b[k:]
			continue
		}
		k := copy(f.hdr[f.hdrN:], b)
		f.hdrN += uint8(k)
		b = b[k:]
		if int(f.hdrN) == len(f.hdr) {
			n := int64(int32(binary.BigEndian.Uint32(f.hdr[1:])))
			if n < 4 {
				f.broken = true
				return
			}
			f.remaining, f.hdrN = n-4, 0
		}
	}
}

func (f *framer) atBoundary() bool { return !f.broken && f.hdrN == 0 && f.remaining == 0 }

// errKilled ends a session that CloseSessions (or a drain) ended.
var errKilled = errors.New("session closed by the router")

// pumpToClient copies upstream → client like pump, but stops when ls is
// killed: it completes the message in flight (for at most a second), sends
// the kill reason as an ErrorResponse and returns errKilled.
func pumpToClient(client io.Writer, upstream net.Conn, ls *liveSession) error {
	r := newLazyReader(upstream)
	defer r.done()
	var f framer
	var extended bool
	for {
		b, rerr := r.read()
		if len(b) > 0 {
			f.feed(b)
			if f.ready != 0 { // before the write: the client cannot have answered yet
				ls.noteReady(f.ready)
				f.ready = 0
			}
			nw, werr := client.Write(b)
			r.done()
			ls.bytesOut.Add(int64(nw))
			if werr != nil {
				return werr
			}
		}
		if reason := ls.killed.Load(); reason != nil {
			if f.atBoundary() {
				_ = writeMsgs(client, toErrorResponse(reason))
				return errKilled
			}
			if !extended && (rerr == nil || isTimeout(rerr)) {
				// Mid-message: let the upstream finish it, briefly.
				extended = true
				_ = upstream.SetReadDeadline(time.Now().Add(time.Second))
				continue
			}
			if rerr != nil {
				return errKilled // could not reach a boundary: just close
			}
			continue
		}
		if rerr != nil {
			return rerr
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
