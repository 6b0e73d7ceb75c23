package rds_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awsrds "github.com/aws/aws-sdk-go-v2/service/rds"
	"github.com/aws/aws-sdk-go-v2/service/rds/types"
	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localca"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/providertest"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/provision/rds/rdstest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const testKeyID = "AKIDTESTFAKE"

// startFake starts a fake with delays compressed to tens of milliseconds.
func startFake(t *testing.T, mod func(*rdstest.Config)) *rdstest.Server {
	t.Helper()
	cfg := rdstest.Config{
		AdminDSN:    pgtest.Shared(t).AdminDSN("postgres"),
		AccessKeyID: testKeyID,
		CreateDelay: 150 * time.Millisecond,
		BackupDelay: 50 * time.Millisecond,
		DeleteDelay: 50 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := rdstest.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func newProvider(t *testing.T, s *rdstest.Server, kind rds.Kind, mod func(*rds.Config)) *rds.Provider {
	t.Helper()
	cfg := rds.Config{
		Kind:              kind,
		Region:            s.Region(),
		EndpointURL:       s.URL(),
		PasswordKey:       "test-password-key-0123456789",
		SkipFinalSnapshot: true,
		PollInterval:      40 * time.Millisecond,
		RetryDelay:        5 * time.Millisecond,
		RetryBudget:       30 * time.Second,
		Credentials:       credentials.NewStaticCredentialsProvider(testKeyID, "secret", ""),
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := rds.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// connect logs in to ep through the fake's TLS front, verify-full
// against the fake's CA, as the router does.
func connect(t *testing.T, s *rdstest.Server, ep provision.Endpoint) (*pgx.Conn, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CAPEM())
	return connectWith(t, s, ep, roots)
}

func connectWith(t *testing.T, s *rdstest.Server, ep provision.Endpoint, roots *x509.CertPool) (*pgx.Conn, error) {
	t.Helper()
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=verify-full", ep.Host, ep.Port, ep.Database, ep.User))
	if err != nil {
		t.Fatal(err)
	}
	cc.Password = ep.Password
	cc.TLSConfig = &tls.Config{RootCAs: roots, ServerName: ep.Host, MinVersion: tls.VersionTLS12}
	cc.Fallbacks = nil
	cc.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	cc.DialFunc = s.Dial
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cc)
	if err == nil {
		t.Cleanup(func() { _ = c.Close(context.Background()) })
	}
	return c, err
}

func create(t *testing.T, p *rds.Provider, tenant string) provision.Endpoint {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ep, err := p.Create(ctx, tenant)
	if err != nil {
		t.Fatalf("Create(%s): %v", tenant, err)
	}
	return ep
}

// Both kinds create a reachable database at an RDS-like endpoint, served
// with TLS that verify-full accepts for that name (and refuses with
// another CA), and delete it, the second Delete reporting ErrTenantNotFound.
func TestCreateConnectDelete(t *testing.T) {
	s := startFake(t, nil)
	for _, tc := range []struct {
		kind     rds.Kind
		hostPart string
	}{
		{rds.KindAurora, ".cluster-" + rdstest.EndpointSuffix + "."},
		{rds.KindRDS, "." + rdstest.EndpointSuffix + "."},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			p := newProvider(t, s, tc.kind, nil)
			ep := create(t, p, "acme")
			if want := "pgtenant-acme" + tc.hostPart + s.Region() + ".rds.amazonaws.com"; ep.Host != want || ep.Port != 5432 {
				t.Errorf("endpoint %s, want host %s port 5432", ep.Addr(), want)
			}
			if ep.Database != "app" || ep.User != "pgtenant" || ep.ProviderID != "pgtenant-acme" || len(ep.Password) != 40 {
				t.Errorf("endpoint %v (provider id %s, password of %d chars)", ep, ep.ProviderID, len(ep.Password))
			}
			c, err := connect(t, s, ep)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			if _, isTLS := c.PgConn().Conn().(*tls.Conn); !isTLS {
				t.Errorf("the session is not TLS: %T", c.PgConn().Conn())
			}
			other, err := localca.New()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := connectWith(t, s, ep, other.Pool()); err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("verify-full against another CA: %v, want a certificate error", err)
			}
			if _, err := c.Exec(t.Context(), "CREATE TABLE t (v int)"); err != nil {
				t.Fatalf("the master user owns the database: %v", err)
			}
			wrong := ep
			wrong.Password = "not-the-password"
			if _, err := connect(t, s, wrong); err == nil {
				t.Error("a wrong password logged in")
			}
			if got := s.Count(string(tc.kind), "pgtenant-acme"); got != 1 {
				t.Errorf("Count = %d, want 1", got)
			}
			if ok, err := p.Exists(t.Context(), "acme"); !ok || err != nil {
				t.Errorf("Exists = %t, %v; want true", ok, err)
			}
			if err := p.Delete(t.Context(), "acme"); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if got := s.Count(string(tc.kind), "pgtenant-acme"); got != 0 {
				t.Errorf("Count after Delete = %d, want 0", got)
			}
			if ok, err := p.Exists(t.Context(), "acme"); ok || err != nil {
				t.Errorf("Exists after Delete = %t, %v; want false", ok, err)
			}
			if err := p.Delete(t.Context(), "acme"); !errors.Is(err, provision.ErrTenantNotFound) {
				t.Errorf("second Delete: %v, want ErrTenantNotFound", err)
			}
			if _, err := connect(t, s, ep); err == nil {
				t.Error("a deleted tenant's endpoint still answers")
			}
		})
	}
}

// A create whose answer is lost (the fake performs it and drops the
// connection) is retried, meets AlreadyExists and adopts the cluster with
// the derived password: one cluster, and it logs in.
func TestLostCreateAnswerAdopted(t *testing.T) {
	s := startFake(t, nil)
	for _, kind := range []rds.Kind{rds.KindAurora, rds.KindRDS} {
		t.Run(string(kind), func(t *testing.T) {
			p := newProvider(t, s, kind, nil)
			s.LoseCreateResponse(p.Identifier("lost1"))
			before := s.Requests()
			ep := create(t, p, "lost1")
			t.Cleanup(func() { _ = p.Delete(context.Background(), "lost1") })
			if got := s.Count(string(kind), p.Identifier("lost1")); got != 1 {
				t.Errorf("Count = %d, want 1", got)
			}
			if s.Requests()-before < 3 {
				t.Errorf("%d requests: the lost create was not retried", s.Requests()-before)
			}
			if _, err := connect(t, s, ep); err != nil {
				t.Errorf("adopted endpoint: %v", err)
			}
		})
	}
}

// With every third request throttled, Create and Delete still succeed.
func TestThrottlingRetried(t *testing.T) {
	s := startFake(t, func(c *rdstest.Config) { c.ThrottleEvery = 3 })
	p := newProvider(t, s, rds.KindAurora, nil)
	ep := create(t, p, "busy")
	if _, err := connect(t, s, ep); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(t.Context(), "busy"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// Without retries the first throttled call fails the Create.
	q := newProvider(t, s, rds.KindAurora, func(c *rds.Config) { c.RetryBudget = time.Nanosecond })
	var err error
	for i := 0; i < 3 && err == nil; i++ {
		tenant := fmt.Sprintf("nobudget%d", i)
		_, err = q.Create(t.Context(), tenant)
		t.Cleanup(func() { _ = p.Delete(context.Background(), tenant) })
	}
	if err == nil || !strings.Contains(err.Error(), "Throttling") {
		t.Errorf("Create without a retry budget: %v, want a Throttling error", err)
	}
}

// Delete without skip_final_snapshot asks for a final snapshot named after
// the identifier.
func TestDeleteFinalSnapshot(t *testing.T) {
	s := startFake(t, nil)
	p := newProvider(t, s, rds.KindRDS, func(c *rds.Config) { c.SkipFinalSnapshot = false })
	create(t, p, "snap")
	if err := p.Delete(t.Context(), "snap"); err != nil {
		t.Fatal(err)
	}
	snaps := s.Snapshots()
	if len(snaps) != 1 || !strings.HasPrefix(snaps[0], "pgtenant-snap-final-") {
		t.Errorf("snapshots %v, want one pgtenant-snap-final-...", snaps)
	}
}

// Deleting an instance that is still being created, with a final
// snapshot, meets InvalidDBInstanceState ("a final snapshot cannot be
// taken") until it is available; Delete waits and tries again.
func TestDeleteWhileCreating(t *testing.T) {
	s := startFake(t, func(c *rdstest.Config) { c.CreateDelay = 300 * time.Millisecond })
	p := newProvider(t, s, rds.KindRDS, func(c *rds.Config) { c.SkipFinalSnapshot = false })
	api := awsrds.New(awsrds.Options{Region: s.Region(), BaseEndpoint: aws.String(s.URL()), Retryer: aws.NopRetryer{},
		Credentials: credentials.NewStaticCredentialsProvider(testKeyID, "secret", "")})
	_, err := api.CreateDBInstance(t.Context(), &awsrds.CreateDBInstanceInput{
		DBInstanceIdentifier: aws.String("pgtenant-young"), DBInstanceClass: aws.String("db.t4g.micro"), Engine: aws.String("postgres"),
		AllocatedStorage: aws.Int32(20), MasterUsername: aws.String("pgtenant"), MasterUserPassword: aws.String("password-1"),
		Tags: []types.Tag{{Key: aws.String("pgtenant:tenant"), Value: aws.String("young")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(t.Context(), "young"); err != nil {
		t.Fatalf("Delete while creating: %v", err)
	}
	if s.Count("rds", "pgtenant-young") != 0 || len(s.Snapshots()) != 1 {
		t.Errorf("after Delete: count %d, snapshots %v", s.Count("rds", "pgtenant-young"), s.Snapshots())
	}
}

// An identifier taken by a cluster created for another tenant (its tag
// differs) is neither adopted nor deleted.
func TestForeignIdentifier(t *testing.T) {
	s := startFake(t, nil)
	// Two providers whose prefixes make "b-x" of tenant "x" and of "b-"+"x".
	a := newProvider(t, s, rds.KindRDS, func(c *rds.Config) { c.IdentifierPrefix = "p-" })
	b := newProvider(t, s, rds.KindRDS, func(c *rds.Config) { c.IdentifierPrefix = "p-b-" })
	create(t, a, "b-x")
	t.Cleanup(func() { _ = a.Delete(context.Background(), "b-x") })
	var fe *rds.ForeignError
	if _, err := b.Create(t.Context(), "x"); !errors.As(err, &fe) {
		t.Errorf("Create over a foreign identifier: %v, want ForeignError", err)
	}
	if err := b.Delete(t.Context(), "x"); !errors.As(err, &fe) {
		t.Errorf("Delete of a foreign identifier: %v, want ForeignError", err)
	}
	if s.Count("rds", "p-b-x") != 1 {
		t.Error("the foreign instance was deleted")
	}
}

func TestIdentifier(t *testing.T) {
	tests := []struct {
		name, prefix, tenant string
		max                  int
		want                 string
	}{
		{"plain", "pgtenant-", "acme", 63, "pgtenant-acme"},
		{"digits and hyphens", "pgtenant-", "acme-2", 63, "pgtenant-acme-2"},
		{"underscore", "pgtenant-", "acme_co", 63, "pgtenant-acme-co-" + hash8("acme_co")},
		{"double hyphen", "pgtenant-", "a--b", 63, "pgtenant-a-b-" + hash8("a--b")},
		{"trailing hyphen", "pgtenant-", "acme-", 63, "pgtenant-acme-" + hash8("acme-")},
		{"upper case", "pgtenant-", "Acme", 63, "pgtenant-acme-" + hash8("Acme")},
		{"looks hashed", "pgtenant-", "x-0123abcd", 63, "pgtenant-x-0123abcd-" + hash8("x-0123abcd")},
		{"too long", "pgtenant-", strings.Repeat("a", 60), 61, "pgtenant-" + strings.Repeat("a", 43) + "-" + hash8(strings.Repeat("a", 60))},
		{"no prefix, digit first", "", "1abc", 63, "t-1abc-" + hash8("1abc")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rds.Identifier(tt.prefix, tt.tenant, tt.max)
			if got != tt.want {
				t.Errorf("Identifier(%q, %q, %d) = %q, want %q", tt.prefix, tt.tenant, tt.max, got, tt.want)
			}
			if len(got) > tt.max || strings.Contains(got, "--") || strings.HasSuffix(got, "-") || got[0] < 'a' || got[0] > 'z' {
				t.Errorf("%q breaks the identifier rules", got)
			}
		})
	}
}

// hash8 is the suffix Identifier documents: 8 hex digits of SHA-256.
func hash8(tenant string) string {
	sum := sha256.Sum256([]byte(tenant))
	return hex.EncodeToString(sum[:4])
}

func TestConfigValidate(t *testing.T) {
	ok := rds.Config{Kind: rds.KindAurora, Region: "eu-central-1", PasswordKey: "0123456789abcdef"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		name string
		mod  func(*rds.Config)
		want string
	}{
		{"no kind", func(c *rds.Config) { c.Kind = "" }, "kind"},
		{"no region", func(c *rds.Config) { c.Region = "" }, "region"},
		{"short key", func(c *rds.Config) { c.PasswordKey = "short" }, rds.EnvPasswordKey},
		{"bad prefix", func(c *rds.Config) { c.IdentifierPrefix = "1x-" }, "identifier_prefix"},
		{"capacity order", func(c *rds.Config) { c.MinCapacity, c.MaxCapacity = 8, 4 }, "min_capacity"},
		{"capacity step", func(c *rds.Config) { c.MaxCapacity = 2.3 }, "min_capacity"},
		{"auto pause", func(c *rds.Config) { c.AutoPauseSeconds = 60 }, "auto_pause_seconds"},
		{"storage", func(c *rds.Config) { c.Kind, c.AllocatedStorage = rds.KindRDS, 5 }, "allocated_storage"},
		{"serverless class for rds", func(c *rds.Config) { c.Kind, c.InstanceClass = rds.KindRDS, "db.serverless" }, "instance_class"},
		{"security group", func(c *rds.Config) { c.SecurityGroups = []string{"default"} }, "security_groups"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate: %v, want an error naming %s", err, tt.want)
			}
		})
	}
	if s := fmt.Sprint(ok); strings.Contains(s, ok.PasswordKey) {
		t.Errorf("Config prints its password key: %s", s)
	}
}

// TestConformance runs the providers' conformance suite for both kinds
// against the fake, routing through its TLS front with verify-full.
func TestConformance(t *testing.T) {
	s := startFake(t, nil)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CAPEM())
	upstream := router.Upstream{
		Proxy: proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: roots},
		Dial:  s.Dial,
	}
	for _, kind := range []rds.Kind{rds.KindAurora, rds.KindRDS} {
		t.Run(string(kind), func(t *testing.T) {
			p := newProvider(t, s, kind, nil)
			providertest.Run(t, providertest.Backend{
				Provider: p,
				Count: func(_ context.Context, tenant string) (int, error) {
					return s.Count(string(kind), p.Identifier(tenant)), nil
				},
				LoseCreateResponse: func(tenant string) { s.LoseCreateResponse(p.Identifier(tenant)) },
				Upstream:           upstream,
				Timeout:            time.Minute,
			})
		})
	}
}
