// Package providertest is the conformance suite every provision.Provider
// runs (issue 13): local against a throwaway Postgres, neon against the
// neontest fake, and each other provider against its own fake or, when
// credentials are set, the real API.
//
// What it checks, in the words of the contract (provision.Provider):
//   - Create is idempotent: a second Create of a tenant adopts what the
//     first made, with the same address, database, user and provider ID;
//   - 50 concurrent Creates of one tenant leave one database;
//   - a Create whose answer was lost (the backend did it, the caller never
//     heard) is found by name by the next Create, not made twice;
//   - Delete removes the tenant's database, and a second Delete is
//     harmless (nil or provision.ErrTenantNotFound);
//   - two created tenants are reachable end to end through a real router
//     (router.New, in-process, with a catalog on a throwaway Postgres),
//     each unable to see the other's tables.
//
// A provider's test calls Run from an external test package (package
// xxx_test): providertest imports router, which imports the providers.
package providertest
