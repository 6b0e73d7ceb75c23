package router

import "github.com/pgtenant/pgtenant/proxy"

// Crash ends r's part in its cluster as a killed process's would end: no
// more heartbeats, the peer listener closed, and the registry entry left to
// expire. Its clients are still served until Serve ends.
func (r *Router) Crash() { r.cluster.crash() }

// ClusterLimits is clusterLimits, for the table test of the shares.
func (fc *Config) ClusterLimits(live []uint8, self uint8) proxy.Limits {
	return fc.clusterLimits(live, self)
}
