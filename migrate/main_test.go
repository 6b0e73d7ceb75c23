package migrate_test

import (
	"os"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestMain runs the tests on one shared Postgres cluster (see pgtest), or,
// started by TestKillResume, is the runner it kills (killed.go).
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	pgtest.Main(m)
}
