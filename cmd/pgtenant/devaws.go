package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/provision/rds/rdstest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// awsFakeCatalog is the catalog database of `dev --provider aurora-fake`
// and rds-fake. The fake RDS API keeps its state in memory, so the
// catalog starts empty on every run too.
const awsFakeCatalog = "pgtenant_awsfake_catalog"

// awsFake is the fake RDS API `pgtenant dev --provider aurora-fake|rds-fake`
// runs in-process on the dev cluster, and the real provider talking to it.
type awsFake struct {
	srv   *rdstest.Server
	kind  rds.Kind
	parts *router.Upstream
}

// startAWSFake starts the fake (clusters or instances take createDelay to
// become available) and returns the router's provider and upstream
// settings for it: the real AWS SDK client, TLS verify-full with SNI
// against the fake's CA (in place of global-bundle.pem), dialled to the
// fake's TLS front.
func startAWSFake(ctx context.Context, cl *localproc.Cluster, kind rds.Kind, createDelay time.Duration, log *slog.Logger) (*awsFake, error) {
	srv, err := rdstest.Start(ctx, rdstest.Config{
		AdminDSN:    cl.AdminDSN("postgres"),
		CreateDelay: createDelay * 2 / 3,
		BackupDelay: createDelay / 3,
		Log:         log,
	})
	if err != nil {
		return nil, err
	}
	p, err := rds.New(ctx, rds.Config{
		Kind:              kind,
		Region:            srv.Region(),
		EndpointURL:       srv.URL(),
		PasswordKey:       rand.Text(), // the fake forgets its clusters at exit; so may we the key
		SkipFinalSnapshot: true,
		Estimate:          createDelay,
		PollInterval:      max(createDelay/10, 50*time.Millisecond),
		Credentials:       credentials.NewStaticCredentialsProvider("AKIDPGTENANTDEV", rand.Text(), ""),
		Log:               log,
	})
	if err != nil {
		srv.Close()
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(srv.CAPEM())
	f := &awsFake{srv: srv, kind: kind, parts: &router.Upstream{
		Provider:   p,
		Proxy:      proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: roots},
		Dial:       srv.Dial,
		CatalogDSN: cl.AdminDSN(awsFakeCatalog),
		Close:      func() {},
	}}
	if err := resetDatabase(ctx, cl.AdminDSN("postgres"), awsFakeCatalog); err != nil {
		srv.Close()
		return nil, err
	}
	return f, nil
}

func (f *awsFake) close() { f.srv.Close() }

func (f *awsFake) banner(w io.Writer) {
	fmt.Fprintf(w, "  %s-fake %s   (fake RDS API, region %s; endpoints *.%s.%s.rds.amazonaws.com, TLS from the fake's CA)\n",
		f.kind, f.srv.URL(), f.srv.Region(), rdstest.EndpointSuffix, f.srv.Region())
}

func (f *awsFake) what() string {
	if f.kind == rds.KindAurora {
		return "Aurora Serverless v2 cluster (fake, in memory: gone when dev stops)"
	}
	return "RDS for PostgreSQL instance (fake, in memory: gone when dev stops)"
}
