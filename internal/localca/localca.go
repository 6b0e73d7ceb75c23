package localca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names LoadOrCreate keeps a CA under.
const (
	CertFileName = "ca.crt" // the CA certificate, PEM: what clients trust (libpq's sslrootcert)
	KeyFileName  = "ca.key" // its private key, PEM (PKCS #8), mode 0600
)

// Validity periods. Issued certificates stay under the 825 days some
// platforms accept for server certificates.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 825 * 24 * time.Hour
)

// CA is a certificate authority. Its methods are safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// Cert is a certificate the CA issued, with its private key.
type Cert struct {
	// TLS is the certificate (the leaf only; Leaf is set) and its key, ready
	// for tls.Config.Certificates.
	TLS tls.Certificate
	// CertPEM is the certificate, PEM encoded.
	CertPEM []byte
	// KeyPEM is the private key, PEM encoded (PKCS #8). Secret.
	KeyPEM []byte
}

// New makes a CA that lives in memory only.
func New() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "pgtenant local CA (not for production)", Organization: []string{"pgtenant"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	return &CA{cert: cert, key: key, certPEM: pemBlock("CERTIFICATE", der)}, nil
}

// LoadOrCreate returns the CA kept in dir as CertFileName and KeyFileName,
// making it (and dir, mode 0700) when neither file exists. The key file is
// written with mode 0600. Having only one of the two files, files that do not
// parse or match, or an expired CA are errors naming the file: LoadOrCreate
// never overwrites a CA that clients may already trust.
func LoadOrCreate(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return create(dir, certPath, keyPath)
	case certErr != nil:
		return nil, fmt.Errorf("localca: %w", certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("localca: %w (the CA certificate %s exists: restore its key, or remove both to make a new CA)", keyErr, certPath)
	}
	return parse(certPath, certPEM, keyPath, keyPEM)
}

func create(dir, certPath, keyPath string) (*CA, error) {
	ca, err := New()
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	// The key first, exclusively: of two processes racing, one fails rather
	// than both writing different CAs.
	if err := writeNew(keyPath, pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	if err := writeNew(certPath, ca.certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return nil, fmt.Errorf("localca: %w", err)
	}
	return ca, nil
}

func parse(certPath string, certPEM []byte, keyPath string, keyPEM []byte) (*CA, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("localca: %s: no PEM certificate in it", certPath)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("localca: %s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("localca: %s is not a CA certificate", certPath)
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("localca: the CA in %s expired on %s: remove %s and %s to make a new one",
			certPath, cert.NotAfter.Format(time.DateOnly), certPath, keyPath)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("localca: %s: no PEM key in it", keyPath)
	}
	var key any
	switch kb.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	default:
		err = fmt.Errorf("unexpected PEM block %q", kb.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("localca: %s: %w", keyPath, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || !ec.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("localca: the key in %s does not belong to the certificate in %s", keyPath, certPath)
	}
	return &CA{cert: cert, key: ec, certPEM: slices.Clone(certPEM)}, nil
}

// CertPEM returns the CA certificate, PEM encoded: what clients trust (for
// libpq, the file named by sslrootcert).
func (ca *CA) CertPEM() []byte { return slices.Clone(ca.certPEM) }

// Certificate returns the CA certificate. The caller must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Pool returns a new pool holding only the CA certificate, for
// tls.Config.RootCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issue signs a server certificate valid for hosts: DNS names (wildcards
// such as *.example.com included) and IP addresses, the first of which is
// also the subject's common name. At least one host is needed.
func (ca *CA) Issue(hosts ...string) (*Cert, error) {
	if len(hosts) == 0 {
		return nil, errors.New("localca: Issue needs at least one host name or IP address")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(leafValidity)
	if ca.cert.NotAfter.Before(notAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"pgtenant"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("localca: %w", err)
	}
	return &Cert{
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		CertPEM: pemBlock("CERTIFICATE", der),
		KeyPEM:  pemBlock("PRIVATE KEY", keyDER),
	}, nil
}

// WriteFiles writes the certificate to certFile (mode 0644) and the key to
// keyFile (mode 0600), replacing either. Each file is written to a temporary
// name first and renamed, so a reader never sees half a file.
func (c *Cert) WriteFiles(certFile, keyFile string) error {
	if err := writeAtomic(keyFile, c.KeyPEM, 0o600); err != nil {
		return fmt.Errorf("localca: %w", err)
	}
	if err := writeAtomic(certFile, c.CertPEM, 0o644); err != nil {
		return fmt.Errorf("localca: %w", err)
	}
	return nil
}

func writeNew(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	return f.Close()
}

func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
