package proxy_test

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
)

// The bad-input sweep of issue 14 (malformed startup, SSL/GSS negotiation,
// CancelRequest and SCRAM traffic) as a table, for the classes the other
// tests (TestProtocolViolations, TestSCRAMChannelBindingRules,
// TestParseStartup, the fuzz targets) do not cover. Every row must end
// with an ErrorResponse whose SQLSTATE is in the row's set, or with a clean
// close, and promptly: the router's handshake deadline is far beyond the
// client's, so a row the router leaves hanging fails instead of ending in
// the deadline's 08P01.

// badStep is one thing a row's client does.
type badStep struct {
	send   []byte                          // write these bytes
	answer byte                            // read one byte (an SSL/GSS answer), which must be this
	expect byte                            // read one message, which must be of this type
	tls    bool                            // TLS handshake (after the router's 'S')
	final  func(serverFirst string) []byte // read AuthenticationSASLContinue, send what final builds from it
	hangup bool                            // close our side for writing
}

func sendB(b ...[]byte) badStep { return badStep{send: bytes.Join(b, nil)} }
func answer(c byte) badStep     { return badStep{answer: c} }
func expect(typ byte) badStep   { return badStep{expect: typ} }

var (
	stepTLS    = badStep{tls: true}
	hangup     = badStep{hangup: true}
	terminate  = []byte{'X', 0, 0, 0, 4}
	gssRequest = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877104)
)

// pkt is a startup-phase packet: its length, then body.
func pkt(body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b)+4)), b...)
}

// u32 is a big-endian Int32.
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// params is "name NUL value NUL ..." with the final NUL.
func params(kv ...string) []byte {
	var b []byte
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	return append(b, 0)
}

// startupV is a StartupMessage for protocol major.minor.
func startupV(major, minor uint16, kv ...string) []byte {
	return pkt(u32(uint32(major)<<16|uint32(minor)), params(kv...))
}

// msg is a regular message: type, length, body.
func msg(typ byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	return append(append([]byte{typ}, u32(uint32(len(b)+4))...), b...)
}

// saslInitial is a SASLInitialResponse for mech with data.
func saslInitial(mech, data string) []byte {
	return msg('p', []byte(mech), []byte{0}, u32(uint32(len(data))), []byte(data))
}

// cancelReq is a CancelRequest with a secret of n bytes.
func cancelReq(n int) []byte {
	return pkt(u32(80877102), u32(4242), bytes.Repeat([]byte{7}, n))
}

const clientNonce = "rOprNGfwEbeRWgbNEkqO"

// scramFirst is a client-first-message without channel binding.
const scramFirst = "n,,n=,r=" + clientNonce

// scramFinal builds a client-final-message from the server-first-message
// with the given nonce (nil: the server's) and proof.
func scramFinal(nonce func(server string) string, proof string) func(string) []byte {
	return func(serverFirst string) []byte {
		var r string
		for f := range strings.SplitSeq(serverFirst, ",") {
			if v, ok := strings.CutPrefix(f, "r="); ok {
				r = v
			}
		}
		if nonce != nil {
			r = nonce(r)
		}
		return msg('p', []byte("c=biws,r="+r+",p="+proof))
	}
}

// okProof is a well-formed proof (32 bytes) that is not the right one.
var okProof = base64.StdEncoding.EncodeToString(make([]byte, 32))

// closed is a row's outcome when the router must close without a word.
var closed []string

// tlsAlertOK marks rows whose close may carry a TLS alert record.
const tlsAlertOK = "tls alert"

func TestBadInputSweep(t *testing.T) {
	pgtest.CheckGoroutines(t)
	tt := newTestTLS(t)
	addr, _, logs := startTLSFakeRouter(t, &fakeResolver{err: errors.New("no row may get past authentication")},
		withTLS(proxy.TLSModeAllow, tt),
		func(c *proxy.Config) { c.HandshakeTimeout = time.Minute }) // rows must end long before
	// The baseline: the router serving, with its background loops (the
	// idle sweeper starts with Serve) and no connection.
	poll.Until(t, 10*time.Second, "the router's sweeper to start", func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "sweepLoop")
	})
	baseline := runtime.NumGoroutine()

	// sasl opens a session as user up to the router's SASL offer.
	sasl := func(user string, more ...badStep) []badStep {
		return append([]badStep{sendB(startupV(3, 0, "user", user)), expect('R')}, more...)
	}
	// first answers the SASL offer with a good client-first-message,
	// then goes on with more.
	first := func(user string, more ...badStep) []badStep {
		return sasl(user, append([]badStep{sendB(saslInitial("SCRAM-SHA-256", scramFirst))}, more...)...)
	}
	big := strings.Repeat("x", 9000)
	tests := []struct {
		name  string
		steps []badStep
		want  []string // SQLSTATEs; nil: a clean close (tlsAlertOK: one that may carry a TLS alert)
	}{
		// Malformed startup packets.
		{"length 0", []badStep{sendB(u32(0))}, []string{"08P01"}},
		{"length 4: no code", []badStep{sendB(u32(4))}, []string{"08P01"}},
		{"length 7", []badStep{sendB(u32(7), []byte{0, 3, 0})}, []string{"08P01"}},
		{"length 8: a version and nothing else", []badStep{sendB(pkt(u32(3 << 16)))}, []string{"08P01"}},
		{"length 10001", []badStep{sendB(u32(10001), u32(3<<16), bytes.Repeat([]byte{'a'}, 9993))}, []string{"08P01"}},
		{"most negative length", []badStep{sendB(u32(0x80000000))}, []string{"08P01"}},
		{"protocol 4.0", []badStep{sendB(startupV(4, 0, "user", "acme"))}, []string{"0A000"}},
		{"protocol 1.0", []badStep{sendB(startupV(1, 0, "user", "acme"))}, []string{"0A000"}},
		{"protocol 0.0", []badStep{sendB(startupV(0, 0, "user", "acme"))}, []string{"0A000"}},
		{"protocol 3.65535, then close", []badStep{sendB(startupV(3, 65535, "user", "b-v")), expect('v'), expect('R'), hangup}, closed},
		{"protocol 3.1 without a user", []badStep{sendB(startupV(3, 1, "database", "app"))}, []string{"28000"}},
		{"empty user", []badStep{sendB(startupV(3, 0, "user", ""))}, []string{"28000"}},
		{"no parameters", []badStep{sendB(startupV(3, 0))}, []string{"28000"}},
		{"unterminated parameters", []badStep{sendB(pkt(u32(3<<16), []byte("user\x00acme\x00")))}, []string{"08P01"}},
		{"name without a value", []badStep{sendB(pkt(u32(3<<16), []byte("user\x00acme\x00database\x00\x00")))}, []string{"08P01"}},
		{"unterminated name", []badStep{sendB(pkt(u32(3<<16), []byte("user\x00acme\x00data")))}, []string{"08P01"}},
		{"bytes after the terminator", []badStep{sendB(pkt(u32(3<<16), []byte("user\x00acme\x00\x00junk")))}, []string{"08P01"}},
		{"empty name before the terminator", []badStep{sendB(pkt(u32(3<<16), []byte("\x00acme\x00\x00")))}, []string{"08P01"}},
		{"duplicate user: the last wins, as in Postgres", []badStep{sendB(startupV(3, 0, "user", "a", "user", "b-dup")), expect('R'), hangup}, closed},
		{"oversized parameter value within the cap", []badStep{sendB(startupV(3, 0, "user", "b-big", "application_name", big)), expect('R'), hangup}, closed},
		{"replication=true", []badStep{sendB(startupV(3, 0, "user", "acme", "replication", "true"))}, []string{"0A000"}},
		{"replication=garbage", []badStep{sendB(startupV(3, 0, "user", "acme", "replication", "maybe"))}, []string{"22023"}},
		{"replication=off is no replication", []badStep{sendB(startupV(3, 0, "user", "b-repl", "replication", "off")), expect('R'), hangup}, closed},
		{"replication=database", []badStep{sendB(startupV(3, 0, "user", "acme", "replication", "database"))}, []string{"0A000"}},
		{"unknown special code 1234.5681", []badStep{sendB(pkt(u32(1234<<16 | 5681)))}, []string{"0A000"}},
		{"non-UTF-8 user", []badStep{sendB(startupV(3, 0, "user", "\xff\xfe"))}, []string{"28000", "28P01"}},
		{"PasswordMessage instead of a startup packet", []badStep{sendB(msg('p', []byte("secret\x00")))}, []string{"08P01"}},

		// SSL and GSS negotiation.
		{"SSLRequest inside TLS", []badStep{sendB(sslRequest), answer('S'), stepTLS, sendB(sslRequest)}, []string{"08P01"}},
		{"GSSENCRequest then SSLRequest", []badStep{sendB(gssRequest), answer('N'), sendB(sslRequest), answer('S'), stepTLS,
			sendB(startupV(3, 0, "user", "b-gss")), expect('R'), hangup}, closed},
		{"GSSENCRequest twice", []badStep{sendB(gssRequest), answer('N'), sendB(gssRequest)}, []string{"08P01"}},
		{"GSSENCRequest inside TLS", []badStep{sendB(sslRequest), answer('S'), stepTLS, sendB(gssRequest)}, []string{"08P01"}},
		{"data pipelined after SSLRequest (TLS on)", []badStep{sendB(sslRequest, startupV(3, 0, "user", "acme"))}, []string{"08P01"}},
		{"data pipelined after GSSENCRequest", []badStep{sendB(gssRequest, startupV(3, 0, "user", "acme"))}, []string{"08P01"}},
		{"garbage instead of a TLS ClientHello", []badStep{sendB(sslRequest), answer('S'), sendB([]byte("hello, this is not TLS at all\r\n")), hangup}, []string{tlsAlertOK}},
		{"plaintext startup after 'S'", []badStep{sendB(sslRequest), answer('S'), sendB(startupV(3, 0, "user", "acme")), hangup}, []string{tlsAlertOK}},
		{"truncated ClientHello, then close", []badStep{sendB(sslRequest), answer('S'), sendB([]byte{0x16, 3, 1, 0, 200, 1, 0}), hangup}, []string{tlsAlertOK}},
		{"direct TLS garbage", []badStep{sendB([]byte{0x16}, []byte("garbage after a handshake byte")), hangup}, []string{tlsAlertOK}},
		{"SSLRequest with trailing bytes in its length", []badStep{sendB(pkt(u32(80877103), u32(0))), answer('S'), hangup}, []string{tlsAlertOK}},
		{"nothing after 'N'", []badStep{sendB(gssRequest), answer('N'), hangup}, closed},

		// CancelRequest.
		{"CancelRequest without a secret", []badStep{sendB(pkt(u32(80877102), u32(4242)))}, []string{"08P01"}},
		{"CancelRequest without a process ID", []badStep{sendB(pkt(u32(80877102)))}, []string{"08P01"}},
		{"CancelRequest with a 3-byte secret", []badStep{sendB(cancelReq(3))}, []string{"08P01"}},
		{"CancelRequest with a 32-byte unknown key", []badStep{sendB(cancelReq(32))}, closed},
		{"CancelRequest with a 256-byte unknown key", []badStep{sendB(cancelReq(256))}, closed},
		{"CancelRequest with a 257-byte secret", []badStep{sendB(cancelReq(257))}, []string{"08P01"}},
		{"CancelRequest with a bad code", []badStep{sendB(pkt(u32(80877101), u32(4242), u32(7)))}, []string{"0A000"}},
		{"CancelRequest on a TLS connection", []badStep{sendB(sslRequest), answer('S'), stepTLS, sendB(cancelReq(4))}, closed},
		{"CancelRequest after GSSENC refused", []badStep{sendB(gssRequest), answer('N'), sendB(cancelReq(4))}, closed},
		{"CancelRequest with data pipelined after it", []badStep{sendB(cancelReq(4), startupV(3, 0, "user", "acme"))}, []string{"08P01"}},

		// SCRAM.
		{"wrong mechanism", sasl("b-mech", sendB(saslInitial("SCRAM-SHA-1", scramFirst))), []string{"08P01"}},
		{"empty mechanism", sasl("b-mech0", sendB(saslInitial("", scramFirst))), []string{"08P01"}},
		{"malformed client-first", sasl("b-first", sendB(saslInitial("SCRAM-SHA-256", "hello"))), []string{"08P01"}},
		{"client-first with an unknown flag", sasl("b-flag", sendB(saslInitial("SCRAM-SHA-256", "q,,n=,r=abc"))), []string{"08P01"}},
		{"p= with an unknown binding type over TLS", []badStep{sendB(sslRequest), answer('S'), stepTLS, sendB(startupV(3, 0, "user", "b-cbt")), expect('R'),
			sendB(saslInitial("SCRAM-SHA-256-PLUS", "p=tls-unique,,n=,r=abc"))}, []string{"08P01", "0A000"}},
		{"y with -PLUS as the mechanism", []badStep{sendB(sslRequest), answer('S'), stepTLS, sendB(startupV(3, 0, "user", "b-ypl")), expect('R'),
			sendB(saslInitial("SCRAM-SHA-256-PLUS", "y,,n=,r=abc"))}, []string{"08P01"}},
		{"authorization identity", sasl("b-authz", sendB(saslInitial("SCRAM-SHA-256", "n,a=admin,n=,r=abc"))), []string{"0A000"}},
		{"empty client nonce: the server's nonce is fresh", sasl("b-nonce0", sendB(saslInitial("SCRAM-SHA-256", "n,,n=,r=")), expect('R'), hangup), closed},
		{"mandatory extension", sasl("b-ext", sendB(saslInitial("SCRAM-SHA-256", "n,,m=ext,n=,r=abc"))), []string{"08P01", "0A000"}},
		{"SASL data length -1", sasl("b-neg", sendB(msg('p', []byte("SCRAM-SHA-256\x00"), u32(0xffffffff)))), []string{"08P01"}},
		{"SASL data length past the message", sasl("b-over", sendB(msg('p', []byte("SCRAM-SHA-256\x00"), u32(100), []byte("n,,n=,r=abc")))), []string{"08P01"}},
		{"mechanism not terminated", sasl("b-mechnul", sendB(msg('p', []byte("SCRAM-SHA-256")))), []string{"08P01"}},
		{"PasswordMessage before SASL", sasl("b-pw", sendB(msg('p', []byte("router-test-secret\x00")))), []string{"08P01", "28P01"}},
		{"oversized SASL response", sasl("b-huge", sendB(msg('p', []byte("SCRAM-SHA-256\x00"), u32(1<<20), bytes.Repeat([]byte{'a'}, 1<<20)))), []string{"08P01"}},
		{"Query instead of SASL", sasl("b-query", sendB(msg('Q', []byte("SELECT 1\x00")))), []string{"08P01"}},
		{"SSLRequest instead of SASL", sasl("b-ssl", sendB(sslRequest)), []string{"08P01"}},
		{"truncated SASLInitialResponse, then close", sasl("b-trunc", sendB(saslInitial("SCRAM-SHA-256", scramFirst)[:12]), hangup), closed},
		{"Terminate after the SASL offer (answered as Postgres does)", sasl("b-term1", sendB(terminate)), []string{"08P01"}},
		{"close after the SASL offer", sasl("b-close1", hangup), closed},
		{"wrong nonce in client-final", first("b-badnonce", badStep{final: scramFinal(func(string) string { return clientNonce + "x" }, okProof)}), []string{"08P01", "28P01"}},
		{"client-final with only the client's nonce", first("b-halfnonce", badStep{final: scramFinal(func(string) string { return clientNonce }, okProof)}), []string{"08P01", "28P01"}},
		{"bad base64 proof", first("b-b64", badStep{final: scramFinal(nil, "!!!not-base64!!!")}), []string{"08P01"}},
		{"short proof", first("b-short", badStep{final: scramFinal(nil, base64.StdEncoding.EncodeToString([]byte("short")))}), []string{"08P01"}},
		{"wrong proof", first("b-wrong", badStep{final: scramFinal(nil, okProof)}), []string{"28P01"}},
		{"client-final without a proof", first("b-noproof", badStep{final: func(sf string) []byte {
			b := scramFinal(nil, "")(sf)
			return msg('p', bytes.TrimSuffix(b[5:], []byte(",p=")))
		}}), []string{"08P01", "28P01"}},
		{"client-final with another channel binding", first("b-cbind", badStep{final: func(sf string) []byte {
			b := scramFinal(nil, okProof)(sf)
			return bytes.Replace(b, []byte("c=biws"), []byte("c=eSws"), 1)
		}}), []string{"08P01", "28P01"}},
		{"empty client-final", first("b-empty", expect('R'), sendB(msg('p'))), []string{"08P01", "28P01"}},
		{"second SASLInitialResponse", first("b-again", expect('R'), sendB(saslInitial("SCRAM-SHA-256", scramFirst))), []string{"08P01", "28P01"}},
		{"Terminate after server-first (answered as Postgres does)", first("b-term2", expect('R'), sendB(terminate)), []string{"08P01"}},
		{"close mid-client-final", first("b-close2", expect('R'), sendB([]byte{'p', 0, 0, 0, 100, 'c'}), hangup), closed},
	}
	if len(tests) < 50 {
		t.Fatalf("%d rows; the sweep had 50 classes", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c net.Conn = rawConn(t, addr)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // the router's deadline is a minute: a hang fails here
			for i, s := range tt.steps {
				c = s.run(t, i, c)
			}
			checkOutcome(t, c, tt.want)
		})
	}
	// Every connection has ended: the router holds nothing of them.
	poll.Until(t, 10*time.Second, "the router's goroutines to return to their baseline", func() bool {
		return runtime.NumGoroutine() <= baseline
	})
	for _, bad := range []string{"panic", "internal error"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("router log mentions %q", bad)
		}
	}
}

// run does step i on c and returns the connection to go on with.
func (s badStep) run(t *testing.T, i int, c net.Conn) net.Conn {
	t.Helper()
	switch {
	case s.send != nil:
		if _, err := c.Write(s.send); err != nil {
			t.Fatalf("step %d: write: %v", i, err)
		}
	case s.answer != 0:
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != s.answer {
			t.Fatalf("step %d: answered %q (%v), want %q", i, b[0], err, s.answer)
		}
	case s.expect != 0:
		if typ, body := readMsg(t, c); typ != s.expect {
			t.Fatalf("step %d: got %q %q, want a %q message", i, typ, body, s.expect)
		}
	case s.tls:
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the row tests the protocol, not the certificate
		if err := tc.Handshake(); err != nil {
			t.Fatalf("step %d: TLS: %v", i, err)
		}
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		return tc
	case s.final != nil:
		typ, body := readMsg(t, c)
		if typ != 'R' || len(body) < 4 || binary.BigEndian.Uint32(body) != 11 {
			t.Fatalf("step %d: got %q %q, want AuthenticationSASLContinue", i, typ, body)
		}
		if _, err := c.Write(s.final(string(body[4:]))); err != nil {
			t.Fatalf("step %d: write: %v", i, err)
		}
	case s.hangup:
		var err error
		switch cc := c.(type) {
		case *net.TCPConn:
			err = cc.CloseWrite()
		case *tls.Conn:
			err = cc.CloseWrite()
		}
		if err != nil {
			t.Fatalf("step %d: close: %v", i, err)
		}
	}
	return c
}

// readMsg reads one backend message.
func readMsg(t *testing.T, c net.Conn) (byte, []byte) {
	t.Helper()
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("reading a message: %v", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 1<<16 {
		t.Fatalf("message %q of length %d", hdr[0], n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatalf("reading a message: %v", err)
	}
	return hdr[0], body
}

// checkOutcome reads what the router sends until it closes: nothing (want
// nil), one ErrorResponse with a code in want, or, where want allows it, a
// TLS alert.
func checkOutcome(t *testing.T, c net.Conn, want []string) {
	t.Helper()
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset by peer") {
		t.Fatalf("reading the router's answer: %v (got %q)", err, b)
	}
	switch {
	case len(b) == 0 && (want == nil || slices.Contains(want, tlsAlertOK)):
		return
	case len(b) > 0 && b[0] == 0x15 && slices.Contains(want, tlsAlertOK): // a TLS alert record
		return
	case want == nil || slices.Contains(want, tlsAlertOK):
		t.Fatalf("router answered %q, want a clean close", b)
	}
	if len(b) < 5 || b[0] != 'E' {
		t.Fatalf("router answered %q, want an ErrorResponse with one of %v", b, want)
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if len(b) != 1+n {
		t.Fatalf("router sent %d bytes besides its ErrorResponse (%q)", len(b)-1-n, b)
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(b[5:]); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(want, e.Code) {
		t.Fatalf("router answered %s %q, want one of %v", e.Code, e.Message, want)
	}
	if e.Message == "" || strings.Contains(e.Message, appSecret) {
		t.Fatalf("error message %q", e.Message)
	}
}
