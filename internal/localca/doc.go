// Package localca is a small certificate authority for local use: the TLS
// certificates of `pgtenant dev` and of the fake Neon (neontest). It is not
// for production: its keys live in plain files (or only in memory), it
// issues whatever it is asked for, and nothing is ever revoked.
//
// A CA is made with New (in memory) or LoadOrCreate (kept in a directory as
// ca.crt and ca.key, so that clients can trust it across restarts). Issue
// signs a server certificate for some host names and IP addresses; clients
// verify it against CertPEM (e.g. as libpq's sslrootcert) or Pool.
//
// Keys are ECDSA P-256 and certificates are signed with ECDSA-SHA256, so
// their tls-server-end-point channel binding (RFC 5929) is the SHA-256 hash
// of the certificate.
package localca
