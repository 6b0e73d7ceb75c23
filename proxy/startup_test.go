package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// startupBytes builds a startup-phase packet body (without the length word).
func startupBody(code uint32, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, code)
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	return append(b, 0)
}

func TestParseStartup(t *testing.T) {
	tests := []struct {
		name     string
		body     []byte
		kind     startupKind
		minor    uint16
		params   map[string]string
		options  []string
		wantCode string // SQLSTATE of the expected error, "" for success
	}{
		{"v3.0", startupBody(3<<16, "user", "acme", "database", "app"), kindStartup, 0,
			map[string]string{"user": "acme", "database": "app"}, nil, ""},
		{"v3.2 with protocol option", startupBody(3<<16|2, "user", "acme", "_pq_.test", "x"), kindStartup, 2,
			map[string]string{"user": "acme"}, []string{"_pq_.test"}, ""},
		{"no params", startupBody(3 << 16), kindStartup, 0, map[string]string{}, nil, ""},
		{"ssl", binary.BigEndian.AppendUint32(nil, sslRequestCode), kindSSLRequest, 0, nil, nil, ""},
		{"gssenc", binary.BigEndian.AppendUint32(nil, gssEncRequestCode), kindGSSENCRequest, 0, nil, nil, ""},
		{"cancel", binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, cancelRequestCode), 42), 7), kindCancel, 0, nil, nil, ""},
		{"cancel too short", binary.BigEndian.AppendUint32(nil, cancelRequestCode), 0, 0, nil, nil, codeProtocolViolation},
		{"protocol 2", startupBody(2<<16, "user", "acme"), 0, 0, nil, nil, codeFeatureNotSupported},
		{"protocol 4", startupBody(4<<16, "user", "acme"), 0, 0, nil, nil, codeFeatureNotSupported},
		{"garbage", []byte("GET / HTTP/1.1\r\n"), 0, 0, nil, nil, codeFeatureNotSupported},
		{"missing final NUL", binary.BigEndian.AppendUint32(nil, 3<<16), 0, 0, nil, nil, codeProtocolViolation},
		{"value without NUL", append(binary.BigEndian.AppendUint32(nil, 3<<16), "user\x00acme"...), 0, 0, nil, nil, codeProtocolViolation},
		{"bytes after terminator", append(startupBody(3<<16, "user", "acme"), 'x'), 0, 0, nil, nil, codeProtocolViolation},
		{"too short", []byte{0, 3}, 0, 0, nil, nil, codeProtocolViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseStartup(tt.body)
			if tt.wantCode != "" {
				var ce *ClientError
				if !errors.As(err, &ce) || ce.Code != tt.wantCode {
					t.Fatalf("err = %v, want ClientError %s", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.kind != tt.kind || p.minor != tt.minor {
				t.Fatalf("kind, minor = %v, %v; want %v, %v", p.kind, p.minor, tt.kind, tt.minor)
			}
			if len(p.params) != len(tt.params) {
				t.Fatalf("params = %v, want %v", p.params, tt.params)
			}
			for k, v := range tt.params {
				if p.params[k] != v {
					t.Fatalf("params = %v, want %v", p.params, tt.params)
				}
			}
			if len(p.protoOptions) != len(tt.options) {
				t.Fatalf("options = %v, want %v", p.protoOptions, tt.options)
			}
			if tt.kind == kindCancel && (p.pid != 42 || !bytes.Equal(p.secret, []byte{0, 0, 0, 7})) {
				t.Fatalf("cancel = %d %x", p.pid, p.secret)
			}
		})
	}
}

func TestReadStartupPacketLengthCap(t *testing.T) {
	for _, n := range []uint32{0, 4, 7, 10001, 1 << 30, 0xFFFFFFFF} {
		r := bytes.NewReader(binary.BigEndian.AppendUint32(nil, n))
		_, err := (&startupReader{r: r}).next(DefaultMaxStartupPacket)
		var ce *ClientError
		if !errors.As(err, &ce) || ce.Code != codeProtocolViolation {
			t.Errorf("length %d: err = %v, want 08P01", n, err)
		}
	}
	full := binary.BigEndian.AppendUint32(nil, 8)
	full = binary.BigEndian.AppendUint32(full, sslRequestCode)
	if _, err := (&startupReader{r: bytes.NewReader(full)}).next(DefaultMaxStartupPacket); err != nil {
		t.Fatal(err)
	}
}

// TestStartupReader: packets come whole however the bytes arrive (one at a
// time, or several packets and a bit in one read), a packet larger than the
// buffer too, whose rest is read straight into it (never past it); the
// bytes read past the last packet stay pending; the ends of the stream are
// io.EOF before a packet and io.ErrUnexpectedEOF inside one.
func TestStartupReader(t *testing.T) {
	pkt := func(body []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
	}
	ssl := pkt(binary.BigEndian.AppendUint32(nil, sslRequestCode))
	small := startupBody(3<<16, "user", "u")
	big := startupBody(3<<16, "user", "u", "options", strings.Repeat("x", 600))
	for _, tc := range []struct {
		name        string
		r           func([]byte) io.Reader
		second      []byte
		wantPending string
	}{
		{"one read", func(b []byte) io.Reader { return bytes.NewReader(b) }, small, "Q"},
		{"one read, large packet", func(b []byte) io.Reader { return bytes.NewReader(b) }, big, ""},
		{"a byte at a time", func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) }, big, ""},
	} {
		stream := append(append(append([]byte{}, ssl...), pkt(tc.second)...), 'Q')
		sr := &startupReader{r: tc.r(stream)}
		b1, err := sr.next(DefaultMaxStartupPacket)
		if err != nil || !bytes.Equal(b1, ssl[4:]) {
			t.Fatalf("%s: first packet %x, %v", tc.name, b1, err)
		}
		b2, err := sr.next(DefaultMaxStartupPacket)
		if err != nil || !bytes.Equal(b2, tc.second) {
			t.Fatalf("%s: second packet (%d bytes), %v", tc.name, len(b2), err)
		}
		if string(sr.pending) != tc.wantPending {
			t.Errorf("%s: pending %q, want %q", tc.name, sr.pending, tc.wantPending)
		}
	}
	if _, err := (&startupReader{r: bytes.NewReader(nil)}).next(DefaultMaxStartupPacket); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
	for _, cut := range []int{2, 6} {
		if _, err := (&startupReader{r: bytes.NewReader(ssl[:cut])}).next(DefaultMaxStartupPacket); err != io.ErrUnexpectedEOF {
			t.Errorf("cut at %d: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}

func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody(3<<16, "user", "tenant_42", "database", "app"))
	f.Add(startupBody(3<<16|2, "user", "acme", "_pq_.x", "1"))
	f.Add(binary.BigEndian.AppendUint32(nil, sslRequestCode))
	f.Add(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, cancelRequestCode), 1), 2))
	f.Add([]byte("\x00\x02\x00\x00user\x00u\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseStartup(b)
		if err != nil {
			var ce *ClientError
			if !errors.As(err, &ce) {
				t.Fatalf("error is not a ClientError: %v", err)
			}
			return
		}
		if p.kind == kindStartup {
			for k := range p.params {
				if k == "" || bytes.IndexByte([]byte(k), 0) >= 0 {
					t.Fatalf("bad key %q", k)
				}
			}
		}
	})
}

func BenchmarkParseStartup(b *testing.B) {
	body := startupBody(3<<16, "user", "tenant_42", "database", "app", "application_name", "psql", "client_encoding", "UTF8")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := parseStartup(body); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseBool(t *testing.T) {
	for v, want := range map[string][2]bool{ // {value, valid}
		"true": {true, true}, "T": {true, true}, "yes": {true, true}, "on": {true, true}, "1": {true, true},
		"false": {false, true}, "F": {false, true}, "no": {false, true}, "OFF": {false, true}, "of": {false, true}, "0": {false, true},
		"o": {false, false}, "": {false, false}, "database": {false, false}, "2": {false, false}, "truex": {false, false},
	} {
		if b, ok := parseBool(v); b != want[0] || ok != want[1] {
			t.Errorf("parseBool(%q) = %v, %v; want %v, %v", v, b, ok, want[0], want[1])
		}
	}
}
