package localproc

import "testing"

func TestReadyWriter(t *testing.T) {
	w := &readyWriter{addr: make(chan string, 1)}
	for _, chunk := range []string{"noise\npgtenant: rout", "ing tenants on 127.0.0.1:4", "321\n", "pgtenant: routing tenants on 1.2.3.4:5\n"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := <-w.addr; got != "127.0.0.1:4321" {
		t.Errorf("address %q, want 127.0.0.1:4321", got)
	}
	if len(w.addr) != 0 {
		t.Error("a second address was passed on")
	}
}
