package proxy

import (
	"bytes"
	"testing"

	"github.com/xdg-go/scram"
)

// scramLogin runs a SCRAM exchange of a client holding password against
// the keys t gives tenant, as authenticate does (the library's
// conversation on the tenant's own keys, then checkApp), and reports
// whether the router accepts it, and whether the client then accepts the
// router's server-final-message.
func scramLogin(t *testing.T, ta *tenantAuth, tenant, password string) (accepted, serverProven bool) {
	t.Helper()
	keys := ta.keys(tenant)
	srv, _ := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return keys.own, nil })
	sconv := srv.NewConversation()
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	cconv := cl.NewConversation()
	clientFirst, err := cconv.Step("")
	if err != nil {
		t.Fatal(err)
	}
	serverFirst, err := sconv.Step(clientFirst)
	if err != nil {
		t.Fatal(err)
	}
	clientFinal, err := cconv.Step(serverFirst)
	if err != nil {
		t.Fatal(err)
	}
	serverFinal, err := sconv.Step(clientFinal)
	switch {
	case err == nil && sconv.Valid():
		if !keys.hasOwn {
			t.Fatal("a tenant's mock keys accepted a proof")
		}
	case serverFinal == scram.ErrInvalidProof:
		var ok bool
		if serverFinal, ok = ta.checkApp(keys, clientFirst, serverFirst, clientFinal); !ok {
			return false, false
		}
	default:
		t.Fatalf("server final step: %q, %v", serverFinal, err)
	}
	_, err = cconv.Step(serverFinal)
	return true, err == nil && cconv.Valid()
}

func TestTenantAuthSecrets(t *testing.T) {
	own, err := NewTenantVerifier("own-pw")
	if err != nil {
		t.Fatal(err)
	}
	ta := newTenantAuth(Auth{Password: "app-pw", SaltKey: bytes.Repeat([]byte{7}, 32)})
	if err := ta.setCredentials(map[string]string{"own": own, "broken": "SCRAM-SHA-256$1:x"}); err == nil {
		t.Error("setCredentials took a broken verifier without saying so")
	}
	tests := []struct {
		name, tenant, password string
		instead, want          bool
	}{
		{"own secret on its tenant", "own", "own-pw", false, true},
		{"app secret besides", "own", "app-pw", false, true},
		{"app secret instead", "own", "app-pw", true, false},
		{"own secret instead", "own", "own-pw", true, true},
		{"own secret on another tenant", "plain", "own-pw", false, false},
		{"app secret on a tenant without its own", "plain", "app-pw", true, true},
		{"wrong password", "own", "nope", false, false},
		{"broken verifier locks its secret", "broken", "", false, false},
		{"broken verifier: app secret besides", "broken", "app-pw", false, true},
		{"broken verifier: app secret instead", "broken", "app-pw", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta.instead.Store(tt.instead)
			pw := tt.password
			if pw == "" {
				pw = "SCRAM-SHA-256$1:x"
			}
			accepted, proven := scramLogin(t, ta, tt.tenant, pw)
			if accepted != tt.want {
				t.Fatalf("accepted = %v, want %v", accepted, tt.want)
			}
			if accepted && !proven {
				t.Fatal("the client refused the router's server signature")
			}
		})
	}
}

func TestTenantAuthSalts(t *testing.T) {
	own, _ := NewTenantVerifier("own-pw")
	key := bytes.Repeat([]byte{9}, 32)
	a := newTenantAuth(Auth{Password: "app-pw", SaltKey: key})
	_ = a.setCredentials(map[string]string{"own": own})
	b := newTenantAuth(Auth{Password: "app-pw", SaltKey: key})
	other := newTenantAuth(Auth{Password: "app-pw", SaltKey: bytes.Repeat([]byte{1}, 32)})
	for _, tenant := range []string{"own", "plain", "unknown"} {
		kf := a.keys(tenant).own.KeyFactors
		if len(kf.Salt) != TenantVerifierSaltLen || kf.Iters != TenantVerifierIterations {
			t.Errorf("%s: salt %d bytes, %d iterations", tenant, len(kf.Salt), kf.Iters)
		}
	}
	if a.keys("plain").own.Salt != b.keys("plain").own.Salt {
		t.Error("two instances with one key offer different salts")
	}
	if a.keys("plain").own.Salt == other.keys("plain").own.Salt || a.keys("plain").own.Salt == a.keys("unknown").own.Salt {
		t.Error("salts do not depend on the key and the tenant")
	}
}

func TestParseTenantVerifier(t *testing.T) {
	v, _ := NewTenantVerifier("pw")
	if _, err := ParseTenantVerifier(v); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "pw", "SCRAM-SHA-256$8192:c2FsdHNhbHRzYWx0c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
		"SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="} {
		if _, err := ParseTenantVerifier(bad); err == nil {
			t.Errorf("ParseTenantVerifier(%q) = nil error", bad)
		}
	}
}

// BenchmarkAppKeysDerive is the cost of a tenant's first login with
// per-tenant secrets: the app secret's keys for its salt (PBKDF2, 4096
// iterations).
func BenchmarkAppKeysDerive(b *testing.B) {
	ta := newTenantAuth(Auth{Password: "app-pw", SaltKey: bytes.Repeat([]byte{7}, 32)})
	i := 0
	for b.Loop() {
		i++
		kf := scram.KeyFactors{Salt: string(rune(i)) + "0123456789abcdef", Iters: TenantVerifierIterations}
		if _, err := ta.appKeys(kf); err != nil {
			b.Fatal(err)
		}
	}
}
