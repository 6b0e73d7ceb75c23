package migrate

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoad(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"0010_index.sql":  "\n" + NoTransactionMarker + "\nCREATE INDEX CONCURRENTLY i ON t (a);\n",
		"0001_init.sql":   "CREATE TABLE t (a int);",
		"0002_add-b.sql":  "ALTER TABLE t ADD b int;",
		"README.md":       "not a migration",
		"notes.txt":       "",
		"0003_empty.sql~": "editor backup",
	})
	if err := os.Mkdir(filepath.Join(dir, "0004_dir.sql"), 0o700); err != nil {
		t.Fatal(err)
	}
	ms, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.File)
		if len(m.Checksum) != 64 {
			t.Errorf("%s: checksum %q", m.File, m.Checksum)
		}
		if m.NoTransaction != (m.Version == 10) {
			t.Errorf("%s: NoTransaction = %v", m.File, m.NoTransaction)
		}
	}
	if want := []string{"0001_init.sql", "0002_add-b.sql", "0010_index.sql"}; !slices.Equal(got, want) {
		t.Fatalf("Load = %v, want %v", got, want)
	}
	if ms[0].Checksum == ms[1].Checksum || ms[0].SQL != "CREATE TABLE t (a int);" {
		t.Fatalf("%+v", ms[:2])
	}
}

func TestLoadRefuses(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"no migrations", map[string]string{"README": ""}, "no migrations"},
		{"duplicate version", map[string]string{"0001_a.sql": "", "1_b.sql": ""}, "same version 1"},
		{"bad name", map[string]string{"0001_a.sql": "", "0002 Add Orders.sql": ""}, "0002 Add Orders.sql"},
		{"no version", map[string]string{"init.sql": ""}, "init.sql"},
		{"version zero", map[string]string{"0000_a.sql": ""}, "positive"},
		{"version too big", map[string]string{"99999999999999999999_a.sql": ""}, "positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeDir(t, tt.files))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load = %v, want an error saying %q", err, tt.want)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("Load of a missing directory")
	}
}

func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name, sql string
		want      []string
	}{
		{"two", "CREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX CONCURRENTLY b ON t (y);\n", []string{"CREATE INDEX CONCURRENTLY a ON t (x)", "CREATE INDEX CONCURRENTLY b ON t (y)"}},
		{"no final semicolon", "SELECT 1", []string{"SELECT 1"}},
		{"statements of comments only dropped", NoTransactionMarker + "\n-- x;\n/* y; /* nested; */ z; */\nSELECT 1;;\n-- end", []string{NoTransactionMarker + "\n-- x;\n/* y; /* nested; */ z; */\nSELECT 1"}},
		{"quotes", `SELECT 'a;''b', "c;""d", E'e\';f'; SELECT 2`, []string{`SELECT 'a;''b', "c;""d", E'e\';f'`, "SELECT 2"}},
		{"dollar quotes", "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $x$ $body$ LANGUAGE sql; SELECT $1;", []string{"CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $x$ $body$ LANGUAGE sql", "SELECT $1"}},
		{"anonymous dollar", "DO $$ BEGIN PERFORM 1; END $$; SELECT 3", []string{"DO $$ BEGIN PERFORM 1; END $$", "SELECT 3"}},
		{"comment after code", "SELECT 1 -- a; b\n; SELECT 2", []string{"SELECT 1 -- a; b", "SELECT 2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := splitStatements(tt.sql); !slices.Equal(got, tt.want) {
				t.Fatalf("splitStatements(%q)\n got %q\nwant %q", tt.sql, got, tt.want)
			}
		})
	}
}
