package provision

import "strings"

// Neon-style endpoint host names (docs/neon-api.md §8): a compute endpoint
// is reached at its direct host ep-x-123.region... or through its pooler at
// ep-x-123-pooler.region...; the endpoint ID is the first label without the
// suffix. The proxy (direct sessions, endpoint_option), the Neon provider
// and the migration runner all derive these from a route's host.

// DirectHost turns a pooled endpoint host into the endpoint's direct host
// by removing the "-pooler" suffix of its first DNS label:
// ep-x-123-pooler.c-2.us-east-2.aws.neon.tech ->
// ep-x-123.c-2.us-east-2.aws.neon.tech. Other hosts are returned as they
// are. Migrations, dumps and session state need the direct host (§8.2).
func DirectHost(host string) string {
	label, rest, dotted := strings.Cut(host, ".")
	base, ok := strings.CutSuffix(label, "-pooler")
	if !ok || base == "" {
		return host
	}
	if !dotted {
		return base
	}
	return base + "." + rest
}

// EndpointID is the first DNS label of host without a "-pooler" suffix
// (what Neon takes as options=endpoint=<id> from clients without SNI, §8.3).
func EndpointID(host string) string {
	label, _, _ := strings.Cut(host, ".")
	return strings.TrimSuffix(label, "-pooler")
}
