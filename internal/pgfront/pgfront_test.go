package pgfront

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestReadStartupPacket(t *testing.T) {
	packet := func(n uint32, body []byte) []byte { return append(binary.BigEndian.AppendUint32(nil, n), body...) }
	for _, tc := range []struct {
		name string
		in   []byte
		want []byte
		code string // of an *Error; "" with want nil: another error
	}{
		{"ssl request", packet(8, binary.BigEndian.AppendUint32(nil, SSLRequestCode)), binary.BigEndian.AppendUint32(nil, SSLRequestCode), ""},
		{"too short", packet(7, []byte{1, 2, 3}), nil, "08P01"},
		{"negative", packet(0xffffffff, nil), nil, "08P01"},
		{"too long", packet(MaxStartupPacket+1, nil), nil, "08P01"},
		{"truncated body", packet(12, []byte{0, 3, 0}), nil, ""},
		{"no header", []byte{0, 0}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadStartupPacket(bytes.NewReader(tc.in))
			var e *Error
			switch {
			case tc.want != nil:
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Fatalf("= %v, %v; want %v", got, err, tc.want)
				}
			case tc.code != "":
				if !errors.As(err, &e) || e.Code != tc.code {
					t.Fatalf("err = %v, want SQLSTATE %s", err, tc.code)
				}
			case err == nil || errors.As(err, &e):
				t.Fatalf("err = %v, want a read error", err)
			}
		})
	}
}

func TestRelayCleanEnd(t *testing.T) {
	client, server := &pipeEnd{r: bytes.NewReader([]byte("query"))}, &pipeEnd{r: bytes.NewReader(nil)}
	if err := Relay(client, server); err != nil {
		t.Fatalf("Relay = %v, want nil at EOF", err)
	}
	if got := server.w.String(); got != "query" {
		t.Fatalf("server got %q", got)
	}
}

type pipeEnd struct {
	r io.Reader
	w bytes.Buffer
}

func (p *pipeEnd) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeEnd) Write(b []byte) (int, error) { return p.w.Write(b) }
