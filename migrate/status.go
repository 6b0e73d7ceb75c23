package migrate

import (
	"context"

	"github.com/pgtenant/pgtenant/catalog"
)

// Status is where the fleet stands, as the catalog records it.
type Status struct {
	// Target is the last registered version (0: none registered).
	Target int64
	// Registered are the registered migrations, in version order.
	Registered []catalog.Migration
	// Unregistered are the files of Config.Files not registered yet (Up
	// registers them).
	Unregistered []Migration
	// Templates are the templates' states.
	Templates []catalog.MigrationState
	// Tenants counts the tenants in the catalog (not deleted).
	Tenants int
	// Versions counts tenants per recorded version (failed ones at the
	// version they stay at).
	Versions map[int64]int
	// Unknown counts tenants no runner has recorded since they were
	// created: they may be at any version until Up or EnsureTenant has
	// looked.
	Unknown int
	// Failed and Running are the tenants recorded failed, or running (a
	// runner is at work, or died at work: the next run resumes it).
	Failed, Running []catalog.MigrationState
}

// Status reads the catalog: no database is contacted. With Config.Files it
// also checks them against the registered migrations (an edited file is an
// error here too).
func (m *Migrator) Status(ctx context.Context) (*Status, error) {
	cat := m.cfg.Catalog
	st := &Status{Versions: map[int64]int{}}
	var err error
	if st.Registered, err = cat.Migrations(ctx); err != nil {
		return nil, err
	}
	if n := len(st.Registered); n > 0 {
		st.Target = st.Registered[n-1].Version
	}
	if len(m.cfg.Files) > 0 {
		fresh, err := cat.CheckMigrations(ctx, registrable(m.cfg.Files))
		if err != nil {
			return nil, err
		}
		st.Unregistered = m.cfg.Files[len(m.cfg.Files)-len(fresh):]
	}
	tenants, err := m.readyTenants(ctx)
	if err != nil {
		return nil, err
	}
	st.Tenants = len(tenants)
	states, err := cat.MigrationStates(ctx)
	if err != nil {
		return nil, err
	}
	seen := 0
	for _, s := range states {
		if s.Kind == catalog.MigrationTemplate {
			st.Templates = append(st.Templates, s)
			continue
		}
		seen++
		st.Versions[s.Version]++
		switch s.Status {
		case catalog.MigrationFailed:
			st.Failed = append(st.Failed, s)
		case catalog.MigrationRunning:
			st.Running = append(st.Running, s)
		}
	}
	st.Unknown = max(st.Tenants-seen, 0)
	return st, nil
}
