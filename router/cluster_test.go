package router_test

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

const clusterSecret = "fleet-test-cluster-secret-0123456789"

// member makes a router an instance of the fleet whose catalog base uses:
// its own instance_id (or auto), a peer listener on loopback, fast heartbeats, and
// session pooling with a budget that keeps three instances under the test
// cluster's max_connections.
func member(base *router.Config, id router.InstanceID) func(*router.Config) {
	return func(c *router.Config) {
		if base != nil {
			c.Catalog.DSN, c.Catalog.Key = base.Catalog.DSN, base.Catalog.Key
		}
		c.InstanceID = id
		c.Cluster.PeerListen = "127.0.0.1:0"
		c.Cluster.Heartbeat = 100 * time.Millisecond
		c.Cluster.Expire = time.Second
		c.Cluster.Secret = clusterSecret
		c.Pool.Mode = router.PoolModeSession
		c.Pool.MaxServerConnections = 30
	}
}

// peerAddr is instance id's peer address as the registry has it.
func peerAddr(t *testing.T, cat *catalog.Catalog, id uint8) string {
	t.Helper()
	list, err := cat.Instances(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.ID == id {
			return in.PeerAddr
		}
	}
	t.Fatalf("instance %d is not in the registry (%+v)", id, list)
	return ""
}

func forwards(t *testing.T, r *router.Router, outcome string) float64 {
	t.Helper()
	return metric(t, r.Registry(), "pgtenant_cluster_cancel_forwards_total", "outcome="+outcome)
}

// cancelPacket is a CancelRequest for the key (pid, secret).
func cancelPacket(pid uint32, secret []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(12+len(secret)))
	b = binary.BigEndian.AppendUint32(b, 80877102)
	b = binary.BigEndian.AppendUint32(b, pid)
	return append(b, secret...)
}

// forwardFrame builds a forwarded cancel as README's "Running several
// instances" lays it out, signed with secret.
func forwardFrame(secret []byte, to, from uint8, at time.Time, pid uint32, key []byte) []byte {
	b := append([]byte("PGTC"), 1, to, from)
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixMilli()))
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	b = append(b, nonce...)
	b = append(b, cancelPacket(pid, key)...)
	m := hmac.New(sha256.New, secret)
	m.Write(b)
	return m.Sum(b)
}

// send writes b to addr and reads until the other side closes (as a
// client's CancelRequest does: the close says it was acted on); it returns
// what was answered.
func send(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite() // all there is: a short frame is refused at once
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatal(err)
	}
	return got
}

// sleeper is a tenant's session through a router that runs SELECT
// pg_sleep(30) when asked.
type sleeper struct {
	tenant string
	pc     *pgconn.PgConn
	done   chan error
}

// dial connects as tenant through r, with the connection string
// parameters params ("name=value&...", may be empty).
func dial(t *testing.T, r *router.Router, tenant string, params ...string) *sleeper {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := "postgres://" + tenant + ":router-test-secret@" + r.Addr().String() + "/app?sslmode=disable"
	for _, p := range params {
		dsn += "&" + p
	}
	pc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close(context.Background()) })
	return &sleeper{tenant: tenant, pc: pc, done: make(chan error, 1)}
}

// startSleep connects as tenant through r (with dial's params), starts
// pg_sleep(30) and returns once the query runs upstream.
func startSleep(t *testing.T, r *router.Router, tenant string, params ...string) *sleeper {
	t.Helper()
	s := dial(t, r, tenant, params...)
	s.sleep(t)
	return s
}

// sleep starts pg_sleep(30) and returns once it runs upstream.
func (s *sleeper) sleep(t *testing.T) {
	t.Helper()
	go func() {
		_, err := s.pc.Exec(context.Background(), "SELECT pg_sleep(30)").ReadAll()
		s.done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgconn.Connect(ctx, pgtest.Shared(t).AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	poll.Until(t, 20*time.Second, "pg_sleep to run upstream", func() bool {
		res := admin.ExecParams(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND state = 'active' AND query = 'SELECT pg_sleep(30)'`,
			[][]byte{[]byte("rt_" + s.tenant)}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return string(res.Rows[0][0]) == "1"
	})
}

// cancelledWithin fails unless the query ends with 57014 within d of at
// (when its CancelRequest was sent).
func (s *sleeper) cancelledWithin(t *testing.T, at time.Time, d time.Duration) {
	t.Helper()
	var err error
	poll.Until(t, time.Until(at.Add(d)), "the query to be cancelled", func() bool {
		select {
		case err = <-s.done:
			return true
		default:
			return false
		}
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("cancelled query: %v, want 57014", err)
	}
}

// running fails if the query has ended.
func (s *sleeper) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.done:
		t.Fatalf("query ended: %v", err)
	default:
	}
}

// Three router instances sharing one catalog: a cancel reaches a session
// through whichever instance the load balancer picked, forwards are
// authenticated, an instance_id is held by one live instance at a time, a
// killed instance expires, and first connects spread over the instances
// create each tenant once.
func TestFleet(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r1, cfg := start(t, member(nil, 1))
	r2, _ := start(t, member(&cfg, 2))
	r3, _ := start(t, member(&cfg, 3))
	ctx := context.Background()
	raw := make([]byte, 4)
	_, _ = rand.Read(raw)
	tag := hex.EncodeToString(raw)
	pooled, plain := "fleet-pooled-"+tag, "fleet-plain-"+tag
	// The plain tenant is unpooled: the cancel then goes to the session's
	// own upstream connection, the other path of the proxy.
	if err := r1.Catalog().SetPoolMode(ctx, plain, "off"); err != nil {
		t.Fatal(err)
	}
	if err := r1.Reload(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*router.Router{r1, r2, r3} {
		poll.Until(t, 10*time.Second, "every instance to see the whole fleet", func() bool {
			return metric(t, r.Registry(), "pgtenant_cluster_instances", "") == 3
		})
	}

	t.Run("cancel through another instance", func(t *testing.T) {
		// Protocol 3.0 keys (4-byte secrets) and 3.2 ones (32 bytes): the
		// forward carries either.
		for _, proto := range []struct {
			param     string
			secretLen int
		}{{"max_protocol_version=3.0", 4}, {"max_protocol_version=3.2", 32}} {
			for _, tenant := range []string{plain, pooled} {
				for i, via := range []*router.Router{r2, r3} {
					before := forwards(t, via, "forwarded")
					received := forwards(t, r1, "received")
					s := startSleep(t, r1, tenant, proto.param)
					if n := len(s.pc.SecretKey()); n != proto.secretLen {
						t.Fatalf("%s: a %d-byte secret, want %d", proto.param, n, proto.secretLen)
					}
					at := time.Now()
					send(t, via.Addr().String(), cancelPacket(s.pc.PID(), s.pc.SecretKey()))
					s.cancelledWithin(t, at, time.Second)
					if got := forwards(t, via, "forwarded"); got != before+1 {
						t.Errorf("%s %s via instance %d: forwarded %v, want %v", proto.param, tenant, i+2, got, before+1)
					}
					if got := forwards(t, r1, "received"); got != received+1 {
						t.Errorf("%s %s via instance %d: instance 1 received %v, want %v", proto.param, tenant, i+2, got, received+1)
					}
				}
			}
		}
	})

	t.Run("forwards are authenticated", func(t *testing.T) {
		s := startSleep(t, r1, plain)
		addr := peerAddr(t, r1.Catalog(), 1)
		pid, key := s.pc.PID(), s.pc.SecretKey()
		rejected := forwards(t, r1, "rejected")
		refused := []struct {
			name  string
			frame []byte
		}{
			{"another secret", forwardFrame([]byte("not-the-cluster-secret-0123456789abc"), 1, 2, time.Now(), pid, key)},
			{"for another instance", forwardFrame([]byte(clusterSecret), 2, 3, time.Now(), pid, key)},
			{"a minute old", forwardFrame([]byte(clusterSecret), 1, 2, time.Now().Add(-time.Minute), pid, key)},
			{"altered", func() []byte {
				b := forwardFrame([]byte(clusterSecret), 1, 2, time.Now(), pid, key)
				b[len(b)-40] ^= 1 // the pid, under the MAC
				return b
			}()},
			{"not a forward", []byte("GET / HTTP/1.0\r\n\r\n")},
			{"a bare CancelRequest", cancelPacket(pid, key)},
		}
		for _, f := range refused {
			if got := send(t, addr, f.frame); len(got) != 0 {
				t.Errorf("%s: answered %q, want a silent close", f.name, got)
			}
			rejected++
			if got := forwards(t, r1, "rejected"); got != rejected {
				t.Errorf("%s: rejected counted %v, want %v", f.name, got, rejected)
			}
			s.running(t)
		}

		// The documented frame with the cluster's secret cancels; the
		// same bytes sent again are refused.
		good := forwardFrame([]byte(clusterSecret), 1, 2, time.Now(), pid, key)
		at := time.Now()
		send(t, addr, good)
		s.cancelledWithin(t, at, time.Second)
		s.sleep(t) // the same session (key), a new query
		send(t, addr, good)
		if got := forwards(t, r1, "rejected"); got != rejected+1 {
			t.Errorf("replayed frame: rejected counted %v, want %v", got, rejected+1)
		}
		s.running(t)
		at = time.Now()
		send(t, r2.Addr().String(), cancelPacket(pid, key))
		s.cancelledWithin(t, at, time.Second)
	})

	t.Run("duplicate instance_id refused", func(t *testing.T) {
		dup := cfg
		member(&cfg, 1)(&dup)
		_, err := router.New(ctx, dup, router.Options{})
		if err == nil {
			t.Fatal("a second instance with instance_id 1 started")
		}
		t.Logf("refused: %v", err)
		for _, want := range []string{"instance_id 1", peerAddr(t, r1.Catalog(), 1), "last heartbeat", "its own instance_id"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q: %v", want, err)
			}
		}
		// Two starting at once with a new ID: one wins.
		var wg sync.WaitGroup
		routers := make([]*router.Router, 2)
		errs := make([]error, 2)
		for i := range routers {
			c := cfg
			member(&cfg, 9)(&c)
			wg.Go(func() { routers[i], errs[i] = router.New(ctx, c, router.Options{}) })
		}
		wg.Wait()
		won := 0
		for i, r := range routers {
			if errs[i] == nil {
				won++
				r.Close()
			} else if !strings.Contains(errs[i].Error(), "instance_id 9") {
				t.Errorf("refused with %v", errs[i])
			}
		}
		if won != 1 {
			t.Fatalf("%d of 2 instances started with instance_id 9, want 1 (%v)", won, errs)
		}
	})

	t.Run("300 first connects over 3 instances", func(t *testing.T) {
		const tenants, clients = 30, 300
		prefix := "fleet-storm-" + tag
		routers := []*router.Router{r1, r2, r3}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		start := make(chan struct{})
		for i := range clients {
			tenant := fmt.Sprintf("%s-%02d", prefix, i%tenants)
			r := routers[i%len(routers)]
			wg.Go(func() {
				<-start
				conn, err := pgx.Connect(cctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
				if err != nil {
					errs <- fmt.Errorf("%s: %w", tenant, err)
					return
				}
				defer conn.Close(context.Background())
				var db string
				if err := conn.QueryRow(cctx, "SELECT current_database()").Scan(&db); err != nil {
					errs <- err
				} else if db != "rt_"+tenant {
					errs <- fmt.Errorf("%s landed in %s", tenant, db)
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		admin, err := pgx.Connect(cctx, pgtest.Shared(t).AdminDSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(context.Background())
		var n int
		if err := admin.QueryRow(cctx, `SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)`, "rt_"+prefix).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != tenants {
			t.Errorf("%d databases for %d tenants", n, tenants)
		}
		entries, err := r2.Catalog().List(cctx, prefix, 1000)
		if err != nil {
			t.Fatal(err)
		}
		stored := 0
		for _, e := range entries {
			if strings.HasPrefix(e.Tenant, prefix) {
				stored++
			}
		}
		if stored != tenants {
			t.Errorf("%d catalog rows for %d tenants", stored, tenants)
		}
	})

	t.Run("a killed instance expires", func(t *testing.T) {
		// Sessions of instances 2 and 3, then instance 3 dies.
		held, err := pgx.Connect(ctx, "postgres://"+pooled+":router-test-secret@"+r2.Addr().String()+"/app?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close(context.Background())
		s3 := dial(t, r3, plain)
		pid, key := s3.pc.PID(), s3.pc.SecretKey()
		r3.Crash()
		poll.Until(t, 10*time.Second, "instance 3's entry to expire", func() bool {
			list, err := r1.Catalog().Instances(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return len(list) == 2 && list[0].ID == 1 && list[1].ID == 2
		})
		// Its keys are dropped as unknown once the others have seen it
		// expire (until then, forwarding to it fails; either way the
		// client gets no answer).
		unknown := forwards(t, r1, "unknown_owner")
		poll.Until(t, 10*time.Second, "instance 1 to drop instance 3's keys as unknown", func() bool {
			if got := send(t, r1.Addr().String(), cancelPacket(pid, key)); len(got) != 0 {
				t.Fatalf("answered %q", got)
			}
			return forwards(t, r1, "unknown_owner") > unknown
		})
		for _, r := range []*router.Router{r1, r2} {
			poll.Until(t, 10*time.Second, "the fleet to shrink", func() bool {
				return metric(t, r.Registry(), "pgtenant_cluster_instances", "") == 2
			})
		}

		// The others keep working: their sessions, cancels between them,
		// and with an instance that takes the freed ID.
		var one int
		if err := held.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("session of instance 2 after instance 3 died: %v", err)
		}
		s := startSleep(t, r2, pooled)
		at := time.Now()
		send(t, r1.Addr().String(), cancelPacket(s.pc.PID(), s.pc.SecretKey()))
		s.cancelledWithin(t, at, time.Second)
		r3b, _ := start(t, member(&cfg, 3))
		s = startSleep(t, r3b, pooled)
		at = time.Now()
		send(t, r1.Addr().String(), cancelPacket(s.pc.PID(), s.pc.SecretKey()))
		s.cancelledWithin(t, at, time.Second)
		if err := connect(r2, plain); err != nil {
			t.Fatal(err)
		}
	})
}

// The cluster section is checked before anything starts, and its errors
// never repeat the secret.
func TestClusterConfigValidate(t *testing.T) {
	base := router.DefaultConfig()
	base.Auth.Password = "x"
	base.Catalog.Key = catalog.NewKey()
	base.Provider.Local.AdminDSN = "postgres://localhost/postgres"
	if err := base.Validate(); err != nil {
		t.Fatalf("defaults (cluster off): %v", err)
	}
	tests := []struct {
		name string
		edit func(*router.ClusterSettings)
		want string // "" means valid
	}{
		{"loopback", func(c *router.ClusterSettings) {}, ""},
		{"advertise without peer_listen", func(c *router.ClusterSettings) { c.PeerListen, c.Advertise = "", "10.0.0.1:7000" }, "cluster.advertise"},
		{"any address, no advertise", func(c *router.ClusterSettings) { c.PeerListen = "0.0.0.0:7000" }, "cluster.advertise: empty"},
		{"any address, advertised", func(c *router.ClusterSettings) { c.PeerListen, c.Advertise = ":7000", "10.0.0.1:7000" }, ""},
		{"advertise port 0", func(c *router.ClusterSettings) { c.Advertise = "10.0.0.1:0" }, "cluster.advertise"},
		{"no port", func(c *router.ClusterSettings) { c.PeerListen = "10.0.0.1" }, "cluster.peer_listen"},
		{"no heartbeat", func(c *router.ClusterSettings) { c.Heartbeat = 0 }, "cluster.heartbeat"},
		{"expire too short", func(c *router.ClusterSettings) { c.Expire = 3 * time.Second }, "cluster.expire"},
		{"no secret", func(c *router.ClusterSettings) { c.Secret = "" }, router.EnvClusterSecret},
		{"short secret", func(c *router.ClusterSettings) { c.Secret = "tiny-secret" }, "at least 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Cluster.PeerListen = "127.0.0.1:0"
			cfg.Cluster.Secret = clusterSecret
			tt.edit(&cfg.Cluster)
			err := cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want an error about %s", err, tt.want)
			case err != nil && strings.Contains(err.Error(), cfg.Cluster.Secret) && cfg.Cluster.Secret != "":
				t.Fatalf("error repeats the secret: %v", err)
			}
		})
	}
}
