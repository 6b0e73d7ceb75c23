#!/usr/bin/env bash
# Installs what pgtenant's dev mode and tests need and are not Go modules:
# the PostgreSQL server binaries (initdb, postgres) and psql, from the
# distribution's packages. Does nothing when they are already there.
set -euo pipefail

have_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_psql() {
  command -v psql >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/psql" >/dev/null
}

if have_server && have_psql; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-deps: PostgreSQL is missing and this is not root (and there is no sudo):" >&2
    echo "  run as root: apt-get install -y postgresql postgresql-client" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install-deps: PostgreSQL server binaries not found and apt-get is not available;" >&2
  echo "  install PostgreSQL (server and client, version 13 or newer) with your package manager." >&2
  exit 1
fi

echo "install-deps: installing PostgreSQL server and client (Debian packages)..."
# pgtenant runs its own clusters: don't let the package create and start a
# system-wide 'main' cluster on port 5432 as a side effect.
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/pgtenant.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends postgresql postgresql-client
have_server || { echo "install-deps: postgresql installed but initdb not found" >&2; exit 1; }
