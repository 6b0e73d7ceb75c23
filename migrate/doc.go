// Package migrate brings every tenant database (and the template new
// tenants are cloned from) to the fleet's schema version: the migration
// files of one directory, applied in version order.
//
// Files are named NNNN_name.sql and hold plain SQL (Load). Each runs in one
// transaction, unless its first line is NoTransactionMarker; then its
// statements run one at a time outside a transaction (CREATE INDEX
// CONCURRENTLY needs that). A file must not manage transactions itself.
//
// # Where the truth is
//
// Each database records what it has applied in its own version table,
// public.pgtenant_migrations, owned by the tenant's role. A migration in a
// transaction inserts its row first and commits it together with its SQL,
// so a crash at any point leaves the migration applied and recorded, or
// neither; a second runner racing the same database blocks on that row's
// primary key and then skips the version. A runner therefore never applies
// a migration twice: it reads the version table and applies what is
// missing. The catalog (catalog.Catalog) keeps the registered files, whose
// last version is the fleet's target, and a report of each database's
// state, which runners reconcile with the version tables.
//
// A file outside a transaction cannot be recorded atomically: its row is
// committed as "started" (with the session's backend PID) before its first
// statement and set to "done" after its last. A row found "started" later
// means the file ran partly or fully, or still runs: if that backend is
// still active the database is reported failed "still running", otherwise
// failed "needs attention: ran outside a transaction and may be partly
// applied". Nothing more is run in that database until an operator has
// looked: finish the statements by hand and set the row's state to 'done',
// or undo them and delete the row, so the next run applies the file again.
//
// # Locks and sessions
//
// A database is migrated under its migration lock in the catalog
// (catalog.LockMigration, a session advisory lock), so two runners, in one
// process or several, and the router's catch-up on connect never migrate it
// at once; the later one waits and then finds nothing left to do. Tenant
// migrations run as the tenant's own role, with the credentials of its
// catalog route, so what they create is the tenant's; the template's run as
// the role that owns its objects (provision/local), which each new tenant's
// role takes over. Sessions get Config.LockTimeout and
// Config.StatementTimeout.
//
// # Running
//
// Migrator.Up registers the files in the catalog (refusing an edited one:
// catalog.ChecksumError), migrates the template, then a canary wave, then
// the remaining tenants Concurrency at a time, stopping a wave once more
// than MaxFailShare of it failed. A failed database stays at the last
// migration it committed. Up is resumable: run it again and it carries on.
// Migrator.EnsureTenant brings one tenant to the target, for catching up on
// connect; Migrator.Status counts databases per version.
package migrate
