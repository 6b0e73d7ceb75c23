package proxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/pool"
)

// Protocol-level prepared statements in transaction pooling.
//
// A client names its statements (Parse "stmtcache_1", then Bind, Describe
// and Close by that name) for its whole session, but lands on a different
// server connection for each transaction. As PgBouncer (≥1.21,
// max_prepared_statements) and PgDog do, the router keeps each client's
// named statements itself and prepares them on the server the client
// lands on, under a name of the router's own derived from the statement's
// text and parameter types (so clients running the same statements share
// one on each server). On the way to the server:
//
//   - Parse of a named statement: remembered, and sent on as a Parse of the
//     unnamed statement, which answers the client as its own Parse would
//     (ParseComplete or the same error) and leaves no name behind. The
//     server-side statement is prepared apart, by the router, before the
//     message goes on (prepareMissing).
//   - Bind and Describe of a named statement: renamed to the server's name.
//   - Close of a named statement: forgotten, and sent on as a Close of a
//     name that never exists (which Postgres answers with CloseComplete):
//     other clients may still use the server's statement.
//
// The server's statements are recorded per connection (pool.Server's
// Prepared), at most maxServerStatements, the least recently used closed
// first.

// maxServerStatements bounds the statements the router keeps prepared on
// one server connection (PgBouncer's max_prepared_statements default).
const maxServerStatements = 200

// maxStatementMessage bounds the Parse messages (and the names at the
// start of Bind, Describe, Close) the router holds to rewrite.
const maxStatementMessage = 64 << 20

// statementUses orders the uses of server statements, for eviction.
var statementUses atomic.Uint64

// closedStatement is a statement name the router never prepares.
const closedStatement = "pgtenant_closed"

// statement is a client's named statement: the server's name for it and
// the Parse body that prepares it under that name.
type statement struct {
	server string
	parse  []byte // a Parse message (header included) naming server
}

// stmtRewriter rewrites a transaction-mode client's message stream as the
// package comment above says. Fed in any pieces, it holds only a message
// it must rewrite; the rest passes as it comes. Not safe for concurrent
// use.
type stmtRewriter struct {
	stmts map[string]*statement // the client's, by its name

	// The unnamed statement lasts past a Sync (pgx's describe-exec mode
	// parses it in one round trip and binds it in the next), so it too may
	// have to be prepared again on the next server: unnamed is the
	// client's last Parse of it. Per feed: use says a Bind or Describe of
	// it came before any Parse or Query (which replace it); own that the
	// server's is the client's after the feed, lost that it is not.
	unnamed   []byte
	use       bool
	own, lost bool
	replaced  bool // a Parse or Query came in this feed

	hdr  [5]byte
	nhdr int
	typ  byte
	left int64  // body bytes of the current message still to come
	pass bool   // the current message's body passes unread
	buf  []byte // body held so far, of a message to rewrite
}

// feed rewrites b, appending what goes to the server to out. need gets
// the statements the rewritten messages refer to, which must be prepared
// on the server before out is sent.
func (w *stmtRewriter) feed(out []byte, b []byte, need []*statement) ([]byte, []*statement, error) {
	w.use, w.own, w.lost, w.replaced = false, false, false, false
	for len(b) > 0 {
		if w.left > 0 && w.pass {
			n := int(min(w.left, int64(len(b))))
			out = append(out, b[:n]...)
			b, w.left = b[n:], w.left-int64(n)
			continue
		}
		if w.left > 0 { // holding a body
			n := int(min(w.left, int64(len(b))))
			w.buf = append(w.buf, b[:n]...)
			b, w.left = b[n:], w.left-int64(n)
			if w.left == 0 || (w.typ == 'B' && bindNamesDone(w.buf)) {
				var err error
				if out, need, err = w.rewrite(out, need); err != nil {
					return out, need, err
				}
			}
			continue
		}
		n := copy(w.hdr[w.nhdr:], b)
		w.nhdr += n
		b = b[n:]
		if w.nhdr < 5 {
			break
		}
		w.nhdr = 0
		size := int64(binary.BigEndian.Uint32(w.hdr[1:])) - 4
		if size < 0 {
			return out, need, fmt.Errorf("client sent a message %q of invalid length %d", w.hdr[0], size+4)
		}
		w.typ, w.left = w.hdr[0], size
		switch w.typ {
		case 'P', 'B', 'D', 'C':
			if size > maxStatementMessage {
				return out, need, fmt.Errorf("client sent a %q message of %d bytes, more than the %d the pooler holds", w.typ, size, maxStatementMessage)
			}
			w.pass, w.buf = false, w.buf[:0]
			if size == 0 {
				var err error
				if out, need, err = w.rewrite(out, need); err != nil {
					return out, need, err
				}
			}
		default:
			if w.typ == 'Q' { // a simple query replaces the unnamed statement
				w.own, w.lost, w.replaced = false, true, true
			}
			w.pass = true
			out = append(out, w.hdr[:]...)
		}
	}
	return out, need, nil
}

// bindNamesDone reports whether a Bind body held so far holds its portal
// and statement names, all the rewrite needs.
func bindNamesDone(body []byte) bool { return bytes.Count(body, []byte{0}) >= 2 }

// rewrite emits the held message w.typ (body w.buf, and w.left bytes
// still to come that then pass as they are).
func (w *stmtRewriter) rewrite(out []byte, need []*statement) ([]byte, []*statement, error) {
	body := w.buf
	rest := w.left // of a Bind: its parameters, passed as they come
	w.pass = true
	emit := func(typ byte, parts ...[]byte) []byte {
		n := 4 + rest
		for _, p := range parts {
			n += int64(len(p))
		}
		out = append(out, typ, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	bad := func(what string) ([]byte, []*statement, error) {
		return out, need, fmt.Errorf("client sent a malformed %s message", what)
	}
	switch w.typ {
	case 'P':
		name, afterName, ok := bytes.Cut(body, []byte{0})
		if !ok {
			return bad("Parse")
		}
		w.replaced = true
		if len(name) == 0 {
			w.own, w.lost = true, false
			w.unnamed = append(append(w.unnamed[:0], 'P', 0, 0, 0, 0), body...)
			binary.BigEndian.PutUint32(w.unnamed[1:], uint32(4+len(body)))
			return emit('P', body), need, nil
		}
		w.own, w.lost = false, true // sent on as a Parse of the unnamed statement
		query, types, ok := bytes.Cut(afterName, []byte{0})
		if !ok {
			return bad("Parse")
		}
		st := &statement{server: serverStatementName(query, types)}
		st.parse = parseMessage(st.server, afterName)
		if w.stmts == nil {
			w.stmts = make(map[string]*statement)
		}
		w.stmts[string(name)] = st
		need = append(need, st)
		return emit('P', []byte{0}, afterName), need, nil
	case 'B':
		portal, afterPortal, ok := bytes.Cut(body, []byte{0})
		if !ok {
			return bad("Bind")
		}
		name, afterName, ok := bytes.Cut(afterPortal, []byte{0})
		if !ok {
			return bad("Bind")
		}
		if len(name) == 0 && !w.replaced {
			w.use = true
		}
		st := w.stmts[string(name)]
		if st == nil {
			return emit('B', body), need, nil
		}
		need = append(need, st)
		return emit('B', portal, []byte{0}, []byte(st.server), []byte{0}, afterName), need, nil
	case 'D', 'C':
		if len(body) < 2 || body[len(body)-1] != 0 {
			return bad(string(w.typ))
		}
		name := body[1 : len(body)-1]
		if w.typ == 'D' && body[0] == 'S' && len(name) == 0 && !w.replaced {
			w.use = true
		}
		st := w.stmts[string(name)]
		if body[0] != 'S' || st == nil {
			return emit(w.typ, body), need, nil
		}
		if w.typ == 'C' {
			delete(w.stmts, string(name))
			return emit('C', []byte{'S'}, []byte(closedStatement), []byte{0}), need, nil
		}
		need = append(need, st)
		return emit('D', []byte{'S'}, []byte(st.server), []byte{0}), need, nil
	}
	return emit(w.typ, body), need, nil
}

// serverStatementName is the router's name of a statement: the same for
// the same text and parameter types, in Postgres' 63-byte name limit.
func serverStatementName(query, types []byte) string {
	h := sha256.New()
	h.Write(query)
	h.Write([]byte{0})
	h.Write(types)
	return "pgtenant_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// parseMessage is a Parse of statement name with rest (the query, its NUL
// and the parameter types) as the client sent them.
func parseMessage(name string, rest []byte) []byte {
	n := 4 + len(name) + 1 + len(rest)
	m := make([]byte, 0, 1+n)
	m = append(m, 'P', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	m = append(m, name...)
	m = append(m, 0)
	return append(m, rest...)
}

// missingOn returns the statements of need that conn lacks, once each, and
// marks the others used.
func missingOn(conn *pool.Conn, need []*statement) []*statement {
	var missing []*statement
	for _, st := range need {
		if _, ok := conn.Prepared[st.server]; ok {
			conn.Prepared[st.server] = statementUses.Add(1)
			continue
		}
		if !slices.ContainsFunc(missing, func(m *statement) bool { return m.server == st.server }) {
			missing = append(missing, st)
		}
	}
	return missing
}

// prepare prepares missing on conn, which has nothing in flight and no
// pump reading it, each in its own Parse and Sync so that one that fails
// (the client then hears why from its own Parse) leaves the others
// prepared; it closes the least recently used statements beyond
// maxServerStatements. An error leaves the connection unusable.
func prepare(ctx context.Context, conn *pool.Conn, missing []*statement, need []*statement) error {
	var out []byte
	for _, st := range missing {
		out = append(out, st.parse...)
		out = append(out, 'S', 0, 0, 0, 4)
	}
	var evict []string
	if over := len(conn.Prepared) + len(missing) - maxServerStatements; over > 0 {
		inUse := func(name string) bool {
			return slices.ContainsFunc(need, func(st *statement) bool { return st.server == name })
		}
		names := make([]string, 0, len(conn.Prepared))
		for name := range conn.Prepared {
			if !inUse(name) {
				names = append(names, name)
			}
		}
		slices.SortFunc(names, func(a, b string) int { return cmp.Compare(conn.Prepared[a], conn.Prepared[b]) })
		evict = names[:min(over, len(names))]
		for _, name := range evict {
			n := 4 + 1 + len(name) + 1
			out = append(out, 'C', byte(n>>24), byte(n>>16), byte(n>>8), byte(n), 'S')
			out = append(out, name...)
			out = append(out, 0, 'S', 0, 0, 0, 4)
		}
	}
	if conn.Prepared == nil {
		conn.Prepared = make(map[string]uint64)
	}
	c := conn.Conn
	d := time.Now().Add(resetTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	_ = c.SetDeadline(d)
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write(out); err != nil {
		return err
	}
	var hdr [5]byte
	body := make([]byte, 0, 256)
	ok := false
	for i := 0; i < len(missing)+len(evict); {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if size < 0 || size > 1<<20 {
			return fmt.Errorf("server sent a message %q of length %d while preparing statements", hdr[0], size+4)
		}
		body = slices.Grow(body[:0], size)[:size]
		if _, err := io.ReadFull(c, body); err != nil {
			return err
		}
		switch hdr[0] {
		case '1': // ParseComplete
			ok = true
		case 'Z':
			if size != 1 {
				return errors.New("server sent a malformed ReadyForQuery while preparing statements")
			}
			if i < len(missing) && ok && missing[i].server != "" { // "": the unnamed one, not kept
				conn.Prepared[missing[i].server] = statementUses.Add(1)
			} else if i >= len(missing) {
				delete(conn.Prepared, evict[i-len(missing)])
			}
			conn.TxStatus = body[0]
			ok = false
			i++
		}
	}
	return nil
}
