package prefixconn

import (
	"io"
	"net"
	"testing"
)

func TestPrefixFirst(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		_, _ = b.Write([]byte(" world"))
		_ = b.Close()
	}()
	got, err := io.ReadAll(New(a, []byte("hello")))
	if err != nil || string(got) != "hello world" {
		t.Fatalf("read %q, %v; want %q", got, err, "hello world")
	}
}
