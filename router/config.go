package router

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// Environment variables that carry secrets. They override the file (so the
// file can be committed without secrets); flags override both.
const (
	EnvPassword   = "PGTENANT_PASSWORD"    // the app secret clients log in with
	EnvAdminDSN   = "PGTENANT_ADMIN_DSN"   // local provider: admin connection string
	EnvCatalogDSN = "PGTENANT_CATALOG_DSN" // catalog database (default: the admin DSN)
	EnvCatalogKey = "PGTENANT_CATALOG_KEY" // base64 AES-256 key encrypting upstream passwords
	EnvNeonAPIKey = "NEON_API_KEY"         // neon provider: API key
	// EnvSupabaseToken is the supabase provider's Management API access
	// token (the name the Supabase CLI uses).
	EnvSupabaseToken = "SUPABASE_ACCESS_TOKEN"
)

// NeonSettings is provider.neon.
type NeonSettings struct {
	BaseURL  string `yaml:"base_url"`
	APIKey   string `yaml:"api_key"`
	Mode     string `yaml:"mode"`
	Projects []struct {
		ID             string `yaml:"id"`
		ParentBranchID string `yaml:"parent_branch_id"`
		MaxBranches    int    `yaml:"max_branches"`
	} `yaml:"projects"`
	RegionID          string        `yaml:"region_id"`
	PGVersion         int           `yaml:"pg_version"`
	OrgID             string        `yaml:"org_id"`
	SuspendTimeout    time.Duration `yaml:"suspend_timeout"`
	MinCU             float64       `yaml:"min_cu"`
	MaxCU             float64       `yaml:"max_cu"`
	Database          string        `yaml:"database"`
	Role              string        `yaml:"role"`
	UniquePasswords   bool          `yaml:"unique_passwords"`
	Prefix            string        `yaml:"prefix"`
	RequestsPerMinute int           `yaml:"requests_per_minute"`
	RetryBudget       time.Duration `yaml:"retry_budget"`
	OpTimeout         time.Duration `yaml:"op_timeout"`
}

// Config is the YAML schema of `pgtenant serve --config`. Every key and
// its default is documented in config.example.yaml.
type Config struct {
	Listen           string        `yaml:"listen"`
	ListenReusePort  bool          `yaml:"listen_reuseport"` // SO_REUSEPORT on the client listener (listen.go)
	InstanceID       InstanceID    `yaml:"instance_id"`      // 0-255 or auto (cluster.go)
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	ConnectTimeout   time.Duration `yaml:"connect_timeout"`
	MaxStartupPacket int           `yaml:"max_startup_packet"`
	DrainTimeout     time.Duration `yaml:"drain_timeout"`

	Log struct {
		Format string `yaml:"format"`
		Level  string `yaml:"level"`
	} `yaml:"log"`

	Admin struct {
		Listen         string        `yaml:"listen"`
		Token          string        `yaml:"token"`
		BlockedRefresh time.Duration `yaml:"blocked_refresh"`
	} `yaml:"admin"`

	Auth struct {
		Method        string `yaml:"method"`
		Password      string `yaml:"password"`
		SCRAMVerifier string `yaml:"scram_verifier"`
		// Tenants' own secrets (credentials.go).
		PerTenant        bool          `yaml:"per_tenant"`
		TenantSecret     string        `yaml:"tenant_secret"`
		PerTenantRefresh time.Duration `yaml:"per_tenant_refresh"`
	} `yaml:"auth"`

	TLS struct {
		Mode     string `yaml:"mode"`
		CertFile string `yaml:"cert_file"`
		KeyFile  string `yaml:"key_file"`
	} `yaml:"tls"`

	Tenant struct {
		Separator string   `yaml:"separator"`
		Pattern   string   `yaml:"pattern"`
		Carriers  []string `yaml:"carriers"`
		SNISuffix string   `yaml:"sni_suffix"`
		// Who may create tenants, and how many (tenants.go).
		Create           string `yaml:"create"`
		MaxTenants       int    `yaml:"max_tenants"`
		CreatesPerMinute int    `yaml:"creates_per_minute"`
		// Slow providers' background creations (tenants.go).
		CreateWait   time.Duration `yaml:"create_wait"`
		CreateBudget time.Duration `yaml:"create_budget"`
		CreateLease  time.Duration `yaml:"create_lease"`
	} `yaml:"tenant"`

	Limits struct {
		MaxConnections          int `yaml:"max_connections"`
		MaxConnectionsPerTenant int `yaml:"max_connections_per_tenant"`
		// Split over the cluster's live instances (limits.go).
		MaxConnectionsPerTenantCluster int           `yaml:"max_connections_per_tenant_cluster"`
		MaxHandshakes                  int           `yaml:"max_handshakes"`
		MaxConcurrentCreates           int           `yaml:"max_concurrent_creates"`
		IdleTimeout                    time.Duration `yaml:"idle_timeout"`
		CancelRate                     int           `yaml:"cancel_rate"`  // limits.go
		CancelBurst                    int           `yaml:"cancel_burst"` // limits.go
		AuthBackoff                    struct {
			Threshold int           `yaml:"threshold"`
			Initial   time.Duration `yaml:"initial"`
			Max       time.Duration `yaml:"max"`
			Window    time.Duration `yaml:"window"`
		} `yaml:"auth_backoff"`
	} `yaml:"limits"`

	KeepAlive struct {
		Idle     time.Duration `yaml:"idle"`
		Interval time.Duration `yaml:"interval"`
		Count    int           `yaml:"count"`
	} `yaml:"keepalive"`

	BlockedTenants []string `yaml:"blocked_tenants"`

	Cache struct {
		Size        int           `yaml:"size"`
		TTL         time.Duration `yaml:"ttl"`
		NegativeTTL time.Duration `yaml:"negative_ttl"`
		FillTimeout time.Duration `yaml:"fill_timeout"`
	} `yaml:"cache"`

	Catalog struct {
		DSN      string `yaml:"dsn"`
		Key      string `yaml:"key"`
		MaxConns int32  `yaml:"max_conns"`
	} `yaml:"catalog"`

	Upstream struct {
		TLS            string   `yaml:"tls"`
		CAFile         string   `yaml:"ca_file"`
		EndpointOption bool     `yaml:"endpoint_option"`
		ForwardParams  []string `yaml:"forward_params"`
		DialOverride   string   `yaml:"dial_override"`
	} `yaml:"upstream"`

	Pool PoolSettings `yaml:"pool"` // pool.go

	Migrations MigrationSettings `yaml:"migrations"` // migrations.go

	Cluster ClusterSettings `yaml:"cluster"` // cluster.go

	Provider struct {
		Kind string `yaml:"kind"`
		// Also are more providers tenants can be placed on (providers.go).
		Also     []string         `yaml:"also"`
		Neon     NeonSettings     `yaml:"neon"`
		Static   StaticSettings   `yaml:"static"`   // providers.go
		Supabase SupabaseSettings `yaml:"supabase"` // supabase.go
		Aurora   RDSSettings      `yaml:"aurora"`   // aws.go
		RDS      RDSSettings      `yaml:"rds"`      // aws.go
		Local    struct {
			AdminDSN    string `yaml:"admin_dsn"`
			Host        string `yaml:"host"`
			Port        uint16 `yaml:"port"`
			Template    string `yaml:"template"`
			Prefix      string `yaml:"prefix"`
			Naming      string `yaml:"naming"` // plain | hashed (naming.go)
			Strategy    string `yaml:"strategy"`
			Spares      int    `yaml:"spares"`
			TemplateSQL string `yaml:"template_sql"`
			MaxConns    int32  `yaml:"max_conns"`
		} `yaml:"local"`
	} `yaml:"provider"`
}

// defaultConfig is what an empty file means.
func DefaultConfig() Config {
	var fc Config
	fc.Listen = "127.0.0.1:6432"
	fc.HandshakeTimeout = 10 * time.Second
	fc.ConnectTimeout = 60 * time.Second
	fc.MaxStartupPacket = proxy.DefaultMaxStartupPacket
	fc.DrainTimeout = 30 * time.Second
	fc.Log.Format = "text"
	fc.Log.Level = "info"
	fc.Admin.BlockedRefresh = 10 * time.Second
	fc.Auth.Method = proxy.AuthSCRAM
	fc.Auth.TenantSecret = proxy.TenantSecretBesides
	fc.Auth.PerTenantRefresh = DefaultPerTenantRefresh
	fc.TLS.Mode = proxy.TLSModeDisable
	fc.Tenant.Pattern = proxy.DefaultTenantPattern
	fc.Tenant.Carriers = []string{proxy.CarrierUser}
	fc.Tenant.Create = string(resolver.CreateAuto)
	fc.Tenant.CreateWait = DefaultCreateWait     // tenants.go
	fc.Tenant.CreateBudget = DefaultCreateBudget // tenants.go
	fc.Tenant.CreateLease = DefaultCreateLease   // tenants.go
	fc.Limits.MaxHandshakes = 1000
	fc.Limits.AuthBackoff.Threshold = 3
	fc.Limits.AuthBackoff.Initial = time.Second
	fc.Limits.AuthBackoff.Max = time.Minute
	fc.Limits.AuthBackoff.Window = 10 * time.Minute
	fc.Limits.CancelRate = 10
	fc.Limits.CancelBurst = 20
	fc.KeepAlive.Idle = 60 * time.Second
	fc.KeepAlive.Interval = 10 * time.Second
	fc.KeepAlive.Count = 6
	fc.Cache.Size = 10000
	fc.Cache.TTL = 5 * time.Minute
	fc.Cache.NegativeTTL = time.Second
	fc.Cache.FillTimeout = 2 * time.Minute
	fc.Catalog.MaxConns = 10
	fc.Pool = defaultPoolSettings() // pool.go
	fc.Migrations = defaultMigrationSettings()
	fc.Cluster = defaultClusterSettings()
	fc.Provider.Kind = "local"
	fc.Provider.Local.Template = "pgtenant_template"
	fc.Provider.Local.Prefix = "t_"
	fc.Provider.Local.Naming = local.NamingPlain
	fc.Provider.Local.MaxConns = 10
	n := &fc.Provider.Neon
	n.BaseURL = neon.DefaultBaseURL
	n.Mode = string(neon.ModeBranch)
	n.Prefix = neon.DefaultPrefix
	n.RequestsPerMinute = neon.DefaultRequestsPerMinute
	n.RetryBudget = neon.DefaultRetryBudget
	n.OpTimeout = neon.DefaultOpTimeout
	fc.Provider.Supabase = defaultSupabaseSettings()        // supabase.go
	fc.Provider.Aurora = defaultRDSSettings(rds.KindAurora) // aws.go
	fc.Provider.RDS = defaultRDSSettings(rds.KindRDS)
	return fc
}

// loadConfig reads path (if not empty) over the defaults, then applies the
// secret environment variables. Unknown keys are an error: a typo must not
// silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	fc := DefaultConfig()
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return fc, fmt.Errorf("config: %w", err)
		}
		defer f.Close()
		dec := yaml.NewDecoder(f)
		dec.KnownFields(true)
		if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) { // io.EOF: empty file
			return fc, fmt.Errorf("config %s: %w", path, err)
		}
	}
	// An empty YAML list means the same as leaving the key out.
	if len(fc.Upstream.ForwardParams) == 0 {
		fc.Upstream.ForwardParams = nil
	}
	if len(fc.Provider.Neon.Projects) == 0 {
		fc.Provider.Neon.Projects = nil
	}
	if len(fc.BlockedTenants) == 0 {
		fc.BlockedTenants = nil
	}
	if len(fc.Provider.Also) == 0 {
		fc.Provider.Also = nil
	}
	if len(fc.Provider.Static.Routes) == 0 {
		fc.Provider.Static.Routes = nil
	}
	if len(fc.Provider.Aurora.SecurityGroups) == 0 {
		fc.Provider.Aurora.SecurityGroups = nil
	}
	if len(fc.Provider.RDS.SecurityGroups) == 0 {
		fc.Provider.RDS.SecurityGroups = nil
	}
	fc.applyEnv(os.Getenv)
	return fc, nil
}

func (fc *Config) applyEnv(getenv func(string) string) {
	set := func(dst *string, name string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set(&fc.Auth.Password, EnvPassword)
	set(&fc.Provider.Local.AdminDSN, EnvAdminDSN)
	set(&fc.Catalog.DSN, EnvCatalogDSN)
	set(&fc.Catalog.Key, EnvCatalogKey)
	set(&fc.Provider.Neon.APIKey, EnvNeonAPIKey)
	set(&fc.Provider.Supabase.AccessToken, EnvSupabaseToken)
	set(&fc.Provider.Aurora.PasswordKey, EnvAWSPasswordKey) // aws.go
	set(&fc.Provider.RDS.PasswordKey, EnvAWSPasswordKey)
	set(&fc.Admin.Token, EnvAdminToken)
	set(&fc.Cluster.Secret, EnvClusterSecret)
	set(&fc.Cluster.Advertise, EnvClusterAdvertise)
}

// Validate checks what can be checked without connecting anywhere: the
// file's own rules here, and the proxy's through proxy.Config.Validate.
func (fc *Config) Validate() error {
	var errs []error
	if fc.Listen == "" {
		errs = append(errs, errors.New("listen: empty"))
	}
	switch fc.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", fc.Log.Format))
	}
	if _, err := ParseLevel(fc.Log.Level); err != nil {
		errs = append(errs, err)
	}
	if fc.Tenant.Pattern != "" {
		if _, err := regexp.Compile(fc.Tenant.Pattern); err != nil {
			errs = append(errs, fmt.Errorf("tenant.pattern: %w", err))
		}
	}
	errs = append(errs, fc.validateTenantCreation()...) // tenants.go
	errs = append(errs, fc.validateAuth()...)           // credentials.go

	errs = append(errs, fc.validateListen()...) // listen.go
	errs = append(errs, fc.validateLimits()...) // limits.go
	errs = append(errs, fc.Pool.validate()...)  // pool.go
	errs = append(errs, fc.Migrations.validate()...)
	// What the proxy checks, it owns; only the hint at where the secret
	// comes from is the file's.
	if pc, err := fc.ProxyConfig(); err == nil {
		if err := pc.Validate(); err != nil {
			if errors.Is(err, proxy.ErrNoAppSecret) {
				err = fmt.Errorf("%w\n(the app secret: set %s, or auth.password, or auth.scram_verifier)", err, EnvPassword)
			}
			if fc.Auth.PerTenant && fc.Auth.Password == "" && fc.Auth.SCRAMVerifier != "" {
				err = fmt.Errorf("auth.per_tenant: %w\n(give the app secret in %s or auth.password instead of auth.scram_verifier, or turn auth.per_tenant off)", err, EnvPassword)
			}
			errs = append(errs, err)
		}
	}
	errs = append(errs, fc.validateProviders()...)  // providers.go
	errs = append(errs, fc.Cluster.validate()...)   // cluster.go
	errs = append(errs, fc.validateInstanceID()...) // cluster.go
	if fc.Admin.BlockedRefresh < 0 {
		errs = append(errs, fmt.Errorf("admin.blocked_refresh: %s is negative (0 turns the refresh off)", fc.Admin.BlockedRefresh))
	}
	if fc.Catalog.Key == "" {
		errs = append(errs, fmt.Errorf("catalog.key: empty: set %s to a base64 32-byte key (pgtenant genkey prints one)", EnvCatalogKey))
	}
	return errors.Join(errs...)
}

// proxyConfig maps the file to the proxy package's Config.
func (fc *Config) ProxyConfig() (proxy.Config, error) {
	cfg := proxy.Config{
		Auth: proxy.Auth{
			Method:   fc.Auth.Method,
			Password: fc.Auth.Password,
			Verifier: fc.Auth.SCRAMVerifier,

			PerTenant:    fc.Auth.PerTenant,
			TenantSecret: fc.Auth.TenantSecret,
		},
		Limits:           fc.ProxyLimits(),     // limits.go
		KeepAlive:        fc.KeepAliveConfig(), // limits.go
		HandshakeTimeout: fc.HandshakeTimeout,
		ConnectTimeout:   fc.ConnectTimeout,
		MaxStartupPacket: fc.MaxStartupPacket,
		DrainTimeout:     fc.DrainTimeout,
		InstanceID:       fc.InstanceID.fixed(), // auto: New sets the claimed ID
		TLS:              proxy.TLSConfig{Mode: fc.TLS.Mode, CertFile: fc.TLS.CertFile, KeyFile: fc.TLS.KeyFile},
	}
	if fc.Auth.PerTenant {
		cfg.Auth.SaltKey = fc.saltKey() // credentials.go
	}
	var err error
	cfg.Tenant, err = fc.TenantConfig()
	return cfg, err
}

// TenantConfig maps the tenant section to the proxy's rule.
func (fc *Config) TenantConfig() (proxy.TenantConfig, error) {
	tc := proxy.TenantConfig{Separator: fc.Tenant.Separator, Carriers: fc.Tenant.Carriers, SNISuffix: fc.Tenant.SNISuffix}
	if fc.Tenant.Pattern != "" && fc.Tenant.Pattern != proxy.DefaultTenantPattern {
		re, err := regexp.Compile(fc.Tenant.Pattern)
		if err != nil {
			return tc, fmt.Errorf("tenant.pattern: %w", err)
		}
		tc.Pattern = re
	}
	return tc, nil
}

// neonConfig maps provider.neon to the neon package's Config.
func (fc *Config) NeonConfig() (neon.Config, error) {
	n := fc.Provider.Neon
	nc := neon.Config{
		BaseURL:           n.BaseURL,
		APIKey:            n.APIKey,
		Mode:              neon.Mode(n.Mode),
		RegionID:          n.RegionID,
		PGVersion:         n.PGVersion,
		OrgID:             n.OrgID,
		SuspendTimeout:    n.SuspendTimeout,
		MinCU:             n.MinCU,
		MaxCU:             n.MaxCU,
		Database:          n.Database,
		Role:              n.Role,
		UniquePasswords:   n.UniquePasswords,
		Prefix:            n.Prefix,
		RequestsPerMinute: n.RequestsPerMinute,
		RetryBudget:       n.RetryBudget,
		OpTimeout:         n.OpTimeout,
	}
	switch nc.Mode {
	case neon.ModeBranch, neon.ModeProject:
	default:
		return nc, fmt.Errorf("provider.neon.mode: %q is not branch or project", n.Mode)
	}
	for _, p := range n.Projects {
		nc.Projects = append(nc.Projects, neon.BranchProject{ID: p.ID, ParentBranchID: p.ParentBranchID, MaxBranches: p.MaxBranches})
	}
	return nc, nil
}
