package pool_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/pool"
)

// pgRoute is a database of the shared cluster and a dial function that
// logs in to it with pgconn and takes the connection over, as the proxy's
// login hands one over.
type pgRoute struct {
	key  pool.Key
	dsn  string
	dial pool.DialFunc
}

func newPGRoute(t *testing.T, tenant string) pgRoute {
	t.Helper()
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	r := pgRoute{
		key: pool.Key{Tenant: tenant, Server: net.JoinHostPort(c.Host(), strconv.Itoa(int(c.Port()))), Database: db, User: c.AdminUser()},
		dsn: c.AdminDSN(db) + "&application_name=login-app",
	}
	r.dial = func(ctx context.Context) (pool.Server, error) {
		pc, err := pgconn.Connect(ctx, r.dsn)
		if err != nil {
			return pool.Server{}, err
		}
		hj, err := pc.Hijack()
		if err != nil {
			return pool.Server{}, err
		}
		return pool.FromHijacked(hj), nil
	}
	return r
}

// readMsg reads exactly one backend message.
func readMsg(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
	_, err := io.ReadFull(r, body)
	return hdr[0], body, err
}

// simpleQuery runs sql on a raw server connection as a client would, and
// returns the first column of each row, the status of the closing
// ReadyForQuery and the first error the server sent. It records
// ParameterStatus in s.Params, as the proxy's relay would.
func simpleQuery(t *testing.T, s *pool.Server, sql string) ([]string, byte, error) {
	t.Helper()
	_ = s.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	defer func() { _ = s.Conn.SetDeadline(time.Time{}) }()
	out, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	if _, err := s.Conn.Write(out); err != nil {
		t.Fatal(err)
	}
	var vals []string
	var qerr error
	for {
		typ, body, err := readMsg(s.Conn)
		if err != nil {
			t.Fatal(err)
		}
		switch typ {
		case 'D':
			var m pgproto3.DataRow
			if err := m.Decode(body); err != nil {
				t.Fatal(err)
			}
			vals = append(vals, string(m.Values[0]))
		case 'S':
			var m pgproto3.ParameterStatus
			if err := m.Decode(body); err != nil {
				t.Fatal(err)
			}
			s.Params[m.Name] = m.Value
		case 'E':
			var m pgproto3.ErrorResponse
			_ = m.Decode(body)
			if qerr == nil {
				qerr = &pgconn.PgError{Code: m.Code, Message: m.Message}
			}
		case 'Z':
			return vals, body[0], qerr
		}
	}
}

func mustQuery(t *testing.T, s *pool.Server, sql string, wantStatus byte) []string {
	t.Helper()
	vals, st, err := simpleQuery(t, s, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if st != wantStatus {
		t.Fatalf("%s: status %q, want %q", sql, st, wantStatus)
	}
	return vals
}

// TestPGResetAfterTransaction: a client that leaves in the middle of a
// transaction, with session state, leaves nothing to the next client.
func TestPGResetAfterTransaction(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := newPGRoute(t, "acme")
	m := pool.New(pool.Config{})
	defer m.Close()
	ctx := t.Context()

	c, err := m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID
	if got := mustQuery(t, &c.Server, "SELECT pg_backend_pid()", 'I'); got[0] != strconv.Itoa(int(pid)) {
		t.Fatalf("backend pid %s, BackendKeyData said %d", got[0], pid)
	}
	if c.Params["application_name"] != "login-app" {
		t.Fatalf("Params[application_name] = %q after login", c.Params["application_name"])
	}
	mustQuery(t, &c.Server, "SET application_name = 'left-dirty'", 'I')
	if c.Params["application_name"] != "left-dirty" {
		t.Fatalf("Params[application_name] = %q after SET", c.Params["application_name"])
	}
	mustQuery(t, &c.Server, "CREATE TEMP TABLE scratch (x int)", 'I')
	mustQuery(t, &c.Server, "BEGIN", 'T')
	if xid := mustQuery(t, &c.Server, "SELECT txid_current()", 'T'); xid[0] == "" {
		t.Fatal("no transaction id")
	}
	if err := c.ResetRelease(ctx, 'T', pool.DefaultResetQuery); err != nil {
		t.Fatalf("reset: %v", err)
	}

	c, err = m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(true)
	if c.PID != pid {
		t.Fatalf("got backend %d, want the reset one, %d", c.PID, pid)
	}
	if c.TxStatus != 'I' {
		t.Errorf("TxStatus = %q after reset", c.TxStatus)
	}
	got := mustQuery(t, &c.Server, "SELECT coalesce(txid_current_if_assigned()::text, 'none') || ' ' || current_setting('application_name') || '|' || "+
		"(SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't')", 'I')
	if got[0] != "none login-app|0" {
		t.Errorf("next client sees %q, want no transaction, the login's application_name, no temp table", got[0])
	}
	if v := c.Params["application_name"]; v != "login-app" {
		t.Errorf("Params[application_name] = %q, want the login's value the reset reported", v)
	}
}

func TestPGRollbackFailedTransaction(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := newPGRoute(t, "acme")
	ctx := t.Context()
	s, err := r.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Conn.Close()
	mustQuery(t, &s, "BEGIN", 'T')
	if _, st, err := simpleQuery(t, &s, "SELECT 1/0"); err == nil || st != 'E' {
		t.Fatalf("status %q err %v, want a failed transaction", st, err)
	}
	if err := s.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if s.TxStatus != 'I' {
		t.Errorf("TxStatus = %q", s.TxStatus)
	}
	mustQuery(t, &s, "SELECT 1", 'I')
	if err := s.Reset(ctx, 'I', ""); err != nil { // nothing to do: no round trip
		t.Fatal(err)
	}
	if err := s.Reset(ctx, 0, ""); err != nil { // status unknown: ROLLBACK, a warning, 'I'
		t.Fatal(err)
	}
	mustQuery(t, &s, "SELECT 1", 'I')
}

// TestPGResetFailureCloses: a reset the server refuses closes the
// connection; the next client gets a fresh one.
func TestPGResetFailureCloses(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := newPGRoute(t, "acme")
	m := pool.New(pool.Config{})
	defer m.Close()
	ctx := t.Context()
	c, err := m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID
	err = c.ResetRelease(ctx, 'I', "DISCARD EVERYTHING")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42601" {
		t.Fatalf("reset error = %v, want a syntax error", err)
	}
	c, err = m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(true)
	if c.PID == pid {
		t.Error("the connection whose reset failed was handed out again")
	}
}

// TestPGResetTimeout: ctx bounds a reset that the server does not answer
// in time (pg_sleep as the reset query).
func TestPGResetTimeout(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := newPGRoute(t, "acme")
	s, err := r.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.Reset(ctx, 'I', "SELECT pg_sleep(10)")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("reset took %s past its deadline", d)
	}
}

// TestPGDirtyReleaseEndsTransaction: a server released dirty is closed, so
// its transaction ends and its locks go.
func TestPGDirtyReleaseEndsTransaction(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := newPGRoute(t, "acme")
	m := pool.New(pool.Config{})
	defer m.Close()
	ctx := t.Context()
	c, err := m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	mustQuery(t, &c.Server, "CREATE TABLE t (x int)", 'I')
	mustQuery(t, &c.Server, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE", 'T')
	c.Release(false)

	admin, err := pgconn.Connect(ctx, r.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := admin.Exec(lctx, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; ROLLBACK").ReadAll(); err != nil {
		t.Fatalf("the lock outlived the dirty release: %v", err)
	}
	if n := m.Counters().ServersClosed; n != 1 {
		t.Errorf("servers closed = %d", n)
	}
}

// TestPGTrackerOnServerStream follows a real server's replies to pipelined
// simple and extended queries, read in small pieces, and releases the
// connection at ReadyForQuery 'I' as transaction pooling does; the next
// client's stream is in step.
func TestPGTrackerOnServerStream(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := newPGRoute(t, "acme")
	m := pool.New(pool.Config{})
	defer m.Close()
	ctx := t.Context()
	c, err := m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	out, _ = (&pgproto3.Query{String: "BEGIN"}).Encode(out)
	out, _ = (&pgproto3.Query{String: "SELECT repeat('x', 100) FROM generate_series(1, 500)"}).Encode(out)
	out, _ = (&pgproto3.Parse{Query: "SELECT $1::int + 1"}).Encode(out)
	out, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte("41")}}).Encode(out)
	out, _ = (&pgproto3.Execute{}).Encode(out)
	out, _ = (&pgproto3.Sync{}).Encode(out)
	out, _ = (&pgproto3.Query{String: "SELECT 1/0"}).Encode(out)
	out, _ = (&pgproto3.Query{String: "ROLLBACK"}).Encode(out)
	var reqs pool.Requests
	reqs.Feed(out[:11])
	reqs.Feed(out[11:])
	if _, err := c.Conn.Write(out); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	var tr pool.Tracker
	var statuses []byte
	buf := make([]byte, 7) // messages split at arbitrary points
	for tr.Ready() < 5 {
		n, err := c.Conn.Read(buf[:1+int(tr.Ready()+int64(len(statuses)))%7])
		if err != nil {
			t.Fatal(err)
		}
		before := tr.Ready()
		if tr.Feed(buf[:n]) >= 0 {
			if tr.Ready() != before+1 {
				t.Fatalf("one read completed %d ReadyForQuery messages", tr.Ready()-before)
			}
			statuses = append(statuses, tr.TxStatus())
		}
	}
	_ = c.Conn.SetDeadline(time.Time{})
	if string(statuses) != "TTTEI" || !tr.Idle() || tr.Err() != nil {
		t.Fatalf("statuses %q idle %v err %v, want TTTEI ending idle", statuses, tr.Idle(), tr.Err())
	}
	if reqs.Count() != tr.Ready() || !reqs.AtBoundary() {
		t.Fatalf("%d requests, %d ReadyForQuery: want one for each", reqs.Count(), tr.Ready())
	}
	pid := c.PID
	c.Release(tr.Idle())

	c, err = m.Acquire(ctx, r.key, r.dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(true)
	if c.PID != pid {
		t.Fatal("not reused")
	}
	if got := mustQuery(t, &c.Server, "SELECT 'in step'", 'I'); got[0] != "in step" {
		t.Errorf("next client read %q", got)
	}
}

// TestPGBudget: tenants on one real server never hold more server
// connections than the budget, and all are served.
func TestPGBudget(t *testing.T) {
	pgtest.CheckGoroutines(t)
	routes := []pgRoute{newPGRoute(t, "a"), newPGRoute(t, "b"), newPGRoute(t, "c")}
	const budget = 2
	m := pool.New(pool.Config{MaxServerConnections: budget})
	ctx := t.Context()
	errc := make(chan error, 30)
	for i := range 30 {
		r := routes[i%3]
		go func() {
			c, err := m.Acquire(ctx, r.key, r.dial)
			if err != nil {
				errc <- err
				return
			}
			vals, st, err := simpleQuery(t, &c.Server, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname LIKE 't_testpgbudget%'")
			c.Release(err == nil && st == 'I')
			if err == nil {
				if n, _ := strconv.Atoi(vals[0]); n > budget {
					err = fmt.Errorf("%d server connections to the tenants' databases, budget %d", n, budget)
				}
			}
			errc <- err
		}()
	}
	for range 30 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	m.Close()
	if cs := m.Counters(); cs.ServersOpened != cs.ServersClosed || cs.ServersOpened < 3 {
		t.Errorf("counters = %+v", cs)
	}
}

// TestExecLeavesWhatFollows: what the server sent past the replies (here a
// notice, in the same write as them) is read by the connection's next
// reader, not lost in Exec's buffer.
func TestExecLeavesWhatFollows(t *testing.T) {
	pgtest.CheckGoroutines(t)
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		defer b.Close()
		if _, _, err := readMsg(b); err != nil { // the Query
			return
		}
		var out []byte
		out, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SET")}).Encode(out)
		out, _ = (&pgproto3.ParameterStatus{Name: "application_name", Value: "x"}).Encode(out)
		out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
		out, _ = (&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "after"}).Encode(out)
		_, _ = b.Write(out)
	}()
	s := &pool.Server{Conn: a}
	if err := s.Exec(t.Context(), "SET application_name = 'x'"); err != nil {
		t.Fatal(err)
	}
	if s.Params["application_name"] != "x" || s.TxStatus != 'I' {
		t.Errorf("params %v, status %q", s.Params, s.TxStatus)
	}
	typ, body, err := readMsg(s.Conn)
	if err != nil || typ != 'N' {
		t.Fatalf("next message %q, %v; want the notice", typ, err)
	}
	var n pgproto3.NoticeResponse
	if err := n.Decode(body); err != nil || n.Message != "after" {
		t.Errorf("notice %+v, %v", n, err)
	}
}
