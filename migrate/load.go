package migrate

import (
	"bufio"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// NoTransactionMarker, as the first non-blank line of a migration file, makes
// it run outside a transaction, one statement at a time (CREATE INDEX
// CONCURRENTLY cannot run inside one).
const NoTransactionMarker = "-- pgtenant:no-transaction"

// fileName is a migration file's name: version, underscore, a lower-case
// name, ".sql".
var fileName = regexp.MustCompile(`^([0-9]+)_([a-z0-9][a-z0-9_-]*)\.sql$`)

// maxFileSize caps a migration file, so a wrong directory (a dump) is
// refused rather than read.
const maxFileSize = 16 << 20

// Migration is one migration file.
type Migration struct {
	// Version orders migrations; it is the file name's leading number.
	Version int64
	// File is the file's base name, e.g. "0002_add_orders.sql"; the catalog
	// and each tenant's version table record it.
	File string
	// SQL is the file's content.
	SQL string
	// Checksum is the hex SHA-256 of the file's bytes.
	Checksum string
	// NoTransaction is set by NoTransactionMarker.
	NoTransaction bool
}

// Load reads the migrations in dir: every file named NNNN_name.sql (digits,
// an underscore, lower-case letters, digits, '_' or '-'), in version order.
// Other files and directories are ignored, except *.sql files whose name
// does not fit, which are refused (a typo must not skip a migration).
// Versions must be positive and unique; gaps are allowed. Load fails when
// dir holds no migration.
func Load(dir string) ([]Migration, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	var out []Migration
	var errs []error
	seen := map[int64]string{}
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		m := fileName.FindStringSubmatch(name)
		if m == nil {
			errs = append(errs, fmt.Errorf("%s: a migration file is named NNNN_name.sql (digits, '_', then lower-case letters, digits, '_' or '-')", name))
			continue
		}
		v, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || v <= 0 {
			errs = append(errs, fmt.Errorf("%s: version %s: want a positive number below 2^63", name, m[1]))
			continue
		}
		if other, dup := seen[v]; dup {
			errs = append(errs, fmt.Errorf("%s and %s have the same version %d", other, name, v))
			continue
		}
		seen[v] = name
		b, err := readFile(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sum := sha256.Sum256(b)
		out = append(out, Migration{
			Version:       v,
			File:          name,
			SQL:           string(b),
			Checksum:      hex.EncodeToString(sum[:]),
			NoTransaction: firstLine(string(b)) == NoTransactionMarker,
		})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("migrate: migrations in %s:\n%w", dir, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("migrate: no migrations in %s (files named NNNN_name.sql)", dir)
	}
	slices.SortFunc(out, func(a, b Migration) int { return cmp.Compare(a.Version, b.Version) })
	return out, nil
}

func readFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: %d bytes; a migration file is at most %d", filepath.Base(path), fi.Size(), maxFileSize)
	}
	return os.ReadFile(path)
}

// firstLine is s's first non-blank line, trimmed.
func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, maxFileSize)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			return l
		}
	}
	return ""
}

// short is the first 12 hex digits of a checksum, enough to tell two apart
// in a message.
func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}
