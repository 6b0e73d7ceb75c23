# pgtenant: the two commands a new user needs are `make dev` and `make test`.
GO ?= go
ARGS ?=

.PHONY: dev test build deps fuzz bench

## dev: install PostgreSQL if missing (not PgBouncer), build, and run the router on a local Postgres it starts itself.
dev: deps build
	./bin/pgtenant dev $(ARGS)

## test: install what the tests need (PostgreSQL, and PgBouncer for the bench
## tests), then vet and run every test with the race detector. -count=1: a
## cached pass would hide a flaky test.
test:
	./scripts/install-deps.sh --pgbouncer
	$(GO) vet ./...
	$(GO) test -count=1 -race -timeout 15m ./...

## build: build bin/pgtenant. `pgtenant version` prints the module version and
## commit Go records; VERSION (git describe) is its fallback where Go records
## none (-buildvcs=false, a linked git worktree).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/pgtenant ./cmd/pgtenant

## deps: install the PostgreSQL server and psql (Debian/Ubuntu packages) when
## missing. PgBouncer (bench --self's baseline) only on request:
## ./scripts/install-deps.sh --pgbouncer (make test does).
deps:
	./scripts/install-deps.sh

## fuzz: a short run of each fuzz target (CI runs this too). Budgets are
## execution counts, not durations: a duration -fuzztime can fail spuriously
## with "context deadline exceeded" on a busy machine (golang/go#75804, fixed
## in Go 1.27).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseStartup$$' -fuzztime 200000x ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzExtractTenant$$' -fuzztime 100000x ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzSplitTenantOption$$' -fuzztime 100000x ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzTracker$$' -fuzztime 200000x ./pool
	$(GO) test -run '^$$' -fuzz '^FuzzRequests$$' -fuzztime 200000x ./pool
	$(GO) test -run '^$$' -fuzz '^FuzzStmtRewriter$$' -fuzztime 200000x ./proxy

## bench: micro-benchmarks of the hot path, and an idle session's memory
## (with the goroutine stack setting serve and dev run with: cmd/pgtenant/stacks.go).
bench:
	GODEBUG=adaptivestackstart=0 $(GO) test -run '^$$' -bench . -benchmem ./resolver ./proxy
