package rdstest

import (
	"time"
)

// Statuses (docs/aws-rds-api.md §4).
const (
	statusCreating  = "creating"
	statusBackingUp = "backing-up"
	statusAvailable = "available"
	statusDeleting  = "deleting"
)

// lifecycle is the timing both clusters and instances share: the status
// follows from the clock, so no goroutine moves it along.
type lifecycle struct {
	created     time.Time
	available   time.Time // created + create and backup delays
	backingUp   time.Time // when "creating" ends
	deleteUntil time.Time // zero: not deleting
}

func (s *Server) newLifecycle(now time.Time) lifecycle {
	c := delay(s.cfg.CreateDelay, DefaultCreateDelay)
	b := delay(s.cfg.BackupDelay, DefaultBackupDelay)
	return lifecycle{created: now, backingUp: now.Add(c), available: now.Add(c + b)}
}

func (l *lifecycle) status(now time.Time) string {
	switch {
	case !l.deleteUntil.IsZero():
		return statusDeleting
	case now.Before(l.backingUp):
		return statusCreating
	case now.Before(l.available):
		return statusBackingUp
	}
	return statusAvailable
}

func (l *lifecycle) deleting() bool { return !l.deleteUntil.IsZero() }

type scaling struct {
	min, max   float64
	autoPause  int
	configured bool
}

type cluster struct {
	lifecycle
	id, engine, version, user, dbname string
	scaling                           scaling
	tags                              [][2]string
	local                             localNames
}

type instance struct {
	lifecycle
	id, class, engine, version, user, dbname string
	cluster                                  string // Aurora member; empty for standalone
	storage                                  int
	tags                                     [][2]string
	local                                    localNames // standalone only
}

func (s *Server) clusterHost(id string) string  { return id + ".cluster-" + s.domain() }
func (s *Server) instanceHost(id string) string { return id + "." + s.domain() }

// expireLocked forgets what has finished deleting. Caller holds s.mu.
func (s *Server) expireLocked(now time.Time) {
	for id, c := range s.mu.clusters {
		if c.deleting() && !now.Before(c.deleteUntil) {
			delete(s.mu.clusters, id)
		}
	}
	for id, in := range s.mu.instances {
		if in.deleting() && !now.Before(in.deleteUntil) {
			delete(s.mu.instances, id)
		}
	}
}

// target finds what host (an endpoint name) leads to, if it can be
// connected to now: an available cluster with an available writer, or
// an available standalone instance.
func (s *Server) target(host string) (localNames, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.expireLocked(now)
	for id, c := range s.mu.clusters {
		if s.clusterHost(id) != host {
			continue
		}
		if c.status(now) != statusAvailable {
			return localNames{}, false
		}
		for _, in := range s.mu.instances {
			if in.cluster == id && in.status(now) == statusAvailable {
				return c.local, true
			}
		}
		return localNames{}, false
	}
	for id, in := range s.mu.instances {
		if s.instanceHost(id) != host {
			continue
		}
		if in.status(now) != statusAvailable {
			return localNames{}, false
		}
		if in.cluster != "" { // an Aurora instance endpoint: its cluster's data
			if c, ok := s.mu.clusters[in.cluster]; ok {
				return c.local, true
			}
			return localNames{}, false
		}
		return in.local, true
	}
	return localNames{}, false
}
