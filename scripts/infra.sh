#!/usr/bin/env bash
# Installs (apt) and starts the infrastructure Cadenza needs on this host: PostgreSQL, NATS with
# JetStream and Redis, each on loopback, each only when the configured address is not already
# reachable. Idempotent: running it twice starts nothing twice.
#
#   scripts/infra.sh up      install what is missing and start what is not reachable
#   scripts/infra.sh down    stop what this script started (never anything else)
#   scripts/infra.sh env     print the connection settings as CADENZA_* assignments
#
# Settings (environment): CADENZA_MIGRATION_DATABASE_URL (the role that owns the schema and runs
# the migrations), CADENZA_DATABASE_URL (the runtime role the services connect as), CADENZA_NATS_URL,
# CADENZA_REDIS_URL. When one points at a loopback address that nothing answers on, the script
# starts a local server there with its data under .cadenza/infra/. A non-loopback address that
# does not answer is an error.
#
# Postgres gets both login roles, each made only when missing: the migration role (CREATEDB, owns
# the database) and the runtime role, a member of the group role `cadenza_runtime` that the
# migrations grant table privileges to (docs/decisions/0006-runtime-and-migration-roles.md). On a
# server it did not start, the script makes the roles through CADENZA_POSTGRES_SUPERUSER_URL
# (default: the `postgres` role on the same host and port).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.cadenza/infra"

: "${CADENZA_MIGRATION_DATABASE_URL:=postgres://cadenza:cadenza@127.0.0.1:15432/cadenza}"
: "${CADENZA_DATABASE_URL:=postgres://cadenza_app:cadenza_app@127.0.0.1:15432/cadenza}"
: "${CADENZA_NATS_URL:=nats://127.0.0.1:14222}"
: "${CADENZA_REDIS_URL:=redis://127.0.0.1:16379}"

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  # policy-rc.d keeps package scripts from starting system-wide daemons we would not own.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  as_root rm -f /usr/sbin/policy-rc.d
}

# Splits scheme://[user[:pass]@]host:port[/path] into the globals url_host and url_port.
parse_url() {
  local rest=${1#*://}
  rest=${rest##*@}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  url_host=${rest%%:*}
  url_port=${rest##*:}
  [ "$url_port" = "$rest" ] && url_port=$2
  return 0
}

is_loopback() { [ "$1" = "127.0.0.1" ] || [ "$1" = "localhost" ] || [ "$1" = "::1" ]; }

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_tcp() {
  local host=$1 port=$2 what=$3
  for _ in $(seq 1 100); do
    tcp_open "$host" "$port" && return 0
    sleep 0.2
  done
  die "$what did not start listening on $host:$port within 20 s (see $state/*.log)"
}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] || die "PostgreSQL binaries not found under /usr/lib/postgresql"
  echo "$dir"
}

# Runs a command as the owner of the local Postgres cluster: Postgres refuses to run as root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url_user() { echo "$1" | sed -E 's#^[a-z]+://([^:@/]+).*#\1#'; }
url_pass() { echo "$1" | sed -E 's#^[a-z]+://[^:@/]+:([^@/]+)@.*#\1#'; }
url_db() { echo "$1" | sed -E 's#^[^/]+//[^/]+/([^?]+).*#\1#'; }

# The group role the migrations grant privileges to, and the services' login role in it. Each
# statement tolerates the role existing already, so concurrent runs cannot fail each other.
runtime_roles_sql() {
  local user pass
  user=$(url_user "$CADENZA_DATABASE_URL")
  pass=$(url_pass "$CADENZA_DATABASE_URL")
  cat <<SQL
set client_min_messages = warning;
do \$\$ begin create role cadenza_runtime nologin; exception when duplicate_object then null; end \$\$;
do \$\$ begin create role "$user" login password '$pass'; exception when duplicate_object then null; end \$\$;
grant cadenza_runtime to "$user";
SQL
}

# On a server this script did not start: make the runtime roles as a superuser when one is
# reachable, else accept roles someone made already, else say what to run.
postgres_roles_on_running_server() {
  local host=$1 port=$2
  local superuser_url=${CADENZA_POSTGRES_SUPERUSER_URL:-postgres://postgres@$host:$port/postgres}
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  if psql "$superuser_url" -qtA -c "select 1" >/dev/null 2>&1; then
    psql "$superuser_url" -q -v ON_ERROR_STOP=1 -c "$(runtime_roles_sql)" >/dev/null
    log "postgres: runtime roles ready"
  elif [ "$(psql "$CADENZA_DATABASE_URL" -qtA -c "select pg_has_role('cadenza_runtime', 'member')" 2>/dev/null)" = "t" ]; then
    log "postgres: runtime role $(url_user "$CADENZA_DATABASE_URL") can connect"
  else
    die "postgres: the runtime roles are missing and no superuser is reachable (CADENZA_POSTGRES_SUPERUSER_URL); as a superuser, run:
$(runtime_roles_sql)"
  fi
}

postgres_up() {
  parse_url "$CADENZA_MIGRATION_DATABASE_URL" 5432
  local host=$url_host port=$url_port
  if tcp_open "$host" "$port"; then
    log "postgres: reachable at $host:$port"
    postgres_roles_on_running_server "$host" "$port"
    return 0
  fi
  is_loopback "$host" || die "postgres at $host:$port is not reachable (CADENZA_MIGRATION_DATABASE_URL)"
  apt_install postgresql postgresql-contrib
  local bin data=$state/postgres
  bin=$(pg_bin)
  mkdir -p "$state"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "postgres: initialising a cluster in $data"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$data"
    chmod 700 "$data"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
max_connections = 400
fsync = on
EOF
  fi
  sed -i "s/^port = .*//" "$data/postgresql.conf"
  echo "port = $port" >> "$data/postgresql.conf"
  log "postgres: starting on $host:$port"
  as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
  local user pass db
  user=$(url_user "$CADENZA_MIGRATION_DATABASE_URL")
  pass=$(url_pass "$CADENZA_MIGRATION_DATABASE_URL")
  db=$(url_db "$CADENZA_MIGRATION_DATABASE_URL")
  local psql=("$bin/psql" -h "$data" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA)
  if [ "$(as_pg "${psql[@]}" -c "select 1 from pg_roles where rolname = '$user'")" != "1" ]; then
    as_pg "${psql[@]}" -c "create role \"$user\" login createdb password '$pass'"
  fi
  if [ "$(as_pg "${psql[@]}" -c "select 1 from pg_database where datname = '$db'")" != "1" ]; then
    as_pg "${psql[@]}" -c "create database \"$db\" owner \"$user\""
  fi
  as_pg "${psql[@]}" -c "$(runtime_roles_sql)" >/dev/null
  echo "$bin/pg_ctl -D $data" > "$state/postgres.started"
}

nats_up() {
  parse_url "$CADENZA_NATS_URL" 4222
  local host=$url_host port=$url_port
  if tcp_open "$host" "$port"; then
    log "nats: reachable at $host:$port"
    return 0
  fi
  is_loopback "$host" || die "nats at $host:$port is not reachable (CADENZA_NATS_URL)"
  apt_install nats-server
  mkdir -p "$state/nats"
  log "nats: starting with JetStream on $host:$port"
  nohup nats-server -js -a 127.0.0.1 -p "$port" -sd "$state/nats" -P "$state/nats.pid" \
    >"$state/nats.log" 2>&1 &
  wait_tcp "$host" "$port" nats
}

redis_up() {
  parse_url "$CADENZA_REDIS_URL" 6379
  local host=$url_host port=$url_port
  if tcp_open "$host" "$port"; then
    log "redis: reachable at $host:$port"
    return 0
  fi
  is_loopback "$host" || die "redis at $host:$port is not reachable (CADENZA_REDIS_URL)"
  apt_install redis-server
  mkdir -p "$state/redis"
  log "redis: starting on $host:$port"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$state/redis" \
    --pidfile "$state/redis.pid" --logfile "$state/redis.log" --save "" --appendonly no >/dev/null
  wait_tcp "$host" "$port" redis
}

docker_up() {
  if docker info >/dev/null 2>&1; then
    log "docker: engine reachable"
    return 0
  fi
  if ! command -v docker >/dev/null 2>&1; then
    apt_install docker.io
  fi
  log "docker: starting the engine"
  (as_root service docker start >/dev/null 2>&1) || (as_root nohup dockerd >"$state/dockerd.log" 2>&1 &)
  for _ in $(seq 1 100); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  die "the Docker Engine is not reachable; start it and try again"
}

down() {
  if [ -f "$state/postgres.started" ]; then
    as_pg $(cat "$state/postgres.started") -m fast stop >/dev/null 2>&1 || true
    rm -f "$state/postgres.started"
    log "postgres: stopped"
  fi
  for svc in nats redis; do
    if [ -f "$state/$svc.pid" ]; then
      kill "$(cat "$state/$svc.pid")" 2>/dev/null || true
      rm -f "$state/$svc.pid"
      log "$svc: stopped"
    fi
  done
}

case "${1:-up}" in
  up)
    mkdir -p "$state"
    apt_install ca-certificates curl
    postgres_up
    nats_up
    redis_up
    docker_up
    ;;
  down) down ;;
  env)
    echo "CADENZA_MIGRATION_DATABASE_URL=$CADENZA_MIGRATION_DATABASE_URL"
    echo "CADENZA_DATABASE_URL=$CADENZA_DATABASE_URL"
    echo "CADENZA_NATS_URL=$CADENZA_NATS_URL"
    echo "CADENZA_REDIS_URL=$CADENZA_REDIS_URL"
    ;;
  *) die "usage: $0 up|down|env" ;;
esac
