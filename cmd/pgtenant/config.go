package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgtenant/pgtenant/proxy"
)

// Environment variables that carry secrets. They override the file (so the
// file can be committed without secrets); flags override both.
const (
	envPassword   = "PGTENANT_PASSWORD"    // the app secret clients log in with
	envAdminDSN   = "PGTENANT_ADMIN_DSN"   // local provider: admin connection string
	envCatalogDSN = "PGTENANT_CATALOG_DSN" // catalog database (default: the admin DSN)
	envCatalogKey = "PGTENANT_CATALOG_KEY" // base64 AES-256 key encrypting upstream passwords
)

// fileConfig is the YAML schema of `pgtenant serve --config`. Every key and
// its default is documented in config.example.yaml.
type fileConfig struct {
	Listen           string        `yaml:"listen"`
	InstanceID       uint8         `yaml:"instance_id"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	ConnectTimeout   time.Duration `yaml:"connect_timeout"`
	MaxStartupPacket int           `yaml:"max_startup_packet"`

	Log struct {
		Format string `yaml:"format"`
		Level  string `yaml:"level"`
	} `yaml:"log"`

	Auth struct {
		Method        string `yaml:"method"`
		Password      string `yaml:"password"`
		SCRAMVerifier string `yaml:"scram_verifier"`
	} `yaml:"auth"`

	Tenant struct {
		Separator string `yaml:"separator"`
		Pattern   string `yaml:"pattern"`
	} `yaml:"tenant"`

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

	Provider struct {
		Kind  string `yaml:"kind"`
		Local struct {
			AdminDSN    string `yaml:"admin_dsn"`
			Host        string `yaml:"host"`
			Port        uint16 `yaml:"port"`
			Template    string `yaml:"template"`
			Prefix      string `yaml:"prefix"`
			Strategy    string `yaml:"strategy"`
			TemplateSQL string `yaml:"template_sql"`
			MaxConns    int32  `yaml:"max_conns"`
		} `yaml:"local"`
	} `yaml:"provider"`
}

// defaultConfig is what an empty file means.
func defaultConfig() fileConfig {
	var fc fileConfig
	fc.Listen = "127.0.0.1:6432"
	fc.HandshakeTimeout = 10 * time.Second
	fc.ConnectTimeout = 60 * time.Second
	fc.MaxStartupPacket = proxy.DefaultMaxStartupPacket
	fc.Log.Format = "text"
	fc.Log.Level = "info"
	fc.Auth.Method = proxy.AuthSCRAM
	fc.Tenant.Pattern = proxy.DefaultTenantPattern
	fc.Cache.Size = 10000
	fc.Cache.TTL = 5 * time.Minute
	fc.Cache.NegativeTTL = time.Second
	fc.Cache.FillTimeout = 2 * time.Minute
	fc.Catalog.MaxConns = 10
	fc.Provider.Kind = "local"
	fc.Provider.Local.Template = "pgtenant_template"
	fc.Provider.Local.Prefix = "t_"
	fc.Provider.Local.MaxConns = 10
	return fc
}

// loadConfig reads path (if not empty) over the defaults, then applies the
// secret environment variables. Unknown keys are an error: a typo must not
// silently fall back to a default.
func loadConfig(path string) (fileConfig, error) {
	fc := defaultConfig()
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
	fc.applyEnv(os.Getenv)
	return fc, nil
}

func (fc *fileConfig) applyEnv(getenv func(string) string) {
	set := func(dst *string, name string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set(&fc.Auth.Password, envPassword)
	set(&fc.Provider.Local.AdminDSN, envAdminDSN)
	set(&fc.Catalog.DSN, envCatalogDSN)
	set(&fc.Catalog.Key, envCatalogKey)
}

// validate checks what can be checked without connecting anywhere.
func (fc *fileConfig) validate() error {
	var errs []error
	if fc.Listen == "" {
		errs = append(errs, errors.New("listen: empty"))
	}
	switch fc.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", fc.Log.Format))
	}
	if _, err := parseLevel(fc.Log.Level); err != nil {
		errs = append(errs, err)
	}
	switch fc.Auth.Method {
	case proxy.AuthSCRAM:
		if fc.Auth.Password == "" && fc.Auth.SCRAMVerifier == "" {
			errs = append(errs, fmt.Errorf("auth: no app secret: set %s (or auth.password, or auth.scram_verifier)", envPassword))
		}
	case proxy.AuthTrust:
	default:
		errs = append(errs, fmt.Errorf("auth.method: %q is not %s or %s", fc.Auth.Method, proxy.AuthSCRAM, proxy.AuthTrust))
	}
	if fc.Tenant.Pattern != "" {
		if _, err := regexp.Compile(fc.Tenant.Pattern); err != nil {
			errs = append(errs, fmt.Errorf("tenant.pattern: %w", err))
		}
	}
	switch fc.Provider.Kind {
	case "local":
		if fc.Provider.Local.AdminDSN == "" {
			errs = append(errs, fmt.Errorf("provider.local.admin_dsn: empty: set %s", envAdminDSN))
		}
	default:
		errs = append(errs, fmt.Errorf("provider.kind: %q is not supported (supported: local)", fc.Provider.Kind))
	}
	if fc.Catalog.Key == "" {
		errs = append(errs, fmt.Errorf("catalog.key: empty: set %s to a base64 32-byte key (pgtenant genkey prints one)", envCatalogKey))
	}
	return errors.Join(errs...)
}

// proxyConfig maps the file to the proxy package's Config.
func (fc *fileConfig) proxyConfig() (proxy.Config, error) {
	cfg := proxy.Config{
		Auth: proxy.Auth{
			Method:   fc.Auth.Method,
			Password: fc.Auth.Password,
			Verifier: fc.Auth.SCRAMVerifier,
		},
		Tenant:           proxy.TenantConfig{Separator: fc.Tenant.Separator},
		HandshakeTimeout: fc.HandshakeTimeout,
		ConnectTimeout:   fc.ConnectTimeout,
		MaxStartupPacket: fc.MaxStartupPacket,
		InstanceID:       fc.InstanceID,
	}
	if fc.Tenant.Pattern != "" && fc.Tenant.Pattern != proxy.DefaultTenantPattern {
		re, err := regexp.Compile(fc.Tenant.Pattern)
		if err != nil {
			return cfg, fmt.Errorf("tenant.pattern: %w", err)
		}
		cfg.Tenant.Pattern = re
	}
	return cfg, nil
}
