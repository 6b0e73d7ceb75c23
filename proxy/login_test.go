package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// fakeUpstream accepts one connection on 127.0.0.1:0 and runs script on it
// with the startup message already read. The script's error, if any, fails t.
func fakeUpstream(t *testing.T, script func(be *pgproto3.Backend, c net.Conn, startup *pgproto3.StartupMessage) error) resolver.Route {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		_ = ln.Close()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		be := pgproto3.NewBackend(c, c)
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			done <- err
			return
		}
		sm, ok := m.(*pgproto3.StartupMessage)
		if !ok {
			done <- errors.New("not a StartupMessage")
			return
		}
		done <- script(be, c, sm)
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		if err := <-done; err != nil {
			t.Errorf("fake upstream: %v", err)
		}
	})
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	return resolver.Route{Endpoint: provision.Endpoint{Host: host, Port: uint16(p), Database: "db_t", User: "role_t", Password: "s3cret-Upstream"}}
}

func loginServer() *Server {
	return &Server{dial: (&net.Dialer{}).DialContext, scram: newSCRAMClients(8)}
}

// scramExchange runs the server side of SCRAM-SHA-256 for password. When
// skipFinal is set it answers AuthenticationOk without proving itself.
func scramExchange(be *pgproto3.Backend, password string, skipFinal bool) error {
	salt := []byte("0123456789abcdef")
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return err
	}
	creds := cl.GetStoredCredentials(scram.KeyFactors{Salt: string(salt), Iters: 4096})
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return err
	}
	conv := srv.NewConversation()
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
	if err := be.Flush(); err != nil {
		return err
	}
	be.SetAuthType(pgproto3.AuthTypeSASL)
	m, err := be.Receive()
	if err != nil {
		return err
	}
	first, ok := m.(*pgproto3.SASLInitialResponse)
	if !ok {
		return errors.New("want SASLInitialResponse")
	}
	out, err := conv.Step(string(first.Data))
	if err != nil {
		return err
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(out)})
	if err := be.Flush(); err != nil {
		return err
	}
	be.SetAuthType(pgproto3.AuthTypeSASLContinue)
	if m, err = be.Receive(); err != nil {
		return err
	}
	final, ok := m.(*pgproto3.SASLResponse)
	if !ok {
		return errors.New("want SASLResponse")
	}
	out, err = conv.Step(string(final.Data))
	if err != nil {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
		return be.Flush()
	}
	if !skipFinal {
		be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(out)})
	}
	be.Send(&pgproto3.AuthenticationOk{})
	return nil
}

func sendReady(be *pgproto3.Backend) error {
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return be.Flush()
}

func TestLoginSCRAM(t *testing.T) {
	s := loginServer()
	for i := range 2 {
		rt := fakeUpstream(t, func(be *pgproto3.Backend, c net.Conn, sm *pgproto3.StartupMessage) error {
			if sm.Parameters["user"] != "role_t" || sm.Parameters["database"] != "db_t" || sm.Parameters["application_name"] != "app" {
				return errors.New("unexpected startup parameters: " + strings.Join([]string{sm.Parameters["user"], sm.Parameters["database"]}, ","))
			}
			if err := scramExchange(be, "s3cret-Upstream", false); err != nil {
				return err
			}
			// Bytes after ReadyForQuery belong to the pump, not to login:
			// in the same segment as the greeting (read ahead by login),
			// or later (still in the socket).
			be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
			be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if i == 0 {
				be.Send(&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "after"})
			}
			if err := be.Flush(); err != nil {
				return err
			}
			if i == 0 {
				return nil
			}
			_, err := c.Write([]byte("after"))
			return err
		})
		hj, err := s.login(context.Background(), rt, map[string]string{"application_name": "app"})
		if err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		if hj.PID != 4242 || string(hj.SecretKey) != "\x01\x02\x03\x04" || hj.TxStatus != 'I' || hj.ParameterStatuses["server_version"] != "15.0" {
			t.Fatalf("login %d: got %+v", i, hj)
		}
		want := []byte("after")
		if i == 0 {
			want, _ = (&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "after"}).Encode(nil)
		}
		buf := make([]byte, len(want))
		_ = hj.Conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a lost prefix fails, not hangs
		if _, err := io.ReadFull(hj.Conn, buf); err != nil || string(buf) != string(want) {
			t.Fatalf("login %d: the pump's bytes: %q, %v", i, buf, err)
		}
		_ = hj.Conn.Close()
	}
	// Both logins used one client, which holds the keys derived for this
	// salt: the second login did not run PBKDF2 again.
	if n := s.scram.lru.Len(); n != 1 {
		t.Fatalf("%d cached SCRAM clients, want 1", n)
	}
	a, _ := s.scram.get("role_t", "s3cret-Upstream")
	b, _ := s.scram.get("role_t", "rotated")
	if a == b {
		t.Fatal("a changed password must not reuse the cached client")
	}
}

func TestLoginSCRAMWrongPassword(t *testing.T) {
	rt := fakeUpstream(t, func(be *pgproto3.Backend, _ net.Conn, _ *pgproto3.StartupMessage) error {
		return scramExchange(be, "another password", false)
	})
	_, err := loginServer().login(context.Background(), rt, nil)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("got %v, want the upstream's 28P01", err)
	}
	if !retryableUpstream(err) {
		t.Fatal("a refused login must be retried with a fresh route")
	}
}

func TestLoginRefusesServerThatSkipsProof(t *testing.T) {
	rt := fakeUpstream(t, func(be *pgproto3.Backend, _ net.Conn, _ *pgproto3.StartupMessage) error {
		if err := scramExchange(be, "s3cret-Upstream", true); err != nil {
			return err
		}
		return sendReady(be)
	})
	_, err := loginServer().login(context.Background(), rt, nil)
	if err == nil || !strings.Contains(err.Error(), "without proving") {
		t.Fatalf("got %v, want a refusal", err)
	}
}

func TestLoginPasswordMethods(t *testing.T) {
	for _, method := range []string{"cleartext", "md5"} {
		t.Run(method, func(t *testing.T) {
			salt := [4]byte{9, 8, 7, 6}
			rt := fakeUpstream(t, func(be *pgproto3.Backend, _ net.Conn, _ *pgproto3.StartupMessage) error {
				want := "s3cret-Upstream"
				if method == "md5" {
					be.Send(&pgproto3.AuthenticationMD5Password{Salt: salt})
					want = md5Password("role_t", want, salt[:])
					be.SetAuthType(pgproto3.AuthTypeMD5Password)
				} else {
					be.Send(&pgproto3.AuthenticationCleartextPassword{})
					be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
				}
				if err := be.Flush(); err != nil {
					return err
				}
				m, err := be.Receive()
				if err != nil {
					return err
				}
				if pm, ok := m.(*pgproto3.PasswordMessage); !ok || pm.Password != want {
					return errors.New("wrong password message")
				}
				be.Send(&pgproto3.AuthenticationOk{})
				return sendReady(be)
			})
			hj, err := loginServer().login(context.Background(), rt, nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = hj.Conn.Close()
		})
	}
}

func TestLoginBadUpstream(t *testing.T) {
	tests := []struct {
		name string
		send []byte
		want string
	}{
		{"huge message", []byte{'S', 0x7f, 0, 0, 0}, "invalid length"},
		{"negative length", []byte{'S', 0xff, 0xff, 0xff, 0xff}, "invalid length"},
		{"unknown auth", []byte{'R', 0, 0, 0, 8, 0, 0, 0, 7}, "unsupported authentication"},
		{"short auth", []byte{'R', 0, 0, 0, 6, 0, 0}, "malformed"},
		{"SASL continue first", []byte{'R', 0, 0, 0, 9, 0, 0, 0, 11, 'x'}, "not started"},
		{"unexpected message", []byte{'D', 0, 0, 0, 4}, "unexpected message"},
		{"hang up", nil, "EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rt := fakeUpstream(t, func(_ *pgproto3.Backend, c net.Conn, _ *pgproto3.StartupMessage) error {
				_, err := c.Write(tc.send)
				return err
			})
			_, err := loginServer().login(context.Background(), rt, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestLoginHonoursContext(t *testing.T) {
	release := make(chan struct{})
	rt := fakeUpstream(t, func(_ *pgproto3.Backend, c net.Conn, _ *pgproto3.StartupMessage) error {
		<-release // say nothing until the router gave up
		return nil
	})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := loginServer().login(ctx, rt, nil)
	var ne net.Error
	if err == nil || !(errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("got %v, want a timeout", err)
	}
}

func TestReadBackendMessageExact(t *testing.T) {
	var msg []byte
	msg = append(msg, 'Z')
	msg = binary.BigEndian.AppendUint32(msg, 5)
	msg = append(msg, 'I', 'Q') // 'Q' is the next message's, and must stay unread
	r := strings.NewReader(string(msg))
	typ, body, err := readBackendMessage(r)
	if err != nil || typ != 'Z' || string(body) != "I" || r.Len() != 1 {
		t.Fatalf("got %q %q %v, %d left", typ, body, err, r.Len())
	}
}
