package router

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgtenant/pgtenant/provision/supabase"
	"github.com/pgtenant/pgtenant/proxy"
)

// SupabaseSettings is provider.supabase: a Supabase project per tenant
// (provision/supabase, docs/supabase-api.md). The access token comes from
// SUPABASE_ACCESS_TOKEN.
type SupabaseSettings struct {
	APIURL            string        `yaml:"api_url"`
	AccessToken       string        `yaml:"access_token"`
	OrganizationID    string        `yaml:"organization_id"`
	Region            string        `yaml:"region"`
	Plan              string        `yaml:"plan"`
	InstanceSize      string        `yaml:"instance_size"`
	NamePrefix        string        `yaml:"name_prefix"`
	Endpoint          string        `yaml:"endpoint"`    // pooler | direct
	PoolerMode        string        `yaml:"pooler_mode"` // transaction | session
	TransactionPort   uint16        `yaml:"transaction_port"`
	SessionPort       uint16        `yaml:"session_port"`
	DirectPort        uint16        `yaml:"direct_port"`
	RequestsPerMinute int           `yaml:"requests_per_minute"`
	RetryBudget       time.Duration `yaml:"retry_budget"`
	PollInterval      time.Duration `yaml:"poll_interval"`
	CreateTimeout     time.Duration `yaml:"create_timeout"`
	CreateEstimate    time.Duration `yaml:"create_estimate"`
}

func defaultSupabaseSettings() SupabaseSettings {
	return SupabaseSettings{
		APIURL:            supabase.DefaultAPIURL,
		NamePrefix:        supabase.DefaultNamePrefix,
		Endpoint:          supabase.EndpointPooler,
		PoolerMode:        supabase.PoolerTransaction,
		TransactionPort:   supabase.DefaultTransactionPort,
		SessionPort:       supabase.DefaultSessionPort,
		DirectPort:        supabase.DefaultDirectPort,
		RequestsPerMinute: supabase.DefaultRequestsPerMinute,
		RetryBudget:       supabase.DefaultRetryBudget,
		PollInterval:      supabase.DefaultPollInterval,
		CreateTimeout:     supabase.DefaultCreateTimeout,
		CreateEstimate:    supabase.DefaultCreateEstimate,
	}
}

// SupabaseConfig maps provider.supabase to the supabase package's Config.
func (fc *Config) SupabaseConfig() supabase.Config {
	s := fc.Provider.Supabase
	return supabase.Config{
		APIURL:            s.APIURL,
		AccessToken:       s.AccessToken,
		OrganizationID:    s.OrganizationID,
		Region:            s.Region,
		Plan:              s.Plan,
		InstanceSize:      s.InstanceSize,
		NamePrefix:        s.NamePrefix,
		Endpoint:          s.Endpoint,
		PoolerMode:        s.PoolerMode,
		TransactionPort:   s.TransactionPort,
		SessionPort:       s.SessionPort,
		DirectPort:        s.DirectPort,
		RequestsPerMinute: s.RequestsPerMinute,
		RetryBudget:       s.RetryBudget,
		PollInterval:      s.PollInterval,
		CreateTimeout:     s.CreateTimeout,
		CreateEstimate:    s.CreateEstimate,
	}
}

// validateSupabase checks provider.supabase when it is the provider: the
// package's rules, a catalog, and a way to trust Supabase's certificates
// (its CA is not a public one: docs/supabase-api.md §7).
func (fc *Config) validateSupabase() []error {
	var errs []error // catalog.dsn: validateProviders
	sc := fc.SupabaseConfig()
	if err := sc.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("provider.supabase: %w (the access token comes from %s)", err, EnvSupabaseToken))
	}
	if fc.Upstream.CAFile == "" && fc.Upstream.DialOverride == "" && (fc.Upstream.TLS == "" || fc.Upstream.TLS == proxy.TLSVerifyFull) {
		errs = append(errs, errors.New("upstream.ca_file: empty: the supabase provider verifies its upstreams (verify-full) against Supabase's CA; "+
			"download it from the dashboard (Database settings, SSL Configuration) and set upstream.ca_file, or set upstream.tls: require to encrypt without verifying"))
	}
	return errs
}
