package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
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
		_, err := readStartupPacket(r, DefaultMaxStartupPacket)
		var ce *ClientError
		if !errors.As(err, &ce) || ce.Code != codeProtocolViolation {
			t.Errorf("length %d: err = %v, want 08P01", n, err)
		}
	}
	full := binary.BigEndian.AppendUint32(nil, 8)
	full = binary.BigEndian.AppendUint32(full, sslRequestCode)
	if _, err := readStartupPacket(bytes.NewReader(full), DefaultMaxStartupPacket); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseStartup checks that no input makes the startup parser panic, and
// that what it accepts round-trips through its fields.
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
