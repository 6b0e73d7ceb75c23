package proxy

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// Every key a registry issues names its instance in its process ID, and
// keyOwner reads it back: the one layout both sides use. The secret is
// random in all its bytes, and only the whole secret finds the key.
func TestCancelKeyLayout(t *testing.T) {
	for id := range 256 {
		r := newCancelRegistry(uint8(id))
		for _, n := range []int{shortSecret, longSecret} {
			key, release := r.register(cancelTarget{pid: 42}, n)
			if len(key.secret) != n {
				t.Fatalf("secret of %d bytes, want %d", len(key.secret), n)
			}
			owner, ok := keyOwner(key.pid, key.secret)
			if !ok || owner != uint8(id) {
				t.Fatalf("key issued by %d: keyOwner = %d, %v", id, owner, ok)
			}
			if tg, found := r.lookup(key.pid, key.secret); !found || tg.pid != 42 {
				t.Fatalf("instance %d: issued key not found", id)
			}
			for i := range key.secret {
				bad := bytes.Clone(key.secret)
				bad[i] ^= 1
				if _, found := r.lookup(key.pid, bad); found {
					t.Fatalf("secret with byte %d changed found", i)
				}
			}
			if _, found := r.lookup(key.pid, key.secret[:n-1]); found {
				t.Fatal("a truncated secret found the key")
			}
			release()
			if _, found := r.lookup(key.pid, key.secret); found {
				t.Fatal("released key found")
			}
		}
	}
	for _, n := range []int{0, 3, maxCancelSecret + 1} {
		if _, ok := keyOwner(1, make([]byte, n)); ok {
			t.Errorf("keyOwner accepted a %d-byte secret", n)
		}
	}
	// No bit of the secret is fixed: over many secrets every bit is seen
	// both set and clear (the top byte used to be the instance ID).
	var ones, zeros [longSecret]byte
	for range 64 {
		s := newSecret(longSecret)
		for i, b := range s {
			ones[i] |= b
			zeros[i] |= ^b
		}
	}
	for i := range ones {
		if ones[i] != 0xff || zeros[i] != 0xff {
			t.Fatalf("secret byte %d: bits never set %08b, never clear %08b", i, ^ones[i], ^zeros[i])
		}
	}
	// Process IDs are unique among an instance's live keys.
	r := newCancelRegistry(9)
	seen := map[uint32]bool{}
	for range 1000 {
		key, _ := r.register(cancelTarget{}, shortSecret)
		if seen[key.pid] {
			t.Fatalf("process ID %d issued twice", key.pid)
		}
		seen[key.pid] = true
	}
}

var testForwardKey = []byte("proxy-test-cluster-secret-0123456789")

func TestCancelForwardFrame(t *testing.T) {
	at := time.UnixMilli(time.Now().UnixMilli())
	for _, secret := range [][]byte{{1, 2, 3, 4}, bytes.Repeat([]byte{9}, maxCancelSecret)} {
		in := forwardFrame{to: 3, from: 200, at: at, nonce: [16]byte{1, 2, 3}, pid: 4242, secret: secret}
		b := in.encode(testForwardKey)
		out, err := readForward(bytes.NewReader(b), testForwardKey)
		if err != nil {
			t.Fatal(err)
		}
		if out.to != in.to || out.from != in.from || !out.at.Equal(in.at) || out.nonce != in.nonce ||
			out.pid != in.pid || !bytes.Equal(out.secret, in.secret) {
			t.Fatalf("decoded %+v, want %+v", out, in)
		}
		// Any byte changed: refused (the MAC covers all of it; the header's
		// layout checks come first for some).
		for i := range b {
			c := bytes.Clone(b)
			c[i] ^= 0x80
			if _, err := readForward(bytes.NewReader(c), testForwardKey); err == nil {
				t.Fatalf("frame with byte %d changed accepted", i)
			}
		}
		if _, err := readForward(bytes.NewReader(b), []byte("another-secret-0123456789-0123456789")); !errors.Is(err, errForwardMAC) {
			t.Fatalf("another secret: %v, want errForwardMAC", err)
		}
		if _, err := readForward(bytes.NewReader(b[:len(b)-1]), testForwardKey); err == nil {
			t.Fatal("truncated frame accepted")
		}
	}
	long := forwardFrame{to: 1, at: at, secret: make([]byte, maxCancelSecret+1)}
	if _, err := readForward(bytes.NewReader(long.encode(testForwardKey)), testForwardKey); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("oversized CancelRequest: %v", err)
	}
}

func TestCancelForwardAccept(t *testing.T) {
	f, err := newForwarder(CancelForwarding{Secret: testForwardKey, PeerAddr: func(context.Context, uint8) (string, bool) { return "", false }}, 5)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	frame := func(to uint8, at time.Time, nonce byte) []byte {
		fr := forwardFrame{to: to, from: 1, at: at, nonce: [16]byte{nonce}, pid: 7, secret: []byte{5, 0, 0, 1}}
		return fr.encode(testForwardKey)
	}
	accept := func(b []byte, now time.Time) error {
		_, err := f.accept(bytes.NewReader(b), now)
		return err
	}
	if err := accept(frame(5, now, 1), now); err != nil {
		t.Fatalf("fresh frame: %v", err)
	}
	for _, tt := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"replayed", frame(5, now, 1), "replayed"},
		{"for another instance", frame(6, now, 2), "instance 6"},
		{"too old", frame(5, now.Add(-maxForwardSkew-time.Second), 3), "timestamp"},
		{"from the future", frame(5, now.Add(maxForwardSkew+time.Second), 4), "timestamp"},
	} {
		if err := accept(tt.frame, now); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	// Nonces are forgotten once their frames are out of the window, and
	// the guard does not grow past its cap.
	later := now.Add(3 * maxForwardSkew)
	if err := accept(frame(5, later, 1), later); err != nil {
		t.Fatalf("nonce reused after the window: %v", err)
	}
	if n := len(f.replay.mu.seen); n != 1 {
		t.Errorf("%d nonces remembered, want 1", n)
	}

	for _, bad := range []CancelForwarding{
		{Secret: []byte("short"), PeerAddr: func(context.Context, uint8) (string, bool) { return "", false }},
		{Secret: testForwardKey},
	} {
		if _, err := newForwarder(bad, 1); err == nil {
			t.Errorf("newForwarder accepted %+v", bad)
		}
	}
	if f, err := newForwarder(CancelForwarding{}, 1); f != nil || err != nil {
		t.Errorf("zero CancelForwarding: %v, %v; want off", f, err)
	}
}
