package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// dev --provider aurora-fake creates the tenant's cluster through the fake
// RDS API with the real SDK and routes to it with verify-full. (rds-fake
// differs only in the kind; each dev run costs a cluster of its own.)
func TestDevAWSFake(t *testing.T) {
	pgtest.Shared(t)
	for _, kind := range []string{"aurora"} {
		t.Run(kind, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "pgtenant-awsfake-test-")
			if err != nil {
				t.Fatal(err)
			}
			_ = os.Chmod(dir, 0o755)
			t.Cleanup(func() { os.RemoveAll(dir) })
			m, stdout, stderr, stop := startRunOut(t, psqlLine, "dev", "--provider", kind+"-fake", "--aws-create-delay", "300ms",
				"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0")
			if got := query(t, m[1], "SELECT (current_user LIKE 'rdsf\\_%')::text"); got != "true" {
				t.Fatalf("session user is the fake cluster's role: %s", got)
			}
			if err := stop(); err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), "via=created") || !strings.Contains(stderr.String(), "provider="+kind) {
				t.Errorf("log:\n%s", stderr.String())
			}
			if out := stdout.String(); !strings.Contains(out, kind+"-fake http://") || !strings.Contains(out, "tenants and their data are gone") {
				t.Errorf("banner / stop line:\n%s", out)
			}
		})
	}
}
