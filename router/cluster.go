package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/proxy"
)

// EnvClusterSecret carries cluster.secret, the key that authenticates
// cancel requests forwarded between router instances.
const EnvClusterSecret = "PGTENANT_CLUSTER_SECRET"

// EnvClusterAdvertise overrides cluster.advertise, so that one config file
// (a Kubernetes ConfigMap) serves every instance: each sets its own
// address, e.g. from the pod's IP.
const EnvClusterAdvertise = "PGTENANT_CLUSTER_ADVERTISE"

// InstanceID is instance_id: a fixed ID (0-255), the top byte of the
// process ID of every cancel key this instance issues, or InstanceIDAuto.
type InstanceID int16

// InstanceIDAuto (instance_id: auto) makes the instance claim the lowest ID
// no live instance in the cluster's registry holds, when it registers. It
// needs the cluster on (cluster.peer_listen).
const InstanceIDAuto InstanceID = -1

// Auto reports whether the ID is claimed at start (instance_id: auto).
func (i InstanceID) Auto() bool { return i == InstanceIDAuto }

// fixed is the configured ID, or 0 for auto (the claimed ID replaces it).
func (i InstanceID) fixed() uint8 {
	if i.Auto() {
		return 0
	}
	return uint8(i)
}

func (i InstanceID) String() string {
	if i.Auto() {
		return "auto"
	}
	return strconv.Itoa(int(i))
}

// UnmarshalYAML takes an integer 0-255 or auto.
func (i *InstanceID) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Value == "auto" {
		*i = InstanceIDAuto
		return nil
	}
	var v int
	if err := n.Decode(&v); err != nil || v < 0 || v > 255 {
		return fmt.Errorf("line %d: instance_id: %q: want an integer 0-255 or auto", n.Line, n.Value)
	}
	*i = InstanceID(v)
	return nil
}

// MarshalYAML writes the ID as the file spells it.
func (i InstanceID) MarshalYAML() (any, error) {
	if i.Auto() {
		return "auto", nil
	}
	return int(i), nil
}

// validateInstanceID checks instance_id: a number 0-255, or auto with
// the cluster on (without a registry there is nothing to claim an ID from).
func (fc *Config) validateInstanceID() []error {
	switch id := fc.InstanceID; {
	case id.Auto() && !fc.Cluster.On():
		return []error{errors.New("instance_id: auto needs the cluster on (cluster.peer_listen): " +
			"the ID is claimed in the catalog's instance registry; without a cluster, set a number 0-255")}
	case !id.Auto() && (id < 0 || id > 255):
		return []error{fmt.Errorf("instance_id: %d: want 0-255 or auto", int(id))}
	}
	return nil
}

// ClusterSettings is the cluster section: several router instances sharing
// one catalog as one service. With peer_listen set, the instance registers
// itself in the catalog's registry (pgtenant.instances) under its
// instance_id, refusing to start while another live instance holds that ID,
// heartbeats until it stops, and forwards CancelRequests carrying another
// instance's ID to that instance's peer address. Every key needs a restart.
type ClusterSettings struct {
	PeerListen string        `yaml:"peer_listen"` // where forwarded cancels arrive; empty: cluster off
	Advertise  string        `yaml:"advertise"`   // the address peers dial (default: peer_listen's); PGTENANT_CLUSTER_ADVERTISE
	Heartbeat  time.Duration `yaml:"heartbeat"`
	Expire     time.Duration `yaml:"expire"`
	Secret     string        `yaml:"secret"` // PGTENANT_CLUSTER_SECRET
}

func defaultClusterSettings() ClusterSettings {
	return ClusterSettings{Heartbeat: 2 * time.Second, Expire: 10 * time.Second}
}

// On reports whether the instance takes part in a cluster (peer_listen set).
func (c *ClusterSettings) On() bool { return c.PeerListen != "" }

// validate checks the section. Its errors never contain the secret.
func (c *ClusterSettings) validate() []error {
	var errs []error
	if !c.On() {
		if c.Advertise != "" {
			errs = append(errs, errors.New("cluster.advertise: set, but cluster.peer_listen is empty (the cluster is off)"))
		}
		return errs
	}
	host, _, err := net.SplitHostPort(c.PeerListen)
	if err != nil {
		errs = append(errs, fmt.Errorf("cluster.peer_listen: %q: want host:port (%v)", c.PeerListen, err))
	}
	switch {
	case c.Advertise == "" && err == nil && !dialable(host):
		errs = append(errs, fmt.Errorf("cluster.advertise: empty, and cluster.peer_listen %q names no address other instances can dial: "+
			"set cluster.advertise to this instance's host:port as its peers reach it", c.PeerListen))
	case c.Advertise != "":
		h, p, err := net.SplitHostPort(c.Advertise)
		if n, perr := strconv.Atoi(p); err != nil || !dialable(h) || perr != nil || n < 1 || n > 65535 {
			errs = append(errs, fmt.Errorf("cluster.advertise: %q: want the host:port other instances dial to reach this one's cluster.peer_listen", c.Advertise))
		}
	}
	if c.Heartbeat <= 0 {
		errs = append(errs, fmt.Errorf("cluster.heartbeat: %s: want a positive duration", c.Heartbeat))
	} else if c.Expire < 2*c.Heartbeat {
		errs = append(errs, fmt.Errorf("cluster.expire: %s: want at least twice cluster.heartbeat (%s), so that one late heartbeat does not expire the instance",
			c.Expire, c.Heartbeat))
	}
	switch {
	case c.Secret == "":
		errs = append(errs, fmt.Errorf("cluster.secret: empty: set %s to the same random string (at least %d bytes; pgtenant genkey prints one) on every instance",
			EnvClusterSecret, proxy.MinForwardSecret))
	case len(c.Secret) < proxy.MinForwardSecret:
		errs = append(errs, fmt.Errorf("cluster.secret (%s): %d bytes; want at least %d (pgtenant genkey prints one)",
			EnvClusterSecret, len(c.Secret), proxy.MinForwardSecret))
	}
	return errs
}

// dialable reports whether host names one machine its peers can dial (not
// empty, not 0.0.0.0 or ::).
func dialable(host string) bool {
	if host == "" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsUnspecified()
}

// peerRefreshMin is how often at most a cancel for an instance missing from
// the cached registry makes the registry be read again: a flood of keys
// with made-up instance IDs must not flood the catalog.
const peerRefreshMin = 250 * time.Millisecond

// cluster is one instance's part in a cluster: its peer listener, its entry
// in the registry and the heartbeats that keep it live, and the registry's
// live instances as of the last heartbeat (the peer addresses cancels are
// forwarded to).
type cluster struct {
	cfg       ClusterSettings
	id        uint8
	cat       *catalog.Catalog
	log       *slog.Logger
	ln        net.Listener
	advertise string
	reg       *catalog.Registration

	forwards, heartbeatFailures *prometheus.CounterVec
	live                        prometheus.Gauge

	refreshMu sync.Mutex // serialises registry reads
	peers     struct {
		sync.Mutex
		addrs  map[uint8]string // live instances by ID; guarded by peers
		at     time.Time        // when addrs was read; guarded by peers
		notify func()           // called when the live IDs change (onChange); guarded by peers
	}

	stopBeat    context.CancelFunc
	beatDone    chan struct{}
	stopServing context.CancelFunc // nil until serve
	serveDone   chan struct{}
	stopOnce    sync.Once
	crashed     bool // set by crash before stop: leave the entry to expire
}

// startCluster opens the peer listener, registers the instance (refusing a
// duplicate instance_id) and starts the heartbeats. It returns nil when
// the cluster is off.
func startCluster(ctx context.Context, cfg Config, cat *catalog.Catalog, reg prometheus.Registerer, log *slog.Logger) (_ *cluster, err error) {
	if !cfg.Cluster.On() {
		return nil, nil
	}
	c := &cluster{
		cfg: cfg.Cluster, id: cfg.InstanceID.fixed(), cat: cat, log: log.With("component", "cluster"),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtenant_cluster_cancel_forwards_total",
			Help: "CancelRequests whose key another router instance issued, by outcome: forwarded (to that instance), failed (not reached), " +
				"unknown_owner (no live instance has the key's ID; dropped), received (an authenticated forward from a peer, cancelled here), " +
				"rejected (a forward refused: wrong secret, stale, replayed or malformed).",
		}, []string{"outcome"}),
		heartbeatFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtenant_cluster_heartbeat_failures_total",
			Help: "Heartbeats that failed, by reason: catalog (not reached) or taken (another live instance holds this instance_id).",
		}, []string{"reason"}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgtenant_cluster_instances",
			Help: "Live router instances in the catalog's registry, this one included, as of the last heartbeat.",
		}),
		beatDone: make(chan struct{}),
	}
	for _, o := range []string{proxy.ForwardForwarded, proxy.ForwardFailed, proxy.ForwardUnknownOwner, proxy.ForwardReceived, proxy.ForwardRejected} {
		c.forwards.WithLabelValues(o)
	}
	c.heartbeatFailures.WithLabelValues("catalog")
	c.heartbeatFailures.WithLabelValues("taken")
	if reg != nil {
		reg.MustRegister(c.forwards, c.heartbeatFailures, c.live)
	}
	if c.ln, err = net.Listen("tcp", c.cfg.PeerListen); err != nil {
		return nil, fmt.Errorf("cluster.peer_listen: %w", err)
	}
	c.advertise = c.cfg.Advertise
	if c.advertise == "" {
		c.advertise = c.ln.Addr().String()
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if cfg.InstanceID.Auto() {
		c.reg, err = claimID(rctx, cat, c.advertise, c.cfg.Expire)
	} else {
		c.reg, err = cat.Register(rctx, c.id, c.advertise, c.cfg.Expire)
	}
	if err != nil {
		_ = c.ln.Close()
		var dup *catalog.DuplicateInstanceError
		if errors.As(err, &dup) {
			return nil, fmt.Errorf("%w.\nGive each router instance sharing a catalog its own instance_id (0-255), or set instance_id: auto on all of them. "+
				"If the instance at %s is gone (killed, so it could not deregister), its entry expires on its own: start this one again after that", err, dup.Other.PeerAddr)
		}
		return nil, err
	}
	c.id = c.reg.ID()
	if err := c.refreshPeers(rctx, 0); err != nil {
		c.log.Warn("registry not read; cancels for other instances are dropped until the next heartbeat", "err", err)
	}
	bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	c.stopBeat = stop
	go func() { defer close(c.beatDone); c.heartbeat(bctx) }()
	c.log.Info("registered in the cluster", "instance_id", c.id, "claimed", cfg.InstanceID.Auto(), "peer_listen", c.ln.Addr().String(), "advertise", c.advertise)
	return c, nil
}

// claimID registers the instance under the lowest ID no live instance
// holds (instance_id: auto). Each try is Register's, under that ID's
// advisory lock, so instances starting at once never claim the same ID: the
// loser of a race sees a DuplicateInstanceError and tries the next one.
func claimID(ctx context.Context, cat *catalog.Catalog, peerAddr string, expire time.Duration) (*catalog.Registration, error) {
	live, err := cat.Instances(ctx)
	if err != nil {
		return nil, err
	}
	var taken [256]bool
	for _, in := range live {
		taken[in.ID] = true
	}
	for id := range 256 {
		if taken[id] {
			continue
		}
		reg, err := cat.Register(ctx, uint8(id), peerAddr, expire)
		var dup *catalog.DuplicateInstanceError
		switch {
		case err == nil:
			return reg, nil
		case errors.As(err, &dup):
			continue // taken since the list was read
		default:
			return nil, err
		}
	}
	return nil, fmt.Errorf("instance_id auto: all 256 instance IDs are held by live instances in the registry; "+
		"stop one (or wait for a killed one's entry to expire after cluster.expire, %s) and start this one again", expire)
}

// ID is the instance ID in the registry: instance_id, or the one claimed
// for auto.
func (c *cluster) ID() uint8 { return c.id }

// forwarding is the proxy's side of the cluster.
func (c *cluster) forwarding() proxy.CancelForwarding {
	return proxy.CancelForwarding{
		Secret:   []byte(c.cfg.Secret),
		PeerAddr: c.peerAddr,
		Observe:  func(outcome string) { c.forwards.WithLabelValues(outcome).Inc() },
	}
}

// peerAddr is the peer address of live instance id, from the registry as
// of the last heartbeat; an ID missing there (an instance that started
// since) reads the registry again, at most every peerRefreshMin.
func (c *cluster) peerAddr(ctx context.Context, id uint8) (string, bool) {
	if addr, ok := c.cachedPeer(id); ok {
		return addr, true
	}
	if err := c.refreshPeers(ctx, peerRefreshMin); err != nil {
		return "", false
	}
	return c.cachedPeer(id)
}

func (c *cluster) cachedPeer(id uint8) (string, bool) {
	c.peers.Lock()
	defer c.peers.Unlock()
	addr, ok := c.peers.addrs[id]
	return addr, ok && id != c.id
}

// refreshPeers reads the live instances from the registry, unless they
// were read less than minAge ago.
func (c *cluster) refreshPeers(ctx context.Context, minAge time.Duration) error {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	c.peers.Lock()
	fresh := minAge > 0 && time.Since(c.peers.at) < minAge
	c.peers.Unlock()
	if fresh {
		return nil
	}
	list, err := c.cat.Instances(ctx)
	if err != nil {
		return err
	}
	addrs := make(map[uint8]string, len(list))
	for _, in := range list {
		addrs[in.ID] = in.PeerAddr
	}
	c.peers.Lock()
	changed := !maps.EqualFunc(c.peers.addrs, addrs, func(string, string) bool { return true })
	c.peers.addrs, c.peers.at = addrs, time.Now()
	notify := c.peers.notify
	c.peers.Unlock()
	c.live.Set(float64(len(list)))
	if changed && notify != nil {
		notify()
	}
	return nil
}

// liveIDs are the live instances' IDs as of the last registry read.
func (c *cluster) liveIDs() []uint8 {
	c.peers.Lock()
	defer c.peers.Unlock()
	return slices.Collect(maps.Keys(c.peers.addrs))
}

// onChange has f called (from the heartbeat) whenever the set of live
// instances changes.
func (c *cluster) onChange(f func()) {
	c.peers.Lock()
	c.peers.notify = f
	c.peers.Unlock()
}

// heartbeat keeps the instance's entry live and the peer addresses fresh
// until ctx ends. Failures are logged when they start and when they stop.
func (c *cluster) heartbeat(ctx context.Context) {
	t := time.NewTicker(c.cfg.Heartbeat)
	defer t.Stop()
	failing := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, max(c.cfg.Heartbeat, time.Second))
		again, err := c.reg.Heartbeat(hctx)
		if err == nil {
			err = c.refreshPeers(hctx, 0)
		}
		cancel()
		var dup *catalog.DuplicateInstanceError
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case errors.As(err, &dup):
			c.heartbeatFailures.WithLabelValues("taken").Inc()
			if failing != "taken" {
				c.log.Error("this instance's registry entry expired and another instance took its instance_id: "+
					"cancel keys of the two collide; give each instance its own instance_id and restart one "+
					"(with instance_id auto, restart this one: it claims a free ID)", "err", err)
			}
			failing = "taken"
		case err != nil:
			c.heartbeatFailures.WithLabelValues("catalog").Inc()
			if failing != "catalog" {
				c.log.Warn("heartbeat failed; retrying (the entry expires after cluster.expire without one)", "err", err)
			}
			failing = "catalog"
		default:
			if again {
				c.log.Warn("registry entry had expired (heartbeats late, or the catalog unreachable for longer than cluster.expire); registered again",
					"instance_id", c.id)
			} else if failing != "" {
				c.log.Info("heartbeats work again")
			}
			failing = ""
		}
	}
}

// serve takes forwarded cancels on the peer listener until stop.
func (c *cluster) serve(srv *proxy.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	c.stopServing, c.serveDone = cancel, make(chan struct{})
	go func() {
		defer close(c.serveDone)
		if err := srv.ServePeers(ctx, c.ln); err != nil {
			c.log.Error("peer listener failed", "err", err)
		}
	}()
}

// stop closes the peer listener, ends the heartbeats and removes the
// instance's entry from the registry, so that its ID is free at once. Call
// it after the proxy has drained: until then forwarded cancels still reach
// its sessions. It is idempotent.
func (c *cluster) stop() {
	c.stopOnce.Do(func() {
		if c.stopServing != nil {
			c.stopServing()
			<-c.serveDone
		} else {
			_ = c.ln.Close()
		}
		c.stopBeat()
		<-c.beatDone
		if c.crashed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.reg.Deregister(ctx); err != nil {
			c.log.Warn("registry entry not removed; it expires on its own after cluster.expire", "err", err)
		}
	})
}

// crash stops the instance's part in the cluster as a killed process
// would: no more heartbeats or forwarded cancels, and the registry entry
// left to expire. For tests.
func (c *cluster) crash() {
	c.crashed = true
	c.stop()
}
