package pool_test

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/pool"
)

// msg encodes one backend message.
func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// oracle parses a whole stream message by message: the reference the
// Tracker must agree with however the stream is split.
type oracleResult struct {
	status byte
	ready  int64
	ends   []int // offsets just past each ReadyForQuery
	atRFQ  bool
	bad    bool
}

func oracle(b []byte) oracleResult {
	var r oracleResult
	for i := 0; i < len(b); {
		if len(b)-i < 5 {
			r.atRFQ = false
			return r
		}
		typ, size := b[i], int64(binary.BigEndian.Uint32(b[i+1:]))
		if size < 4 || (typ == 'Z' && size != 5) {
			r.atRFQ, r.bad = false, true
			return r
		}
		end := int64(i) + 1 + size
		if typ == 'Z' {
			if end > int64(len(b)) {
				r.atRFQ = false
				return r
			}
			r.status = b[i+5]
			r.ready++
			r.ends = append(r.ends, int(end))
			r.atRFQ = true
			i = int(end)
			continue
		}
		r.atRFQ = false
		if end > int64(len(b)) {
			return r
		}
		i = int(end)
	}
	return r
}

// feedSplit feeds b to a Tracker in pieces cut at splits and returns the
// tracker and the absolute ends Feed reported.
func feedSplit(b []byte, splits []byte) (*pool.Tracker, []int) {
	var tr pool.Tracker
	var ends []int
	off := 0
	for _, s := range splits {
		if off >= len(b) {
			break
		}
		n := min(int(s), len(b)-off)
		if e := tr.Feed(b[off : off+n]); e >= 0 {
			ends = append(ends, off+e)
		}
		off += n
	}
	if off < len(b) {
		if e := tr.Feed(b[off:]); e >= 0 {
			ends = append(ends, off+e)
		}
	}
	return &tr, ends
}

func TestTracker(t *testing.T) {
	rows := cat(msg('T', "\x00\x01a\x00rowdesc..........."), msg('D', "\x00\x01\x00\x00\x00\x011"), msg('C', "SELECT 1\x00"))
	tests := []struct {
		name   string
		stream []byte
		status byte
		ready  int64
		idle   bool
		atRFQ  bool
	}{
		{"nothing yet", nil, 0, 0, false, false},
		{"query then idle", cat(rows, msg('Z', "I")), 'I', 1, true, true},
		{"in a transaction", cat(msg('C', "BEGIN\x00"), msg('Z', "T")), 'T', 1, false, true},
		{"failed transaction", cat(msg('E', "SERROR\x00C22012\x00\x00"), msg('Z', "E")), 'E', 1, false, true},
		{"pipelined, ends idle", cat(msg('Z', "T"), rows, msg('Z', "I")), 'I', 2, true, true},
		{"more after the last", cat(msg('Z', "I"), msg('N', "notice")), 'I', 1, false, false},
		{"partial header after", cat(msg('Z', "I"), []byte("D\x00")), 'I', 1, false, false},
		{"empty-bodied message after", cat(msg('Z', "I"), msg('n', "")), 'I', 1, false, false},
		{"a body holding Z bytes", cat(msg('D', "Z\x00\x00\x00\x05T"), msg('Z', "I")), 'I', 1, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, split := range []int{1, 2, 3, 5, 7, 1 << 20} {
				var tr pool.Tracker
				for off := 0; off < len(tt.stream); off += split {
					tr.Feed(tt.stream[off:min(off+split, len(tt.stream))])
				}
				if tr.TxStatus() != tt.status || tr.Ready() != tt.ready || tr.Idle() != tt.idle || tr.AtReady() != tt.atRFQ || tr.Err() != nil {
					t.Errorf("split %d: status %q ready %d idle %v atReady %v err %v", split,
						tr.TxStatus(), tr.Ready(), tr.Idle(), tr.AtReady(), tr.Err())
				}
			}
		})
	}
}

func TestTrackerFeedOffset(t *testing.T) {
	var tr pool.Tracker
	b := cat(msg('C', "BEGIN\x00"), msg('Z', "T"), msg('C', "COMMIT\x00"), msg('Z', "I"), msg('N', "x"))
	if got, want := tr.Feed(b), len(b)-len(msg('N', "x")); got != want {
		t.Errorf("Feed = %d, want %d (just past the last ReadyForQuery)", got, want)
	}
	if got := tr.Feed(msg('C', "x\x00")); got != -1 {
		t.Errorf("Feed without a ReadyForQuery = %d, want -1", got)
	}
}

func TestTrackerFramingErrors(t *testing.T) {
	for name, b := range map[string][]byte{
		"length below 4":         {'D', 0, 0, 0, 3},
		"ReadyForQuery too long": cat([]byte{'Z', 0, 0, 0, 6}, []byte("II")),
	} {
		var tr pool.Tracker
		tr.Feed(cat(msg('Z', "I"), b))
		if tr.Err() == nil || tr.AtReady() || tr.Idle() {
			t.Errorf("%s: err %v, atReady %v", name, tr.Err(), tr.AtReady())
		}
		tr.Reset()
		if tr.Err() != nil || tr.TxStatus() != 0 {
			t.Errorf("%s: Reset kept state", name)
		}
	}
}

func TestTrackerAllocs(t *testing.T) {
	b := cat(msg('T', "desc"), msg('D', "row"), msg('C', "SELECT 1\x00"), msg('Z', "I"))
	var tr pool.Tracker
	if n := testing.AllocsPerRun(100, func() { tr.Feed(b[:3]); tr.Feed(b[3:]) }); n != 0 {
		t.Errorf("Feed allocates %.0f times", n)
	}
}

// FuzzTracker checks the Tracker against a whole-stream parse for any
// stream split at any points.
func FuzzTracker(f *testing.F) {
	f.Add(cat(msg('C', "BEGIN\x00"), msg('Z', "T"), msg('D', "Z\x00\x00\x00\x05I"), msg('Z', "I")), []byte{1, 2, 3, 4, 5, 6, 7})
	f.Add(cat(msg('Z', "I"), msg('N', "")), []byte{5, 1})
	f.Add(cat(msg('Z', "E"), []byte{'D', 0, 0, 0, 2}), []byte{3})
	f.Add([]byte("Z\x00\x00\x00\x05IZ\x00\x00\x00\x05T"), []byte{6, 0, 6})
	f.Fuzz(func(t *testing.T, stream, splits []byte) {
		want := oracle(stream)
		tr, ends := feedSplit(stream, splits)
		if tr.TxStatus() != want.status || tr.Ready() != want.ready || tr.AtReady() != want.atRFQ || (tr.Err() != nil) != want.bad {
			t.Fatalf("tracker: status %q ready %d atReady %v err %v; want %+v",
				tr.TxStatus(), tr.Ready(), tr.AtReady(), tr.Err(), want)
		}
		// Each Feed reports the last end within its piece.
		for _, e := range ends {
			found := false
			for _, w := range want.ends {
				found = found || w == e
			}
			if !found {
				t.Fatalf("Feed reported an end at %d; ReadyForQuery ends are %v", e, want.ends)
			}
		}
		if len(want.ends) > 0 && (len(ends) == 0 || ends[len(ends)-1] != want.ends[len(want.ends)-1]) {
			t.Fatalf("last reported end %v, want %d", ends, want.ends[len(want.ends)-1])
		}
	})
}

func requestsOracle(b []byte) (n int64, boundary, bad bool) {
	i := 0
	for i < len(b) {
		if len(b)-i < 5 {
			return n, false, false
		}
		typ, size := b[i], int64(binary.BigEndian.Uint32(b[i+1:]))
		if size < 4 {
			return n, false, true
		}
		if typ == 'Q' || typ == 'S' || typ == 'F' {
			n++
		}
		end := int64(i) + 1 + size
		if end > int64(len(b)) {
			return n, false, false
		}
		i = int(end)
	}
	return n, true, false
}

func TestRequests(t *testing.T) {
	stream := cat(msg('P', "\x00SELECT $1\x00\x00\x00"), msg('B', "\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0142\x00\x00"),
		msg('E', "\x00\x00\x00\x00\x00"), msg('S', ""), msg('Q', "SELECT 1\x00"), msg('d', "copy data S\x00"), msg('X', ""))
	for _, split := range []int{1, 3, 4, 5, 6, 1 << 20} {
		var r pool.Requests
		for off := 0; off < len(stream); off += split {
			r.Feed(stream[off:min(off+split, len(stream))])
		}
		if r.Count() != 2 || !r.Terminated() || !r.AtBoundary() || r.Err() != nil {
			t.Errorf("split %d: count %d terminated %v boundary %v err %v", split, r.Count(), r.Terminated(), r.AtBoundary(), r.Err())
		}
	}
	var r pool.Requests
	r.Feed([]byte{'Q', 0, 0, 0, 2})
	if r.Err() == nil || r.AtBoundary() {
		t.Error("a length below 4 was accepted")
	}
	r.Reset()
	if r.Err() != nil || r.Count() != 0 {
		t.Error("Reset kept state")
	}
}

// FuzzRequests checks the request count against a whole-stream parse for
// any stream split at any points.
func FuzzRequests(f *testing.F) {
	f.Add(cat(msg('P', "\x00x\x00\x00\x00"), msg('S', ""), msg('Q', "SELECT 1\x00")), []byte{2, 9, 1})
	f.Add([]byte{'Q', 0, 0, 0, 3}, []byte{1})
	f.Fuzz(func(t *testing.T, stream, splits []byte) {
		var r pool.Requests
		off := 0
		for _, s := range splits {
			n := min(int(s), len(stream)-off)
			r.Feed(stream[off : off+n])
			off += n
		}
		r.Feed(stream[off:])
		n, boundary, bad := requestsOracle(stream)
		if r.Count() != n || r.AtBoundary() != boundary || (r.Err() != nil) != bad {
			t.Fatalf("count %d boundary %v err %v; want %d %v %v", r.Count(), r.AtBoundary(), r.Err(), n, boundary, bad)
		}
	})
}

func TestTrackerParameters(t *testing.T) {
	stream := cat(msg('C', "SET\x00"), msg('S', "TimeZone\x00Asia/Tokyo\x00"), msg('S', "x\x00\x00"), msg('D', "S\x00\x00\x00\x09ab\x00cd\x00"),
		msg('S', strings.Repeat("y", 9<<10)+"\x00v\x00"), msg('Z', "I"))
	for _, split := range []int{1, 2, 5, 7, 1 << 20} {
		var got []string
		tr := pool.Tracker{OnParameter: func(name, value string) { got = append(got, name+"="+value) }}
		for off := 0; off < len(stream); off += split {
			tr.Feed(stream[off:min(off+split, len(stream))])
		}
		// The one over the size bound passes unread; DataRow bytes are not messages.
		if want := []string{"TimeZone=Asia/Tokyo", "x="}; !slices.Equal(got, want) || !tr.Idle() {
			t.Errorf("split %d: parameters %q (idle %v), want %q", split, got, tr.Idle(), want)
		}
		tr.Reset()
		tr.Feed(msg('S', "a\x00b\x00"))
		if got[len(got)-1] != "a=b" {
			t.Errorf("split %d: Reset dropped OnParameter", split)
		}
	}
}

func TestRequestsPending(t *testing.T) {
	var r pool.Requests
	steps := []struct {
		b       []byte
		pending bool
	}{
		{msg('P', "\x00SELECT 1\x00\x00\x00"), true}, // a Parse waits for its Sync
		{msg('S', ""), false},
		{msg('Q', "COPY t FROM STDIN\x00"), false},
		{cat(msg('d', "1\n"), msg('c', "")), false}, // COPY data is part of that Query
		{msg('H', ""), true},                        // Flush: the server answers without a ReadyForQuery
	}
	for i, s := range steps {
		r.Feed(s.b)
		if r.Pending() != s.pending {
			t.Errorf("step %d: Pending = %v, want %v", i, r.Pending(), s.pending)
		}
	}
}
