package pool

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Tracker follows a server's message stream to its client, fed in
// whatever pieces the connection delivers (a message may span any number
// of them), and reports the transaction status of each ReadyForQuery:
// 'I' idle, 'T' in a transaction, 'E' in a failed transaction. Transaction
// pooling gives the server connection back when the stream ends right
// after a ReadyForQuery 'I' (and the client has nothing else in flight).
// It looks at message headers only and never copies a body. The zero value
// is a Tracker at the start of a message. Not safe for concurrent use.
type Tracker struct {
	// OnParameter, when set, is called with each ParameterStatus the
	// stream carries (a SET of a reported setting, say), during Feed: the
	// one kind of body the Tracker reads. Reset keeps it.
	OnParameter func(name, value string)

	param  []byte // body of the ParameterStatus being read, when OnParameter is set
	inS    bool   // the current message is a ParameterStatus being collected
	hdr    [5]byte
	nhdr   int   // header bytes of the current message held in hdr
	skip   int64 // body bytes of the current message still to pass
	rfq    bool  // the current message is a ReadyForQuery
	status byte
	ready  int64
	atRFQ  bool
	err    error
}

// Feed scans b, the next bytes of the stream. It returns the offset in b
// just past the last ReadyForQuery that b completes, or -1 if b completes
// none. After a framing error (a length below 4, a ReadyForQuery whose
// length is not 5) it scans nothing more; see Err.
func (t *Tracker) Feed(b []byte) int {
	last := -1
	i := 0
	for i < len(b) && t.err == nil {
		if t.skip > 0 { // inside a body
			if t.rfq {
				t.status = b[i]
				t.rfq = false
				t.skip = 0
				i++
				t.ready++
				t.atRFQ = true
				last = i
				continue
			}
			n := int64(len(b) - i)
			if n > t.skip {
				n = t.skip
			}
			if t.inS {
				t.param = append(t.param, b[i:i+int(n)]...)
			}
			t.skip -= n
			i += int(n)
			if t.inS && t.skip == 0 {
				t.parameter()
			}
			continue
		}
		t.atRFQ = false
		var hdr []byte
		if t.nhdr == 0 && len(b)-i >= 5 { // whole header at hand: no copy
			hdr = b[i : i+5]
			i += 5
		} else {
			n := copy(t.hdr[t.nhdr:], b[i:])
			t.nhdr += n
			i += n
			if t.nhdr < 5 {
				break
			}
			t.nhdr = 0
			hdr = t.hdr[:]
		}
		size := int64(binary.BigEndian.Uint32(hdr[1:]))
		switch {
		case size < 4:
			t.err = fmt.Errorf("pool: server sent a message %q of invalid length %d", hdr[0], size)
		case hdr[0] == 'Z' && size != 5:
			t.err = fmt.Errorf("pool: server sent a ReadyForQuery of length %d", size)
		case hdr[0] == 'Z':
			t.rfq, t.skip = true, 1
		default:
			t.skip = size - 4
			t.inS = hdr[0] == 'S' && t.OnParameter != nil && t.skip <= maxParameterStatus
			if t.inS && t.skip == 0 {
				t.parameter()
			}
		}
	}
	return last
}

// maxParameterStatus bounds the ParameterStatus bodies a Tracker collects;
// longer ones (no real setting is) pass unread.
const maxParameterStatus = 8 << 10

// parameter reports the ParameterStatus collected in t.param.
func (t *Tracker) parameter() {
	var m pgproto3.ParameterStatus
	if err := m.Decode(t.param); err == nil {
		t.OnParameter(m.Name, m.Value)
	}
	t.param, t.inS = t.param[:0], false
}

// TxStatus is the status byte of the last ReadyForQuery seen ('I', 'T' or
// 'E'), or 0 before the first.
func (t *Tracker) TxStatus() byte { return t.status }

// AtReady reports whether the stream so far ends exactly after a
// ReadyForQuery: no byte of a further message has been seen.
func (t *Tracker) AtReady() bool { return t.atRFQ && t.err == nil }

// AtBoundary reports whether the stream so far ends between messages
// (where a proxy may put a message of its own).
func (t *Tracker) AtBoundary() bool { return t.nhdr == 0 && t.skip == 0 && !t.rfq && t.err == nil }

// Idle reports whether the stream ends right after a ReadyForQuery 'I'.
func (t *Tracker) Idle() bool { return t.AtReady() && t.status == 'I' }

// Ready is the number of ReadyForQuery messages seen, to match against
// the client's Sync and Query messages still unanswered.
func (t *Tracker) Ready() int64 { return t.ready }

// Err is the framing error that stopped the Tracker, if any: the stream
// is not the Postgres protocol and the connection cannot be reused.
func (t *Tracker) Err() error { return t.err }

// Reset readies t for another stream, keeping OnParameter.
func (t *Tracker) Reset() { *t = Tracker{OnParameter: t.OnParameter, param: t.param[:0]} }

// Requests follows a client's message stream to its server (after the
// startup phase), fed in any pieces, and counts the messages the server
// answers with exactly one ReadyForQuery each: Query, Sync and
// FunctionCall. With a Tracker on the replies, the server has nothing in
// flight for the client when Count equals the Tracker's Ready: that, with
// Tracker.Idle, is when transaction pooling may release the server. The
// zero value is at the start of a message. Not safe for concurrent use.
type Requests struct {
	hdr        [5]byte
	nhdr       int
	skip       int64
	n          int64
	pending    bool // a message began after the last counted one
	terminated bool
	err        error
}

// Feed scans b, the next bytes of the client's stream. After a framing
// error (a length below 4) it scans nothing more; see Err.
func (r *Requests) Feed(b []byte) {
	for i := 0; i < len(b) && r.err == nil; {
		if r.skip > 0 {
			n := min(r.skip, int64(len(b)-i))
			r.skip -= n
			i += int(n)
			continue
		}
		n := copy(r.hdr[r.nhdr:], b[i:])
		r.nhdr += n
		i += n
		if r.nhdr < 5 {
			return
		}
		r.nhdr = 0
		size := int64(binary.BigEndian.Uint32(r.hdr[1:]))
		if size < 4 {
			r.err = fmt.Errorf("pool: client sent a message %q of invalid length %d", r.hdr[0], size)
			return
		}
		switch r.hdr[0] {
		case 'Q', 'S', 'F':
			r.n++
			r.pending = false
		case 'd', 'c', 'f': // COPY data, done, fail: part of the Query they follow
		case 'X':
			r.terminated = true
		default: // Parse, Bind, Describe, Execute, Close, Flush: answered at the next Sync
			r.pending = true
		}
		r.skip = size - 4
	}
}

// Count is the number of Query, Sync and FunctionCall messages seen.
func (r *Requests) Count() int64 { return r.n }

// Terminated reports whether the client sent Terminate.
func (r *Requests) Terminated() bool { return r.terminated }

// Pending reports whether the client sent an extended-protocol message
// (Parse, Bind, …, Flush) after its last Query, Sync or FunctionCall: the
// server then owes the client replies beyond Count's ReadyForQuery. COPY
// data belongs to the Query before it. A message still partly read is
// not at a boundary (AtBoundary) rather than pending.
func (r *Requests) Pending() bool { return r.pending }

// AtBoundary reports whether the stream so far ends between messages.
func (r *Requests) AtBoundary() bool { return r.nhdr == 0 && r.skip == 0 && r.err == nil }

// Err is the framing error that stopped the count, if any.
func (r *Requests) Err() error { return r.err }

// Reset readies r for another stream.
func (r *Requests) Reset() { *r = Requests{} }
