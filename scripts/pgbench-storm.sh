#!/usr/bin/env bash
# pgbench -C (a new connection per transaction, a C client, trust auth on
# every arm) against direct Postgres, PgBouncer in session and transaction
# mode, and the router pooling in session and transaction mode, all on one
# throwaway cluster and one tenant database, interleaved in rounds so that
# a noisy machine hurts every arm alike. Prints each arm's median tps and
# the routers' ratios to PgBouncer in the same mode (issue 10, target 1).
#
#   make build && ./scripts/pgbench-storm.sh [seconds per run] [rounds] [clients]
#
# Defaults: 10 s, 3 rounds, 8 clients. Needs the PostgreSQL server
# binaries and pgbench (./scripts/install-deps.sh --pgbouncer brings them
# and PgBouncer). Everything it starts listens on 127.0.0.1 and is stopped
# and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
rounds=${2:-3}
clients=${3:-8}
bin=${PGTENANT_BIN:-./bin/pgtenant}
[ -x "$bin" ] || { echo "pgbench-storm: $bin missing: run make build first" >&2; exit 2; }
bin=$(realpath "$bin")
pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
pgbouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -x "$pgbouncer" ] || { echo "pgbench-storm: pgbouncer missing: ./scripts/install-deps.sh --pgbouncer" >&2; exit 2; }

dir=$(mktemp -d /tmp/pgbench-storm.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$dir/pg/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# postgres, initdb and pgbouncer refuse to run as root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi

# free_port prints a port below the ephemeral range that nothing listens on.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# wait_port waits until something accepts on 127.0.0.1:$1 (up to 30 s).
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "pgbench-storm: nothing listens on port $1; logs in $dir" >&2
  exit 1
}

tenant=storm
role=t_$tenant
pgport=$(free_port)
as_pg "$pgbin/initdb" -D "$dir/pg" -U postgres -A trust >/dev/null
as_pg "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -o "-p $pgport -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null

key=$("$bin" genkey)
# start_router NAME MODE starts a router and sets port to its port (not
# run in $(...): pids must be appended to in this shell).
start_router() {
  port=$(free_port)
  cat >"$dir/$1.yaml" <<EOF
listen: 127.0.0.1:$port
drain_timeout: 0s
log:
  level: warn
auth:
  method: trust
limits:
  max_handshakes: 10000
provider:
  local:
    admin_dsn: postgres://postgres@127.0.0.1:$pgport/postgres
pool:
  mode: $2
  max_server_connections: $((clients * 2))
EOF
  PGTENANT_CATALOG_KEY=$key "$bin" serve --config "$dir/$1.yaml" >"$dir/$1.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
}
start_router router-pooled-session session; router_session=$port
start_router router-pooled-tx transaction; router_tx=$port
# The first connect creates the tenant's database and role.
"$pgbin/psql" -X -q "host=127.0.0.1 port=$router_session user=$tenant dbname=app connect_timeout=60" -c 'SELECT 1' >/dev/null

# start_bouncer NAME MODE starts a PgBouncer and sets port to its port.
start_bouncer() {
  port=$(free_port)
  cat >"$dir/$1.ini" <<EOF
[databases]
$role = host=127.0.0.1 port=$pgport dbname=$role user=$role
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $2
default_pool_size = $((clients * 2))
max_client_conn = 10000
logfile = $dir/$1.log
pidfile = $dir/$1.pid
EOF
  as_pg "$pgbouncer" -d "$dir/$1.ini" >/dev/null
  wait_port "$port"
  pids+=("$(cat "$dir/$1.pid")")
}
echo "\"$role\" \"\"" >"$dir/users.txt"
start_bouncer pgbouncer-session session; bouncer_session=$port
start_bouncer pgbouncer-transaction transaction; bouncer_tx=$port

echo 'SELECT 1;' >"$dir/select1.sql"
declare -A dsn=(
  [direct]="host=127.0.0.1 port=$pgport user=$role dbname=$role"
  [pgbouncer-session]="host=127.0.0.1 port=$bouncer_session user=$role dbname=$role"
  [pgbouncer-transaction]="host=127.0.0.1 port=$bouncer_tx user=$role dbname=$role"
  [router-pooled-session]="host=127.0.0.1 port=$router_session user=$tenant dbname=app"
  [router-pooled-tx]="host=127.0.0.1 port=$router_tx user=$tenant dbname=app"
)
arms=(direct pgbouncer-session pgbouncer-transaction router-pooled-session router-pooled-tx)
declare -A results
echo "pgbench -n -C -c $clients -j 2 -T $secs, SELECT 1, $rounds rounds"
for r in $(seq "$rounds"); do
  for a in "${arms[@]}"; do
    out=$("$pgbin/pgbench" -n -C -c "$clients" -j 2 -T "$secs" -f "$dir/select1.sql" "${dsn[$a]}" 2>&1) || {
      echo "pgbench-storm: pgbench against $a failed:" >&2
      echo "$out" >&2
      exit 1
    }
    tps=$(echo "$out" | awk '/^tps = /{print $3; exit}')
    failed=$(echo "$out" | awk '/^number of failed transactions/{print $5; exit}')
    results[$a]+="$tps "
    printf 'round %d  %-22s %10.1f tps  (failed: %s)\n' "$r" "$a" "$tps" "${failed:-0}"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
echo
printf '%-22s %12s  %s\n' arm 'median tps' ratio
declare -A med
for a in "${arms[@]}"; do med[$a]=$(echo "${results[$a]}" | median); done
for a in "${arms[@]}"; do
  ratio=""
  case $a in
    direct) ;;
    pgbouncer-*) ratio=$(awk -v x="${med[$a]}" -v y="${med[direct]}" 'BEGIN{printf "%.2fx direct", x/y}') ;;
    router-pooled-session) ratio=$(awk -v x="${med[$a]}" -v y="${med[pgbouncer-session]}" 'BEGIN{printf "%.2fx pgbouncer-session", x/y}') ;;
    router-pooled-tx) ratio=$(awk -v x="${med[$a]}" -v y="${med[pgbouncer-transaction]}" 'BEGIN{printf "%.2fx pgbouncer-transaction", x/y}') ;;
  esac
  printf '%-22s %12.1f  %s\n' "$a" "${med[$a]}" "$ratio"
done
