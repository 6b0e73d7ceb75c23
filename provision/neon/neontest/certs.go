package neontest

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"

	"github.com/pgtenant/pgtenant/internal/localca"
)

// certs are the compute proxy's TLS credentials: a CA made at start and a
// leaf for the Neon host names it signed.
type certs struct {
	caPEM []byte
	pool  *x509.CertPool
	leaf  tls.Certificate
	// endPoint is the tls-server-end-point channel binding data (RFC 5929):
	// the SHA-256 hash of the leaf certificate, whose signature uses
	// SHA-256 (localca signs with ECDSA-SHA256). SCRAM-SHA-256-PLUS clients
	// bind to it.
	endPoint []byte
}

func newCerts(dnsNames []string) (*certs, error) {
	ca, err := localca.New()
	if err != nil {
		return nil, err
	}
	hosts := append(append([]string(nil), dnsNames...), "localhost", "127.0.0.1", "::1")
	leaf, err := ca.Issue(hosts...)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(leaf.TLS.Certificate[0])
	return &certs{
		caPEM:    ca.CertPEM(),
		pool:     ca.Pool(),
		leaf:     leaf.TLS,
		endPoint: sum[:],
	}, nil
}
