// Package logtail formats the end of a child process's log file (Postgres,
// initdb, PgBouncer, a router) for an error message, so that a failed start
// says why without the user opening the file.
package logtail

import (
	"fmt"
	"os"
	"strings"
)

const (
	maxBytes = 8 << 10
	maxLines = 20
)

// Since returns the last lines (at most 20, from the last 8 KiB) written to
// the log at path at or after offset from, as "\n<path> (last lines):\n\t…"
// to append to an error message. It returns "" when nothing was written
// since from or the file cannot be read.
func Since(path string, from int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	from = max(from, fi.Size()-maxBytes, 0)
	b := make([]byte, max(fi.Size()-from, 0))
	n, _ := f.ReadAt(b, from)
	text := strings.TrimRight(string(b[:n]), "\n")
	if strings.TrimSpace(text) == "" {
		return ""
	}
	lines := strings.Split(text, "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return fmt.Sprintf("\n%s (last lines):\n\t%s", path, strings.Join(lines, "\n\t"))
}
