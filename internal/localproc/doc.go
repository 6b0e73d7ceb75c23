// Package localproc manages processes pgtenant runs on the local machine
// for development, tests and benchmarks: today a throwaway Postgres
// cluster (StartCluster: initdb, port selection, running as the postgres
// OS user when root). It is internal because these managers are test and
// dev tooling, not part of the router's public surface.
package localproc
