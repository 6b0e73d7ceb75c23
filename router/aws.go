package router

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/proxy"
)

// EnvAWSPasswordKey derives the master passwords of the aurora and rds
// providers' tenants (provider.aurora.password_key, provider.rds.password_key).
const EnvAWSPasswordKey = rds.EnvPasswordKey

// RDSSettings is provider.aurora and provider.rds: one schema, the
// capacity keys apply to aurora, instance_class and allocated_storage to
// rds. AWS credentials come from the SDK's default chain
// (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or
// task role), never from this file.
type RDSSettings struct {
	Region            string        `yaml:"region"`
	EndpointURL       string        `yaml:"endpoint_url"`
	IdentifierPrefix  string        `yaml:"identifier_prefix"`
	SubnetGroup       string        `yaml:"subnet_group"`
	SecurityGroups    []string      `yaml:"security_groups"`
	MinCapacity       float64       `yaml:"min_capacity"`
	MaxCapacity       float64       `yaml:"max_capacity"`
	AutoPauseSeconds  int           `yaml:"auto_pause_seconds"`
	InstanceClass     string        `yaml:"instance_class"`
	AllocatedStorage  int           `yaml:"allocated_storage"`
	EngineVersion     string        `yaml:"engine_version"`
	Database          string        `yaml:"database"`
	MasterUsername    string        `yaml:"master_username"`
	PasswordKey       string        `yaml:"password_key"`
	CAFile            string        `yaml:"ca_file"`
	SkipFinalSnapshot bool          `yaml:"skip_final_snapshot"`
	Estimate          time.Duration `yaml:"estimate"`
	PollInterval      time.Duration `yaml:"poll_interval"`
}

func defaultRDSSettings(kind rds.Kind) RDSSettings {
	s := RDSSettings{
		IdentifierPrefix: rds.DefaultPrefix,
		Database:         rds.DefaultDatabase,
		MasterUsername:   rds.DefaultMasterUsername,
		PollInterval:     rds.DefaultPollInterval,
	}
	if kind == rds.KindAurora {
		s.MaxCapacity, s.AutoPauseSeconds, s.Estimate = rds.DefaultMaxCapacity, rds.DefaultAutoPauseSeconds, rds.DefaultAuroraEstimate
	} else {
		s.InstanceClass, s.AllocatedStorage, s.Estimate = rds.DefaultInstanceClass, rds.DefaultAllocatedStorage, rds.DefaultRDSEstimate
	}
	return s
}

// rdsSettings is provider.<kind>.
func (fc *Config) rdsSettings(kind rds.Kind) *RDSSettings {
	if kind == rds.KindAurora {
		return &fc.Provider.Aurora
	}
	return &fc.Provider.RDS
}

// RDSConfig maps provider.aurora or provider.rds to the rds package's Config.
func (fc *Config) RDSConfig(kind rds.Kind) rds.Config {
	s := fc.rdsSettings(kind)
	return rds.Config{
		Kind:              kind,
		Region:            s.Region,
		EndpointURL:       s.EndpointURL,
		IdentifierPrefix:  s.IdentifierPrefix,
		SubnetGroup:       s.SubnetGroup,
		SecurityGroups:    s.SecurityGroups,
		MinCapacity:       s.MinCapacity,
		MaxCapacity:       s.MaxCapacity,
		AutoPauseSeconds:  s.AutoPauseSeconds,
		InstanceClass:     s.InstanceClass,
		AllocatedStorage:  s.AllocatedStorage,
		EngineVersion:     s.EngineVersion,
		Database:          s.Database,
		MasterUsername:    s.MasterUsername,
		PasswordKey:       s.PasswordKey,
		SkipFinalSnapshot: s.SkipFinalSnapshot,
		Estimate:          s.Estimate,
		PollInterval:      s.PollInterval,
	}
}

// validateRDS checks provider.<kind> when kind is in use (as
// provider.kind or in provider.also; validateProviders checks catalog.dsn).
func (fc *Config) validateRDS(kind rds.Kind) []error {
	var errs []error
	key := "provider." + string(kind)
	c := fc.RDSConfig(kind)
	if err := c.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", key, err))
	}
	if fc.rdsSettings(kind).CAFile == "" && fc.Upstream.CAFile == "" && fc.Upstream.TLS != proxy.TLSDisable {
		errs = append(errs, fmt.Errorf("%s.ca_file: empty: RDS certificates are signed by RDS's own CAs; download https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem and set ca_file to it", key))
	}
	return errs
}

// buildRDS makes the aurora or rds provider for buildProvider.
func buildRDS(ctx context.Context, cfg Config, kind rds.Kind, log *slog.Logger) (builtProvider, error) {
	rc := cfg.RDSConfig(kind)
	rc.Log = log
	p, err := rds.New(ctx, rc)
	if err != nil {
		return builtProvider{}, fmt.Errorf("provider.%s: %w", kind, err)
	}
	return builtProvider{provider: p, close: p.CloseIdleConnections}, nil
}

// rdsRoots are the roots toward the aurora or rds provider's endpoints:
// base (upstream.ca_file's) or, when nil, the system roots, plus the
// provider's ca_file, so that providers with public certificates (neon)
// still verify beside it. Not kind's provider, or no ca_file: base.
func (fc *Config) rdsRoots(kind string, base *x509.CertPool) (*x509.CertPool, error) {
	if kind != string(rds.KindAurora) && kind != string(rds.KindRDS) {
		return base, nil
	}
	f := fc.rdsSettings(rds.Kind(kind)).CAFile
	if f == "" {
		return base, nil
	}
	pem, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("provider.%s.ca_file: %w", kind, err)
	}
	var roots *x509.CertPool
	if base != nil {
		roots = base.Clone()
	} else if roots, err = x509.SystemCertPool(); err != nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, errors.New("provider." + kind + ".ca_file " + f + ": no PEM certificates in it")
	}
	return roots, nil
}
