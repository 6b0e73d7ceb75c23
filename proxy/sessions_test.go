package proxy

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestFramer feeds a stream of backend messages in random chunks and checks
// that the framer reports a boundary exactly at message ends.
func TestFramer(t *testing.T) {
	var stream []byte
	var ends []int
	for i := range 200 {
		body := make([]byte, rand.IntN(40000)*(i%3)/2)
		stream = append(stream, 'D')
		stream = binary.BigEndian.AppendUint32(stream, uint32(len(body)+4))
		stream = append(stream, body...)
		ends = append(ends, len(stream))
	}
	for range 50 {
		var f framer
		pos, next := 0, 0
		for pos < len(stream) {
			n := min(1+rand.IntN(20000), len(stream)-pos)
			f.feed(stream[pos : pos+n])
			pos += n
			for next < len(ends) && ends[next] < pos {
				next++
			}
			want := next < len(ends) && ends[next] == pos
			if f.atBoundary() != want {
				t.Fatalf("at %d: atBoundary = %v, want %v", pos, f.atBoundary(), want)
			}
		}
	}
	var f framer
	f.feed([]byte{'E', 0, 0, 0, 2})
	if f.atBoundary() {
		t.Fatal("a length below 4 is not a boundary")
	}
}
