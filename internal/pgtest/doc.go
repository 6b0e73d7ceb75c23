// Package pgtest starts throwaway PostgreSQL clusters for tests, from the
// server binaries installed on the machine (see internal/localproc.StartCluster).
//
// Start gives a test its own cluster; Shared gives every test of a test
// binary the same one (the package's TestMain must call Main), and CreateDB
// isolates tests that share it. Clusters listen on a random port of
// 127.0.0.1, require SCRAM passwords, and trade durability for speed
// (fsync=off).
//
// When no Postgres binaries are installed the tests are skipped, except when
// the environment variable CI is true: CI must never pass by skipping.
package pgtest
