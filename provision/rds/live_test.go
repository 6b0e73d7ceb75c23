package rds_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/provision/providertest"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// The live tests create real Aurora clusters and RDS instances (billed;
// each run takes about an hour) and run the conformance suite on them.
// They run only when PGTENANT_AWS_LIVE=1 and AWS credentials are set:
//
//	AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)   credentials (the SDK's default chain)
//	AWS_REGION                   region (required)
//	PGTENANT_AWS_CA_FILE         the RDS CA bundle, global-bundle.pem (required: verify-full)
//	PGTENANT_AWS_SUBNET_GROUP    DB subnet group (default: the default VPC)
//	PGTENANT_AWS_SECURITY_GROUPS comma-separated sg-... letting this host reach port 5432
//	PGTENANT_AWS_PASSWORD_KEY    the password key (default: a fixed test key)
//
// The suite's lost-answer test is skipped: a real API cannot be told to
// lose one.
func liveConfig(t *testing.T, kind rds.Kind) (rds.Config, *x509.CertPool) {
	t.Helper()
	if os.Getenv("PGTENANT_AWS_LIVE") != "1" {
		t.Skip("live AWS test: PGTENANT_AWS_LIVE is not 1 (set it with AWS credentials, AWS_REGION and PGTENANT_AWS_CA_FILE to create real, billed clusters)")
	}
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" && os.Getenv("AWS_PROFILE") == "" {
		t.Skip("live AWS test: no AWS_ACCESS_KEY_ID or AWS_PROFILE")
	}
	region, caFile := os.Getenv("AWS_REGION"), os.Getenv("PGTENANT_AWS_CA_FILE")
	if region == "" || caFile == "" {
		t.Skip("live AWS test: AWS_REGION and PGTENANT_AWS_CA_FILE (global-bundle.pem) are required")
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("%s: no PEM certificates", caFile)
	}
	key := os.Getenv("PGTENANT_AWS_PASSWORD_KEY")
	if key == "" {
		key = "pgtenant-live-test-password-key"
	}
	cfg := rds.Config{
		Kind:              kind,
		Region:            region,
		IdentifierPrefix:  "pgtenant-test-",
		SubnetGroup:       os.Getenv("PGTENANT_AWS_SUBNET_GROUP"),
		PasswordKey:       key,
		SkipFinalSnapshot: true,
		PollInterval:      20 * time.Second,
		Log:               slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if sg := os.Getenv("PGTENANT_AWS_SECURITY_GROUPS"); sg != "" {
		cfg.SecurityGroups = strings.Split(sg, ",")
	}
	return cfg, roots
}

func liveConformance(t *testing.T, kind rds.Kind) {
	cfg, roots := liveConfig(t, kind)
	p, err := rds.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	providertest.Run(t, providertest.Backend{
		Provider: p,
		Count: func(ctx context.Context, tenant string) (int, error) {
			ok, err := p.Exists(ctx, tenant)
			if ok {
				return 1, err
			}
			return 0, err
		},
		SkipLost: "a real API cannot be told to lose an answer",
		Upstream: router.Upstream{Proxy: proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: roots}},
		Timeout:  30 * time.Minute,
	})
}

func TestLiveAurora(t *testing.T) { liveConformance(t, rds.KindAurora) }

func TestLiveRDS(t *testing.T) { liveConformance(t, rds.KindRDS) }
