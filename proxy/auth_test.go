package proxy

import (
	"strings"
	"testing"
)

func TestParseSCRAMVerifier(t *testing.T) {
	// Produced by Postgres 15: SET password_encryption='scram-sha-256'; CREATE ROLE x PASSWORD 'secret'.
	const good = "SCRAM-SHA-256$4096:K6qB0nN7f2JmXrWx0Z+ztA==$0ZWpIGqNJiAPhxAqDRvxI2BOMOaytkc09ipg3VG1i+s=:XKEuJ/RMUdjLHbT6ffTOb+/MUwrBAS3phPbKvuZT8KE="
	c, err := ParseSCRAMVerifier(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Iters != 4096 || len(c.StoredKey) != 32 || len(c.ServerKey) != 32 {
		t.Fatalf("parsed %+v", c.KeyFactors)
	}
	for _, bad := range []string{
		"", "md5abc", "SCRAM-SHA-256$", "SCRAM-SHA-256$4096:c2FsdA==",
		"SCRAM-SHA-256$x:c2FsdA==$a:b", "SCRAM-SHA-256$4096:c2FsdA==$!!:!!",
		strings.Replace(good, "4096", "0", 1),
	} {
		_, err := ParseSCRAMVerifier(bad)
		if err == nil {
			t.Errorf("accepted %q", bad)
			continue
		}
		if len(bad) > 16 && strings.Contains(err.Error(), bad) {
			t.Errorf("error echoes the verifier: %v", err)
		}
	}
}

func TestNewAuthenticator(t *testing.T) {
	if _, err := newAuthenticator(Auth{}); err == nil {
		t.Fatal("no secret accepted")
	}
	if _, err := newAuthenticator(Auth{Method: "md5", Password: "x"}); err == nil {
		t.Fatal("unknown method accepted")
	}
	a, err := newAuthenticator(Auth{Password: "s3cret"})
	if err != nil || a.trust || a.server == nil {
		t.Fatalf("%v %+v", err, a)
	}
	if s := (Auth{Password: "s3cret"}).String(); strings.Contains(s, "s3cret") {
		t.Fatalf("String leaks the secret: %s", s)
	}
}
