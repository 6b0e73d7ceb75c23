// Package poll is the tests' one way to wait for a condition: poll it until
// a deadline, never a fixed sleep.
package poll

import (
	"testing"
	"time"
)

// Interval is how often Until checks its condition.
const Interval = 5 * time.Millisecond

// Until calls cond every Interval until it returns true, and fails the test
// with "timed out after <timeout> waiting for <what>" if timeout passes
// first. Call it from the test's goroutine (it calls t.Fatalf).
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(Interval)
	}
}
