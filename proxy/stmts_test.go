package proxy

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

func frontendMsg(typ byte, body string) []byte {
	m := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[1:], uint32(4+len(body)))
	return append(m, body...)
}

func feedAll(t testing.TB, w *stmtRewriter, stream []byte, split int) ([]byte, []string) {
	var out []byte
	var names []string
	for off := 0; off < len(stream); off += split {
		var need []*statement
		var err error
		out, need, err = w.feed(out, stream[off:min(off+split, len(stream))], need)
		if err != nil {
			t.Fatalf("split %d: %v", split, err)
		}
		for _, st := range need {
			names = append(names, st.server)
		}
	}
	return out, names
}

func TestStmtRewriter(t *testing.T) {
	query := "SELECT $1::int\x00\x00\x01\x00\x00\x00\x17"
	srv := serverStatementName([]byte("SELECT $1::int"), []byte("\x00\x01\x00\x00\x00\x17"))
	stream := bytes.Join([][]byte{
		frontendMsg('P', "s1\x00"+query),
		frontendMsg('D', "Ss1\x00"),
		frontendMsg('S', ""),
		frontendMsg('B', "\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x0142\x00\x00"),
		frontendMsg('E', "\x00\x00\x00\x00\x00"),
		frontendMsg('B', "\x00other\x00\x00\x00\x00\x00\x00\x00"), // not the client's: as it is
		frontendMsg('C', "Ss1\x00"),
		frontendMsg('S', ""),
	}, nil)
	want := bytes.Join([][]byte{
		frontendMsg('P', "\x00"+query),
		frontendMsg('D', "S"+srv+"\x00"),
		frontendMsg('S', ""),
		frontendMsg('B', "\x00"+srv+"\x00\x00\x00\x00\x01\x00\x00\x00\x0142\x00\x00"),
		frontendMsg('E', "\x00\x00\x00\x00\x00"),
		frontendMsg('B', "\x00other\x00\x00\x00\x00\x00\x00\x00"),
		frontendMsg('C', "S"+closedStatement+"\x00"),
		frontendMsg('S', ""),
	}, nil)
	for _, split := range []int{1, 2, 3, 5, 7, 11, 1 << 20} {
		w := &stmtRewriter{}
		out, names := feedAll(t, w, stream, split)
		if !bytes.Equal(out, want) {
			t.Errorf("split %d:\n got %q\nwant %q", split, out, want)
		}
		if len(names) != 3 || names[0] != srv || names[2] != srv {
			t.Errorf("split %d: needs %q", split, names)
		}
		if len(w.stmts) != 0 {
			t.Errorf("split %d: Close left %d statements", split, len(w.stmts))
		}
	}
	var w stmtRewriter
	if _, _, err := w.feed(nil, frontendMsg('P', "no-nul"), nil); err == nil {
		t.Error("a malformed Parse was accepted")
	}
}

// FuzzStmtRewriter checks that the rewrite does not depend on how the
// stream is split, and that no input makes it panic.
func FuzzStmtRewriter(f *testing.F) {
	f.Add(bytes.Join([][]byte{frontendMsg('P', "a\x00SELECT 1\x00\x00\x00"), frontendMsg('B', "\x00a\x00\x00\x00\x00\x00\x00\x00"),
		frontendMsg('D', "Sa\x00"), frontendMsg('C', "Sa\x00"), frontendMsg('S', "")}, nil), []byte{3, 9, 1})
	f.Add([]byte{'P', 0, 0, 0, 3}, []byte{1})
	f.Fuzz(func(t *testing.T, stream, splits []byte) {
		whole := &stmtRewriter{}
		want, _, werr := whole.feed(nil, stream, nil)
		parts := &stmtRewriter{}
		var got []byte
		var gerr error
		off := 0
		for _, s := range append(slices.Clip(splits), 255) {
			n := min(int(s), len(stream)-off)
			if got, _, gerr = parts.feed(got, stream[off:off+n], nil); gerr != nil {
				break
			}
			off += n
		}
		if off < len(stream) && gerr == nil {
			got, _, gerr = parts.feed(got, stream[off:], nil)
		}
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("whole: %v; in pieces: %v", werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("in pieces %q, whole %q", got, want)
		}
	})
}
