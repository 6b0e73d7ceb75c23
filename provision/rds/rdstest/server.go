package rdstest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/localca"
)

// Defaults for the zero Config.
const (
	DefaultRegion      = "us-east-1"
	DefaultCreateDelay = 200 * time.Millisecond
	DefaultBackupDelay = 100 * time.Millisecond
	DefaultDeleteDelay = 100 * time.Millisecond
	// EndpointSuffix stands for the account- and region-specific label
	// RDS puts in endpoint names (docs/aws-rds-api.md §6).
	EndpointSuffix = "cfake0rds1xy"
	// Port is the port every endpoint reports, PostgreSQL's default.
	Port = 5432
)

// cleanupTimeout bounds dropping every database and role in Close.
const cleanupTimeout = 30 * time.Second

// Config configures a Server. Only AdminDSN is required.
type Config struct {
	// AdminDSN logs in to the local Postgres server (13 or later) as a
	// superuser; clusters' and instances' roles and databases are made
	// there, and the TLS front relays sessions to it. Secret.
	AdminDSN string
	// Region names endpoints and ARNs. Empty means us-east-1.
	Region string
	// AccessKeyID, when set, is the only access key the fake accepts
	// (403 InvalidClientTokenId otherwise). Empty accepts any signed
	// request. Signatures are not verified.
	AccessKeyID string
	// CreateDelay is how long a new cluster or instance stays "creating";
	// BackupDelay how long it then stays "backing-up" (its first backup);
	// DeleteDelay how long "deleting" lasts. Zero means 200ms, 100ms and
	// 100ms; negative means no time at all.
	CreateDelay, BackupDelay, DeleteDelay time.Duration
	// ThrottleEvery, when positive, answers every ThrottleEvery-th request
	// with 400 Throttling ("Rate exceeded") without performing it.
	ThrottleEvery int
	// Now is the fake's clock, which statuses follow. Nil means time.Now;
	// tests step a clock of their own through the statuses.
	Now func() time.Time
	// Log receives request logs. Nil discards.
	Log *slog.Logger
}

func delay(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}

func (c *Config) region() string {
	if c.Region == "" {
		return DefaultRegion
	}
	return c.Region
}

// Server is a running fake. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	admin   *pgxpool.Pool
	backend string // host:port or unix socket path of the local server
	network string
	tlsConf *tls.Config
	caPEM   []byte
	httpLn  net.Listener
	front   net.Listener
	httpSrv *http.Server
	wg      sync.WaitGroup

	mu struct {
		sync.Mutex
		requests  int
		clusters  map[string]*cluster  // by identifier
		instances map[string]*instance // by identifier
		lose      map[string]bool      // identifiers whose next create answer is lost
		snapshots []string
		conns     map[net.Conn]struct{}
		closed    bool
	}
}

// Start starts a fake API on 127.0.0.1:0 and its TLS front. The caller
// must Close it.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.AdminDSN == "" {
		return nil, errors.New("rdstest: Config.AdminDSN is empty")
	}
	pc, err := pgxpool.ParseConfig(cfg.AdminDSN)
	if err != nil {
		return nil, errors.New("rdstest: Config.AdminDSN cannot be parsed")
	}
	pc.MaxConns = 4
	s := &Server{cfg: cfg, log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.backend, s.network = backendAddr(&pc.ConnConfig.Config)
	s.mu.clusters = map[string]*cluster{}
	s.mu.instances = map[string]*instance{}
	s.mu.lose = map[string]bool{}
	s.mu.conns = map[net.Conn]struct{}{}

	ca, err := localca.New()
	if err != nil {
		return nil, err
	}
	d := s.domain()
	leaf, err := ca.Issue("*.cluster-"+d, "*.cluster-ro-"+d, "*."+d)
	if err != nil {
		return nil, err
	}
	s.caPEM = ca.CertPEM()
	s.tlsConf = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, MinVersion: tls.VersionTLS12}

	if s.admin, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, fmt.Errorf("rdstest: admin pool: %w", err)
	}
	if err := s.admin.Ping(ctx); err != nil {
		s.admin.Close()
		return nil, fmt.Errorf("rdstest: admin connection: %w", err)
	}
	if s.httpLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		s.admin.Close()
		return nil, err
	}
	if s.front, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		s.httpLn.Close()
		s.admin.Close()
		return nil, err
	}
	s.httpSrv = &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	s.wg.Go(func() { _ = s.httpSrv.Serve(s.httpLn) })
	s.wg.Go(s.acceptFront)
	return s, nil
}

func backendAddr(cc *pgconn.Config) (addr, network string) {
	if strings.HasPrefix(cc.Host, "/") {
		return fmt.Sprintf("%s/.s.PGSQL.%d", cc.Host, cc.Port), "unix"
	}
	return net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))), "tcp"
}

func (s *Server) now() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now()
	}
	return time.Now()
}

// domain is "<suffix>.<region>.rds.amazonaws.com".
func (s *Server) domain() string {
	return EndpointSuffix + "." + s.cfg.region() + ".rds.amazonaws.com"
}

// URL is the API's base URL: the SDK's BaseEndpoint (provider.*.endpoint_url).
func (s *Server) URL() string { return "http://" + s.httpLn.Addr().String() }

// Region is the region the fake names endpoints after.
func (s *Server) Region() string { return s.cfg.region() }

// CAPEM is the certificate of the CA that signed the endpoints'
// certificate, PEM: what clients trust instead of global-bundle.pem.
func (s *Server) CAPEM() []byte { return append([]byte(nil), s.caPEM...) }

// FrontAddr is the TLS front's address; Dial connects endpoint names there.
func (s *Server) FrontAddr() string { return s.front.Addr().String() }

// Dial is the fake's DNS: it connects addr to the TLS front when addr's
// host is the endpoint of an available cluster (with an available
// instance) or instance, and fails as a failed lookup otherwise (RDS
// publishes an endpoint's DNS name only once it can be reached).
func (s *Server) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if _, ok := s.target(host); !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.FrontAddr())
}

// LoseCreateResponse makes the next CreateDBCluster or CreateDBInstance
// of identifier succeed but drop the connection instead of answering, as
// a timeout or reset after the request reached RDS would.
func (s *Server) LoseCreateResponse(identifier string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.lose[strings.ToLower(identifier)] = true
}

// Count is how many clusters (kind "aurora") or standalone instances
// (kind "rds") named identifier exist and are not being deleted: 0 or 1.
func (s *Server) Count(kind, identifier string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	id := strings.ToLower(identifier)
	if kind == "aurora" {
		if c, ok := s.mu.clusters[id]; ok && !c.deleting() {
			return 1
		}
		return 0
	}
	if in, ok := s.mu.instances[id]; ok && in.cluster == "" && !in.deleting() {
		return 1
	}
	return 0
}

// Requests is how many API requests the fake has received.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.requests
}

// Snapshots lists the final snapshots deletions asked for.
func (s *Server) Snapshots() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.mu.snapshots...)
}

// Close stops the API and the front, ends relayed sessions and drops the
// roles and databases the fake created.
func (s *Server) Close() {
	s.mu.Lock()
	s.mu.closed = true
	for c := range s.mu.conns {
		_ = c.Close()
	}
	var names []localNames
	for _, c := range s.mu.clusters {
		names = append(names, c.local)
	}
	for _, in := range s.mu.instances {
		if in.cluster == "" {
			names = append(names, in.local)
		}
	}
	s.mu.Unlock()
	_ = s.httpSrv.Close()
	_ = s.front.Close()
	s.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for _, n := range names {
		if err := s.dropBacking(ctx, n); err != nil {
			s.log.Warn("rdstest: cleanup", "err", err)
		}
	}
	s.admin.Close()
}

// localNames are a cluster's or instance's role and database on the
// local server: "rdsf_<hash>" for the role, "rdsf_<hash>_<db>" for the
// database (hash of kind and identifier, so names fit and never collide).
type localNames struct {
	role, database string
	user, dbname   string // the names clients use
}

func newLocalNames(kind, id, user, dbname string) localNames {
	sum := sha256.Sum256([]byte(kind + "/" + id))
	base := "rdsf_" + hex.EncodeToString(sum[:6])
	db := base + "_" + dbname
	if len(db) > 63 {
		db = db[:63]
	}
	return localNames{role: base, database: db, user: user, dbname: dbname}
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

func (s *Server) createBacking(ctx context.Context, n localNames, password string) error {
	for _, q := range []string{
		"CREATE ROLE " + quoteIdent(n.role) + " LOGIN PASSWORD " + quoteLiteral(password),
		"CREATE DATABASE " + quoteIdent(n.database) + " OWNER " + quoteIdent(n.role),
		"REVOKE CONNECT ON DATABASE " + quoteIdent(n.database) + " FROM PUBLIC",
	} {
		if _, err := s.admin.Exec(ctx, q); err != nil {
			_ = s.dropBacking(context.WithoutCancel(ctx), n)
			return err
		}
	}
	return nil
}

func (s *Server) dropBacking(ctx context.Context, n localNames) error {
	if _, err := s.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(n.database)+" WITH (FORCE)"); err != nil {
		return err
	}
	_, err := s.admin.Exec(ctx, "DROP ROLE IF EXISTS "+quoteIdent(n.role))
	return err
}
