// Package localproc manages processes pgtenant runs on the local machine
// for development, tests and benchmarks: a throwaway Postgres cluster
// (StartCluster: initdb, port selection), PgBouncer in front of one
// (StartPgBouncer), and a router run as `pgtenant serve` in a child process
// (StartRouter). Each lives at most as long as this process, in a process
// group of its own; postgres, initdb and pgbouncer, which refuse to run as
// root, run as an unprivileged OS user when this process is root (one
// helper, runas.go). It is internal because these managers are test and
// dev tooling, not part of the router's public surface.
package localproc
