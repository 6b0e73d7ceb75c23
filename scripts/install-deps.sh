#!/usr/bin/env bash
# Installs what pgtenant's dev mode, tests and benchmarks need and are not Go
# modules: the PostgreSQL server binaries (initdb, postgres) and psql, and
# PgBouncer (the baseline of `pgtenant bench --self`), from the distribution's
# packages. Does nothing when they are already there.
set -euo pipefail

have_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_psql() {
  command -v psql >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/psql" >/dev/null
}
have_pgbouncer() {
  [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null
}

pkgs=()
if ! have_server || ! have_psql; then pkgs+=(postgresql postgresql-client); fi
if ! have_pgbouncer; then pkgs+=(pgbouncer); fi
if [ ${#pkgs[@]} -eq 0 ]; then
  exit 0
fi

# PgBouncer alone is optional outside CI (only `bench --self` uses it): when
# it cannot be installed here, say so and go on.
cannot_install() {
  if [ "${pkgs[*]}" = "pgbouncer" ] && [ "${CI:-}" != "true" ]; then
    echo "install-deps: pgbouncer not installed ($1); bench --self will skip its PgBouncer targets" >&2
    exit 0
  fi
}

SUDO=""
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then cannot_install "not root and no sudo"; fi
if ! command -v apt-get >/dev/null; then cannot_install "no apt-get"; fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-deps: ${pkgs[*]} missing and this is not root (and there is no sudo):" >&2
    echo "  run as root: apt-get install -y ${pkgs[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install-deps: ${pkgs[*]} missing and apt-get is not available;" >&2
  echo "  install PostgreSQL (server and client, version 13 or newer) and PgBouncer with your package manager." >&2
  exit 1
fi

echo "install-deps: installing ${pkgs[*]} (Debian packages)..."
# pgtenant runs its own clusters: don't let the package create and start a
# system-wide 'main' cluster on port 5432 as a side effect.
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/pgtenant.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"
have_server || { echo "install-deps: postgresql installed but initdb not found" >&2; exit 1; }

if [[ " ${pkgs[*]} " == *" pgbouncer "* ]]; then
  have_pgbouncer || { echo "install-deps: pgbouncer installed but /usr/sbin/pgbouncer not found" >&2; exit 1; }
  # The package enables and starts a system-wide PgBouncer on localhost:6432,
  # which is `pgtenant dev`'s port; `pgtenant bench --self` starts PgBouncers
  # of its own. Stop that one and keep it from starting at boot (systemd, or
  # the SysV script where there is no systemd, as in most containers).
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now pgbouncer.service pgbouncer.socket >/dev/null 2>&1 || true
  fi
  $SUDO service pgbouncer stop >/dev/null 2>&1 || true
  $SUDO update-rc.d pgbouncer disable >/dev/null 2>&1 || true
fi
