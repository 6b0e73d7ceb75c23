package catalog_test

import (
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestMain runs the tests on one shared Postgres cluster (see pgtest).
func TestMain(m *testing.M) { pgtest.Main(m) }
