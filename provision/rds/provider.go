package rds

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awsrds "github.com/aws/aws-sdk-go-v2/service/rds"
	"github.com/aws/aws-sdk-go-v2/service/rds/types"
	"github.com/aws/smithy-go"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/internal/backoff"
)

// Provider creates a cluster (Aurora) or an instance (RDS) per tenant.
// Safe for concurrent use.
type Provider struct {
	cfg  Config
	api  *awsrds.Client
	http aws.HTTPClient
	log  *slog.Logger
}

var (
	_ provision.Provider  = (*Provider)(nil)
	_ provision.Estimator = (*Provider)(nil)
)

// New validates cfg and makes a Provider. It loads the SDK's default
// configuration (credentials chain, shared config files) but calls no API.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(cfg.Region),
		// Our own loop retries (throttling, lost answers) under
		// RetryBudget, so that a create is never repeated blindly.
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if cfg.Credentials != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(cfg.Credentials))
	}
	if cfg.HTTPClient != nil {
		opts = append(opts, awsconfig.WithHTTPClient(cfg.HTTPClient))
	}
	ac, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("rds: AWS configuration: %w", err)
	}
	if bc, ok := ac.HTTPClient.(*awshttp.BuildableClient); ok {
		// Frozen into a plain *http.Client (keeping AWS_CA_BUNDLE if set),
		// so CloseIdleConnections can reach its transport.
		ac.HTTPClient = bc.WithTimeout(DefaultHTTPTimeout).Freeze()
	}
	p := &Provider{cfg: cfg, http: ac.HTTPClient, log: cfg.Log}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.api = awsrds.NewFromConfig(ac, func(o *awsrds.Options) {
		if cfg.EndpointURL != "" {
			o.BaseEndpoint = aws.String(cfg.EndpointURL)
		}
	})
	return p, nil
}

// CloseIdleConnections closes the API client's idle keep-alive
// connections; the router calls it when it stops.
func (p *Provider) CloseIdleConnections() {
	if c, ok := p.http.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Name is the provider's kind: "aurora" or "rds".
func (p *Provider) Name() string { return string(p.cfg.Kind) }

// CreateEstimate is Config.Estimate or the kind's typical creation time.
func (p *Provider) CreateEstimate() time.Duration { return p.cfg.estimate() }

// Identifier is the cluster (Aurora) or instance (RDS) identifier of
// tenant; an Aurora writer instance is Identifier + "-w".
func (p *Provider) Identifier(tenant string) string {
	maxLen := maxIdentLen
	if p.cfg.Kind == KindAurora {
		maxLen -= len(writerSuffix)
	}
	return Identifier(p.cfg.prefix(), tenant, maxLen)
}

var hashSuffixRE = regexp.MustCompile(`-[0-9a-f]{8}$`)

// Identifier derives an RDS identifier (docs/aws-rds-api.md §2: letters,
// digits and hyphens, a letter first, no trailing or double hyphen) of at
// most maxLen characters from prefix and tenant. A tenant that fits as it
// is keeps its name (prefix + tenant); any other (upper case, underscores,
// double hyphens, too long, or ending like a hash suffix) gets a readable
// approximation plus "-" and 8 hex digits of the tenant's SHA-256, so
// distinct tenants get distinct identifiers.
func Identifier(prefix, tenant string, maxLen int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(prefix + tenant) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case strings.HasSuffix(b.String(), "-") || b.Len() == 0:
		default:
			b.WriteByte('-')
		}
	}
	id := b.String()
	if id == "" || id[0] < 'a' || id[0] > 'z' {
		id = "t-" + id
	}
	exact := id == prefix+tenant && !strings.HasSuffix(id, "-") && len(id) <= maxLen && !hashSuffixRE.MatchString(tenant)
	if exact {
		return id
	}
	sum := sha256.Sum256([]byte(tenant))
	suffix := "-" + hex.EncodeToString(sum[:4])
	if len(id) > maxLen-len(suffix) {
		id = id[:maxLen-len(suffix)]
	}
	return strings.TrimRight(id, "-") + suffix
}

// password is tenant's master password: HMAC-SHA256 under PasswordKey,
// base64url (printable, without / " @, §3.1), 40 characters.
func (p *Provider) password(tenant string) string {
	m := hmac.New(sha256.New, []byte(p.cfg.PasswordKey))
	m.Write([]byte("pgtenant/" + string(p.cfg.Kind) + "/" + tenant))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))[:passwordLen]
}

// Error codes (docs/aws-rds-api.md §5).
const (
	codeClusterExists   = "DBClusterAlreadyExistsFault"
	codeInstanceExists  = "DBInstanceAlreadyExists"
	codeClusterNotFound = "DBClusterNotFoundFault"
	codeInstanceMissing = "DBInstanceNotFound"
	codeClusterState    = "InvalidDBClusterStateFault"
	codeInstanceState   = "InvalidDBInstanceState"
)

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// retryable: throttling, AWS-side failures, and answers that never came
// (the request may have been performed: creates adopt by identifier).
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch apiCode(err) {
	case "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
		"InternalFailure", "InternalError", "ServiceUnavailable":
		return true
	case "":
		return true // no API answer at all: connection reset, EOF, timeout
	}
	return false
}

// call runs f, retrying what retryable says with jittered exponential
// backoff under ctx and RetryBudget.
func (p *Provider) call(ctx context.Context, op string, f func(context.Context) error) error {
	deadline := time.Now().Add(orDur(p.cfg.RetryBudget, DefaultRetryBudget))
	wait := orDur(p.cfg.RetryDelay, DefaultRetryDelay)
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil || !retryable(err) {
			return err
		}
		d := wait/2 + rand.N(wait/2+1)
		if time.Now().Add(d).After(deadline) {
			return fmt.Errorf("%s: gave up after %d attempts: %w", op, attempt, err)
		}
		p.log.Debug("rds: retrying", "op", op, "attempt", attempt, "err", err)
		if err := backoff.Sleep(ctx, d); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		wait = min(wait*2, 20*time.Second)
	}
}

// poller spaces status checks: a quarter of PollInterval first, growing
// by half each time up to PollInterval.
type poller struct{ cur, max time.Duration }

func (p *Provider) newPoller() *poller {
	m := orDur(p.cfg.PollInterval, DefaultPollInterval)
	return &poller{cur: max(m/4, defaultPollFloor), max: m}
}

func (w *poller) wait(ctx context.Context) error {
	d := w.cur
	w.cur = min(w.cur*3/2, w.max)
	return backoff.Sleep(ctx, d)
}

// StatusError says a cluster or instance is in a state it will not leave
// by itself (failed, incompatible-parameters, ...).
type StatusError struct {
	Identifier, Status string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("rds: %s is %q: it needs attention in the RDS console before it can serve the tenant", e.Identifier, e.Status)
}

// stuck are statuses that need a person (docs/aws-rds-api.md §4).
var stuck = map[string]bool{
	"failed": true, "incompatible-parameters": true, "incompatible-network": true, "incompatible-restore": true,
	"inaccessible-encryption-credentials": true, "inaccessible-encryption-credentials-recoverable": true,
	"restore-error": true, "storage-full": true, "stopped": true, "stopping": true, "insufficient-capacity": true,
}

// ForeignError says an identifier is taken by a cluster or instance that
// was not created for the tenant (its pgtenant:tenant tag differs).
type ForeignError struct {
	Identifier, Tenant string
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("rds: %s exists but was not created by pgtenant for tenant %s (tag %s): rename it or change identifier_prefix", e.Identifier, e.Tenant, tagTenant)
}

func checkTag(id, tenant string, tags []types.Tag) error {
	for _, t := range tags {
		if aws.ToString(t.Key) == tagTenant {
			if aws.ToString(t.Value) == tenant {
				return nil
			}
			break
		}
	}
	return &ForeignError{Identifier: id, Tenant: tenant}
}

func (p *Provider) tags(tenant string) []types.Tag {
	return []types.Tag{{Key: aws.String(tagTenant), Value: aws.String(tenant)}}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}
