package localca_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/localca"
)

func TestIssue(t *testing.T) {
	ca, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue("db.example.com", "*.pooler.example.com", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		ok   bool
	}{
		{"db.example.com", true},
		{"ep-1.pooler.example.com", true},
		{"127.0.0.1", true},
		{"::1", true},
		{"other.example.com", false},
		{"10.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			_, err := c.TLS.Leaf.Verify(x509.VerifyOptions{DNSName: tt.host, Roots: ca.Pool()})
			if (err == nil) != tt.ok {
				t.Fatalf("verify %s: %v, want ok=%v", tt.host, err, tt.ok)
			}
		})
	}
	if c.TLS.Leaf.Subject.CommonName != "db.example.com" {
		t.Errorf("common name %q", c.TLS.Leaf.Subject.CommonName)
	}
	// The PEM forms are a usable pair.
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pair.Certificate[0], c.TLS.Certificate[0]) {
		t.Fatal("CertPEM is not the issued certificate")
	}
	// Another CA does not vouch for it.
	other, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.TLS.Leaf.Verify(x509.VerifyOptions{DNSName: "db.example.com", Roots: other.Pool()}); err == nil {
		t.Fatal("verified against a different CA")
	}
	if _, err := ca.Issue(); err == nil {
		t.Fatal("Issue without hosts succeeded")
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := localca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, localca.KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, localca.CertFileName))
	if err != nil || !bytes.Equal(onDisk, ca.CertPEM()) {
		t.Fatalf("ca.crt does not hold CertPEM (%v)", err)
	}

	again, err := localca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Fatal("LoadOrCreate made a new CA instead of loading the kept one")
	}
	// The loaded CA signs what the first one's pool trusts.
	c, err := again.Issue("localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.TLS.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: ca.Pool()}); err != nil {
		t.Fatal(err)
	}

	t.Run("key missing", func(t *testing.T) {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, localca.CertFileName), ca.CertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := localca.LoadOrCreate(d)
		if err == nil || !strings.Contains(err.Error(), localca.KeyFileName) {
			t.Fatalf("got %v, want an error naming %s", err, localca.KeyFileName)
		}
	})
	t.Run("key of another CA", func(t *testing.T) {
		d := t.TempDir()
		if _, err := localca.LoadOrCreate(filepath.Join(d, "other")); err != nil {
			t.Fatal(err)
		}
		key, err := os.ReadFile(filepath.Join(d, "other", localca.KeyFileName))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, localca.CertFileName), ca.CertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, localca.KeyFileName), key, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := localca.LoadOrCreate(d); err == nil || !strings.Contains(err.Error(), "does not belong") {
			t.Fatalf("got %v, want a key mismatch", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		d := t.TempDir()
		for _, f := range []string{localca.CertFileName, localca.KeyFileName} {
			if err := os.WriteFile(filepath.Join(d, f), []byte("not PEM"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := localca.LoadOrCreate(d); err == nil || !strings.Contains(err.Error(), localca.CertFileName) {
			t.Fatalf("got %v, want an error naming %s", err, localca.CertFileName)
		}
	})
}

func TestWriteFiles(t *testing.T) {
	ca, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue("localhost")
	if err != nil {
		t.Fatal(err)
	}
	d := t.TempDir()
	certFile, keyFile := filepath.Join(d, "server.crt"), filepath.Join(d, "server.key")
	for range 2 { // the second time replaces the files
		if err := c.WriteFiles(certFile, keyFile); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode().Perm())
	}
	if m, _ := filepath.Glob(filepath.Join(d, ".*tmp*")); len(m) > 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}
