// Package rdstest is an in-process fake of the Amazon RDS Query API, for
// testing provision/rds with the real AWS SDK for Go v2 client and no AWS
// account. It follows docs/aws-rds-api.md.
//
// A Server answers the six actions the provider calls (CreateDBCluster,
// CreateDBInstance, DescribeDBClusters, DescribeDBInstances,
// DeleteDBCluster, DeleteDBInstance) as form-encoded POSTs with XML
// answers in the shape the SDK's deserializers read, and the faults the
// real API returns (DBClusterAlreadyExistsFault, DBInstanceNotFound,
// InvalidParameterValue, InvalidDBClusterStateFault, Throttling, ...).
// Clusters and instances go creating → backing-up → available after
// configurable delays, and deleting → gone.
//
// Each cluster (Aurora) or standalone instance (RDS for PostgreSQL) is
// backed by a real role and database on a local Postgres server. Its
// endpoint is an RDS-like DNS name (<id>.cluster-<suffix>.<region>.rds.amazonaws.com)
// that Server.Dial maps to a TLS front the fake runs: the front answers
// the SSLRequest with a certificate for those names from its own CA
// (Server.CAPEM, what a client passes as its ca_file instead of
// global-bundle.pem), reads the startup message, maps the master user and
// database to the local ones by the SNI name, and relays the session to
// the local server, so verify-full is exercised end to end.
//
// Faults for tests: every Nth request throttled (Config.ThrottleEvery),
// and LoseCreateResponse, which performs the next create of an identifier
// but drops the connection instead of answering.
package rdstest
