package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestDevSupabaseFake runs the README's Supabase dev command: the real
// Supabase client against the in-process fake, a project per tenant,
// reached through the fake pooler as postgres.<ref> with TLS verify-full.
func TestDevSupabaseFake(t *testing.T) {
	pgtest.Shared(t)
	dir, err := os.MkdirTemp("", "pgtenant-supabasefake-test-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	m, stdout, stderr, stop := startRunOut(t, psqlLine, "dev", "--provider", "supabase-fake", "--supabase-create-delay", "50ms",
		"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0")
	if got := query(t, m[1], "SELECT current_database()"); !strings.HasPrefix(got, "sb_") {
		t.Fatalf("tenant's database %q: want a fake Supabase project's (sb_<ref>)", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "provider=supabase") {
		t.Errorf("log:\n%s", stderr.String())
	}
	if out := stdout.String(); !strings.Contains(out, "supabase-fake") || !strings.Contains(out, "tenants and their data are gone") {
		t.Errorf("banner and stop line:\n%s", out)
	}
}
