package logtail

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSince(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	if got := Since(path, 0); got != "" {
		t.Fatalf("missing file: %q", got)
	}
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	got := Since(path, 0)
	if !strings.HasPrefix(got, "\n"+path+" (last lines):\n\tline 10\n") || !strings.HasSuffix(got, "\tline 29") || strings.Contains(got, "line 9\n") {
		t.Fatalf("tail of 30 lines:\n%s", got)
	}
	if got := Since(path, int64(b.Len())); got != "" {
		t.Fatalf("nothing new since the end: %q", got)
	}
	from := int64(strings.Index(b.String(), "line 28"))
	if got := Since(path, from); got != "\n"+path+" (last lines):\n\tline 28\n\tline 29" {
		t.Fatalf("since an offset: %q", got)
	}
}
