package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/internal/localca"
)

// Files `pgtenant dev` keeps its TLS material in, in the data dir. The CA's
// are localca.CertFileName (ca.crt, what clients trust) and
// localca.KeyFileName.
const (
	devCertFile = "server.crt"
	devKeyFile  = "server.key"
)

// devTLS returns the router's certificate and key files for `pgtenant dev`:
// a local CA kept in dir (made on first run) and a server certificate it
// signed for the loopback names and the listen host. Both are reused across
// runs; the certificate is issued again when it no longer covers the hosts
// or expires within 30 days.
func devTLS(dir, listen string) (certFile, keyFile string, err error) {
	ca, err := localca.LoadOrCreate(dir)
	if err != nil {
		return "", "", err
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" && !slices.Contains(hosts, h) {
		if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
			hosts = append(hosts, h)
		}
	}
	certFile, keyFile = filepath.Join(dir, devCertFile), filepath.Join(dir, devKeyFile)
	if devCertUsable(certFile, keyFile, ca, hosts) {
		return certFile, keyFile, nil
	}
	c, err := ca.Issue(hosts...)
	if err != nil {
		return "", "", err
	}
	if err := c.WriteFiles(certFile, keyFile); err != nil {
		return "", "", fmt.Errorf("dev TLS certificate: %w", err)
	}
	return certFile, keyFile, nil
}

func devCertUsable(certFile, keyFile string, ca *localca.CA, hosts []string) bool {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return false
	}
	for _, h := range hosts {
		_, err := pair.Leaf.Verify(x509.VerifyOptions{
			DNSName:     h,
			Roots:       ca.Pool(),
			CurrentTime: time.Now().Add(30 * 24 * time.Hour),
		})
		if err != nil {
			return false
		}
	}
	return true
}

// devCAPath is the dev CA certificate clients trust (sslrootcert).
func devCAPath(dir string) string { return filepath.Join(dir, localca.CertFileName) }

// uriValue escapes s for a query value of a postgres:// URI, leaving
// ordinary paths readable.
func uriValue(s string) string {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._~-", r)) {
			return url.QueryEscape(s)
		}
	}
	return s
}
