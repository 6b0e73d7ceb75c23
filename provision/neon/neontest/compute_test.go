package neontest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
)

// pgConfig builds a pgx config for host (an endpoint host, or an IP) that
// reaches the fake's compute proxy: verify-full against its CA, SNI = host.
func pgConfig(t *testing.T, srv *Server, host, user, password, db, extra string) *pgx.ConnConfig {
	t.Helper()
	dsn := fmt.Sprintf("postgresql://%s:%s@%s/%s?sslmode=verify-full&channel_binding=require&connect_timeout=10%s",
		url.PathEscape(user), url.PathEscape(password), host, db, extra)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig = srv.ClientTLSConfig(host)
	cfg.DialFunc = srv.Dialer()
	cfg.LookupFunc = srv.LookupFunc()
	return cfg
}

func connect(t *testing.T, cfg *pgx.ConnConfig) *pgx.Conn {
	t.Helper()
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatalf("connect to %s: %v", cfg.Host, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// connectErr connects and expects a failure whose text contains want.
func connectErr(t *testing.T, cfg *pgx.ConnConfig, want string) *pgconn.PgError {
	t.Helper()
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err == nil {
		_ = conn.Close(context.Background())
		t.Fatalf("connect to %s succeeded, want %q", cfg.Host, want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("connect to %s: %v, want %q", cfg.Host, err, want)
	}
	var pe *pgconn.PgError
	errors.As(err, &pe)
	return pe
}

func query1(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestCompute(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cluster := pgtest.Shared(t)
	be := newBackend(t)
	srv := newServer(t, Config{Backend: be})
	c := newClient(t, srv, "k")
	ctx := t.Context()

	p, err := srv.CreateProject(ctx, "compute")
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Project.ID
	cp := p.ConnectionURIs[0].ConnectionParameters
	mainCfg := func(host string) *pgx.ConnConfig {
		return pgConfig(t, srv, host, cp.Role, cp.Password, cp.Database, "")
	}

	// The parent's data, written through the pooler host with SCRAM-PLUS.
	conn := connect(t, mainCfg(cp.PoolerHost))
	exec(t, conn, "CREATE TABLE t (v text); INSERT INTO t VALUES ('parent')")
	if got := conn.PgConn().ParameterStatus("session_authorization"); got != "neondb_owner" {
		t.Errorf("session_authorization %q", got)
	}
	_ = conn.Close(ctx)

	child, err := srv.CreateBranch(ctx, pid, "child")
	if err != nil {
		t.Fatal(err)
	}
	ccp := child.ConnectionURIs[0].ConnectionParameters
	if ccp.Password != cp.Password {
		t.Errorf("child password differs from the parent's")
	}
	cconn := connect(t, pgConfig(t, srv, ccp.PoolerHost, ccp.Role, ccp.Password, ccp.Database, ""))
	if got := query1(t, cconn, "SELECT string_agg(v, ',') FROM t"); got != "parent" {
		t.Errorf("child sees %q, want the parent's data", got)
	}
	exec(t, cconn, "INSERT INTO t VALUES ('child'); CREATE TABLE mine (x int)") // owns its copy
	conn = connect(t, mainCfg(cp.Host))
	if got := query1(t, conn, "SELECT string_agg(v, ',') FROM t"); got != "parent" {
		t.Errorf("parent sees %q after the child wrote", got)
	}

	t.Run("isolation in postgres", func(t *testing.T) {
		// The child's local role cannot open the parent's local database.
		childRole := localName(child.Branch.ID, "neondb_owner")
		dsn := fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", url.PathEscape(childRole),
			be.internalPassword(childRole), cluster.Host(), cluster.Port(), url.PathEscape(localName(p.Branch.ID, "neondb")))
		_, err := pgconn.Connect(ctx, dsn)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("child role into parent database: %v, want 42501", err)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		pe := connectErr(t, pgConfig(t, srv, cp.PoolerHost, cp.Role, "npg_wrongwrong12", cp.Database, ""),
			"password authentication failed for user 'neondb_owner'")
		if pe == nil || pe.Code != "28P01" {
			t.Errorf("wrong password: %+v", pe)
		}
		connectErr(t, pgConfig(t, srv, cp.Host, "nobody", cp.Password, cp.Database, ""), "password authentication failed for user 'nobody'")
		connectErr(t, pgConfig(t, srv, cp.Host, cp.Role, cp.Password, "nodb", ""), `database "nodb" does not exist`)

		plain := mainCfg(cp.Host)
		plain.TLSConfig = nil
		connectErr(t, plain, "connection is insecure (try using `sslmode=require`)")

		connectErr(t, mainCfg("ep-no-such-00000000.c-2.us-east-2.aws.neon.tech"), msgNoEndpoint)

		// No SNI (an IP address): the endpoint must come from options.
		connectErr(t, mainCfg("127.0.0.1"), "Endpoint ID is not specified")
		conn := connect(t, pgConfig(t, srv, "127.0.0.1", cp.Role, cp.Password, cp.Database, "&options=endpoint%3D"+p.Endpoints[0].ID))
		if got := query1(t, conn, "SELECT count(*)::text FROM t"); got != "1" {
			t.Errorf("via options: %s", got)
		}
		_ = conn.Close(ctx)
		connectErr(t, pgConfig(t, srv, cp.PoolerHost, cp.Role, cp.Password, cp.Database, "&options=endpoint%3D"+p.Endpoints[0].ID),
			fmt.Sprintf("Inconsistent project name inferred from SNI ('%s-pooler') and project option ('%s')", p.Endpoints[0].ID, p.Endpoints[0].ID))
	})

	t.Run("pooler startup parameters", func(t *testing.T) {
		cfg := mainCfg(cp.PoolerHost)
		cfg.RuntimeParams["search_path"] = "public"
		connectErr(t, cfg, "unsupported startup parameter: search_path")
		cfg = mainCfg(cp.PoolerHost)
		cfg.RuntimeParams["options"] = "-c statement_timeout=5s"
		connectErr(t, cfg, "unsupported startup parameter in options: -c")

		cfg = mainCfg(cp.Host) // the direct host takes them
		cfg.RuntimeParams["search_path"] = "pg_catalog"
		cfg.RuntimeParams["options"] = "-c statement_timeout=5s"
		cfg.RuntimeParams["application_name"] = "neontest"
		conn := connect(t, cfg)
		if got := query1(t, conn, "SELECT current_setting('search_path') || ' ' || current_setting('statement_timeout')"); got != "pg_catalog 5s" {
			t.Errorf("direct host settings: %q", got)
		}
		_ = conn.Close(ctx)
	})

	t.Run("scram without channel binding", func(t *testing.T) {
		cfg := pgConfig(t, srv, cp.PoolerHost, cp.Role, cp.Password, cp.Database, "")
		cfg.ChannelBinding = "disable"
		_ = connect(t, cfg).Close(ctx)
	})

	t.Run("direct tls and protocol 3.2", func(t *testing.T) {
		cfg := mainCfg(cp.PoolerHost)
		cfg.SSLNegotiation = "direct"
		cfg.TLSConfig.NextProtos = []string{"postgresql"}
		cfg.MaxProtocolVersion = "3.2"
		conn := connect(t, cfg)
		if got := query1(t, conn, "SELECT current_database()"); got != localName(p.Branch.ID, "neondb") {
			t.Errorf("current_database %q", got)
		}
		_ = conn.Close(ctx)
	})

	t.Run("cancel", func(t *testing.T) {
		victim := connect(t, mainCfg(cp.PoolerHost))
		errc := make(chan error, 1)
		go func() {
			_, err := victim.Exec(ctx, "SELECT pg_sleep(30)")
			errc <- err
		}()
		poll.Until(t, 10*time.Second, "the query to start", func() bool {
			return query1(t, conn, "SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'") == "1"
		})
		if err := victim.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		var pe *pgconn.PgError
		if err := <-errc; !errors.As(err, &pe) || pe.Code != "57014" {
			t.Errorf("cancelled query: %v, want 57014", err)
		}
	})

	t.Run("reset password", func(t *testing.T) {
		base := "/projects/" + pid + "/branches/" + child.Branch.ID + "/roles/neondb_owner"
		var reset struct {
			Role       Role
			Operations []Operation
		}
		if st, raw := c.call("POST", base+"/reset_password", nil, &reset); st != 200 || !passwordRe.MatchString(reset.Role.Password) {
			t.Fatalf("reset: %d %s", st, raw)
		}
		c.waitOpsDone(pid, reset.Operations)
		var rev struct{ Password string }
		if c.call("GET", base+"/reveal_password", nil, &rev); rev.Password != reset.Role.Password {
			t.Errorf("reveal %q, want the new password", rev.Password)
		}
		// Sessions on the compute were dropped; the old password is refused,
		// the new one works. The parent's password is unchanged.
		if _, err := cconn.Exec(ctx, "SELECT 1"); err == nil {
			t.Error("a session survived the password reset")
		}
		connectErr(t, pgConfig(t, srv, ccp.PoolerHost, ccp.Role, ccp.Password, ccp.Database, ""), "password authentication failed")
		_ = connect(t, pgConfig(t, srv, ccp.PoolerHost, ccp.Role, reset.Role.Password, ccp.Database, "")).Close(ctx)
		_ = connect(t, mainCfg(cp.PoolerHost)).Close(ctx)
	})

	t.Run("suspend and wake", func(t *testing.T) {
		var b CreatedBranch
		c.call("POST", "/projects/"+pid+"/branches", map[string]any{
			"branch":    map[string]any{"name": "sleepy"},
			"endpoints": []map[string]any{{"type": "read_only", "suspend_timeout_seconds": 1}},
		}, &b)
		c.waitOpsDone(pid, b.Operations)
		epPath := "/projects/" + pid + "/endpoints/" + b.Endpoints[0].ID
		bcp := b.ConnectionURIs[0].ConnectionParameters
		conn := connect(t, pgConfig(t, srv, bcp.Host, bcp.Role, bcp.Password, bcp.Database, ""))
		if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ('ro')"); err == nil {
			t.Error("read_only endpoint accepted a write")
		}
		_ = conn.Close(ctx)
		var ep struct{ Endpoint Endpoint }
		poll.Until(t, 10*time.Second, "the endpoint to go idle", func() bool {
			c.call("GET", epPath, nil, &ep)
			return ep.Endpoint.CurrentState == EndpointIdle
		})
		conn = connect(t, pgConfig(t, srv, bcp.Host, bcp.Role, bcp.Password, bcp.Database, ""))
		if c.call("GET", epPath, nil, &ep); ep.Endpoint.CurrentState != EndpointActive {
			t.Errorf("after a connect the endpoint is %s", ep.Endpoint.CurrentState)
		}
		_ = conn.Close(ctx)
	})

	t.Run("delete branch", func(t *testing.T) {
		live := connect(t, pgConfig(t, srv, ccp.Host, ccp.Role, srv.revealForTest(pid, child.Branch.ID), ccp.Database, ""))
		if err := srv.WaitIdle(ctx, pid); err != nil {
			t.Fatal(err)
		}
		var del struct{ Operations []Operation }
		if st, raw := c.call("DELETE", "/projects/"+pid+"/branches/"+child.Branch.ID, nil, &del); st != 200 {
			t.Fatalf("delete: %d %s", st, raw)
		}
		if _, err := live.Exec(ctx, "SELECT 1"); err == nil {
			t.Error("a session survived the branch's deletion")
		}
		connectErr(t, pgConfig(t, srv, ccp.PoolerHost, ccp.Role, ccp.Password, ccp.Database, ""), msgNoEndpoint)
		c.waitOpsDone(pid, del.Operations)
		admin := connect(t, adminConfig(t, cluster.AdminDSN("postgres")))
		if n := query1(t, admin, "SELECT count(*)::text FROM pg_database WHERE datname LIKE $1", child.Branch.ID+"%"); n != "0" {
			t.Errorf("%s databases left of the deleted branch", n)
		}
	})

	t.Run("close drops everything", func(t *testing.T) {
		admin := connect(t, adminConfig(t, cluster.AdminDSN("postgres")))
		count := func() string {
			return query1(t, admin, "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE $1) + (SELECT count(*) FROM pg_roles WHERE rolname LIKE $1)", p.Branch.ID+"%")
		}
		if n := count(); n != "2" {
			t.Fatalf("default branch: %s local objects, want 2", n)
		}
		_ = conn.Close(ctx)
		srv.Close()
		if n := count(); n != "0" {
			t.Errorf("after Close: %s local objects of the default branch", n)
		}
	})
}

func adminConfig(t *testing.T, dsn string) *pgx.ConnConfig {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// revealForTest returns a role's current password.
func (s *Server) revealForTest(projectID, branchID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.projects[projectID].branches[branchID].role("neondb_owner").password
}

// TestTemplateSQL: a project's database starts as a copy of the template,
// owned by the project's role.
func TestTemplateSQL(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cluster := pgtest.Shared(t)
	be, err := NewBackendConfig(t.Context(), BackendConfig{
		AdminDSN:    cluster.AdminDSN("postgres"),
		TemplateSQL: "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1)",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close)
	srv := newServer(t, Config{Backend: be})
	p, err := srv.CreateProject(t.Context(), "tmpl")
	if err != nil {
		t.Fatal(err)
	}
	cp := p.ConnectionURIs[0].ConnectionParameters
	conn := connect(t, pgConfig(t, srv, cp.PoolerHost, cp.Role, cp.Password, cp.Database, ""))
	exec(t, conn, "INSERT INTO accounts VALUES (2); ALTER TABLE accounts ADD COLUMN name text") // owner may migrate
	if got := query1(t, conn, "SELECT count(*)::text FROM accounts"); got != "2" {
		t.Errorf("accounts: %s rows", got)
	}
}
