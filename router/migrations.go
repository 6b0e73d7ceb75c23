package router

import (
	"fmt"
	"time"
)

// MigrationSettings is the migrations section: how `pgtenant migrate`
// migrates the tenant databases (package migrate).
type MigrationSettings struct {
	Dir              string        `yaml:"dir"`
	Concurrency      int           `yaml:"concurrency"`
	Canary           int           `yaml:"canary"`
	MaxFailShare     float64       `yaml:"max_fail_share"`
	LockTimeout      time.Duration `yaml:"lock_timeout"`
	StatementTimeout time.Duration `yaml:"statement_timeout"`
	// OnConnect is what the router does when a tenant behind the fleet's
	// schema version connects: off (serve it as it is), migrate (migrate
	// it first) or refuse (57P03 while it is migrated in the background).
	// Empty means off. Anything but off needs Dir.
	OnConnect string `yaml:"on_connect"`
}

func (m *MigrationSettings) onConnect() string {
	if m.OnConnect == "" {
		return OnConnectOff
	}
	return m.OnConnect
}

func defaultMigrationSettings() MigrationSettings {
	return MigrationSettings{Concurrency: 4, Canary: 1, MaxFailShare: 0.1, LockTimeout: 5 * time.Second, OnConnect: OnConnectOff}
}

func (m *MigrationSettings) validate() []error {
	var errs []error
	if m.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("migrations.concurrency: %d: want 1 or more", m.Concurrency))
	}
	if m.Canary < 0 {
		errs = append(errs, fmt.Errorf("migrations.canary: %d: want 0 (no canary wave) or more", m.Canary))
	}
	if m.MaxFailShare < 0 || m.MaxFailShare > 1 {
		errs = append(errs, fmt.Errorf("migrations.max_fail_share: %g: want a share from 0 (stop at the first failure) to 1", m.MaxFailShare))
	}
	if m.LockTimeout < 0 {
		errs = append(errs, fmt.Errorf("migrations.lock_timeout: %s is negative (0: the server's setting)", m.LockTimeout))
	}
	if m.StatementTimeout < 0 {
		errs = append(errs, fmt.Errorf("migrations.statement_timeout: %s is negative (0: the server's setting)", m.StatementTimeout))
	}
	switch m.onConnect() {
	case OnConnectOff:
	case OnConnectMigrate, OnConnectRefuse:
		if m.Dir == "" {
			errs = append(errs, fmt.Errorf("migrations.on_connect: %s needs the migration files: set migrations.dir", m.OnConnect))
		}
	default:
		errs = append(errs, fmt.Errorf("migrations.on_connect: %q: want off, migrate or refuse", m.OnConnect))
	}
	return errs
}
