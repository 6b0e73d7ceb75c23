#!/usr/bin/env bash
# Installs what pgtenant's dev mode and tests need and are not Go modules,
# from the distribution's packages: the PostgreSQL server binaries (initdb,
# postgres) and psql, and, when asked (--pgbouncer or WITH_PGBOUNCER=1),
# PgBouncer, the baseline of `pgtenant bench --self` and its tests. Does
# nothing when they are already there.
#
#   ./scripts/install-deps.sh               PostgreSQL only (make dev, make deps)
#   ./scripts/install-deps.sh --pgbouncer   PostgreSQL and PgBouncer (make test)
#
# PgBouncer is optional outside CI: when it cannot be installed here, this
# says so and succeeds. Under CI=true that is an error.
set -euo pipefail

want_pgbouncer=""
[ "${WITH_PGBOUNCER:-}" = "1" ] && want_pgbouncer=1
for arg in "$@"; do
  case "$arg" in
    --pgbouncer) want_pgbouncer=1 ;;
    -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument $arg (want --pgbouncer)" >&2; exit 2 ;;
  esac
done

have_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_psql() {
  command -v psql >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/psql" >/dev/null
}
have_pgbouncer() {
  [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null
}

need_postgres=""
if ! have_server || ! have_psql; then need_postgres=1; fi
need_pgbouncer=""
if [ -n "$want_pgbouncer" ] && ! have_pgbouncer; then need_pgbouncer=1; fi
if [ -z "$need_postgres" ] && [ -z "$need_pgbouncer" ]; then
  exit 0
fi

# skip_pgbouncer ends the script successfully outside CI when PgBouncer is
# all that is missing and cannot be installed (only `bench --self` and its
# tests use it); under CI it returns, and the caller fails.
skip_pgbouncer() {
  if [ -z "$need_postgres" ] && [ "${CI:-}" != "true" ]; then
    echo "install-deps: pgbouncer not installed ($1); bench --self will skip its PgBouncer targets" >&2
    exit 0
  fi
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    skip_pgbouncer "not root and no sudo"
    missing="postgresql postgresql-client"
    [ -n "$need_pgbouncer" ] && missing+=" pgbouncer"
    echo "install-deps: $missing missing and this is not root (and there is no sudo):" >&2
    echo "  run as root: apt-get install -y $missing" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null; then
  skip_pgbouncer "no apt-get"
  echo "install-deps: PostgreSQL or PgBouncer missing and apt-get is not available;" >&2
  echo "  install PostgreSQL (server and client, version 13 or newer) and PgBouncer with your package manager." >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
updated=""
apt_install() {
  if [ -z "$updated" ]; then
    $SUDO apt-get update -q
    updated=1
  fi
  $SUDO apt-get install -y -q --no-install-recommends "$@"
}

if [ -n "$need_postgres" ]; then
  echo "install-deps: installing postgresql postgresql-client (Debian packages)..."
  # pgtenant runs its own clusters: don't let the package create and start a
  # system-wide 'main' cluster on port 5432 as a side effect.
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/pgtenant.conf >/dev/null
  apt_install postgresql postgresql-client
  have_server || { echo "install-deps: postgresql installed but initdb not found" >&2; exit 1; }
  need_postgres=""
fi

if [ -n "$need_pgbouncer" ]; then
  # Its own apt-get run, after PostgreSQL's: a PgBouncer that cannot be
  # installed must not cost the user PostgreSQL.
  echo "install-deps: installing pgbouncer (Debian package)..."
  if ! apt_install pgbouncer; then
    skip_pgbouncer "apt-get install pgbouncer failed"
    echo "install-deps: apt-get install pgbouncer failed (under CI=true PgBouncer is required)" >&2
    exit 1
  fi
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
