//go:build race

package proxy_test

// raceEnabled: the race detector slows each connect about tenfold.
const raceEnabled = true
