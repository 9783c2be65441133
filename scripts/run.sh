#!/usr/bin/env bash
# `make run`: starts Cadenza on this host. Installs and starts Postgres, NATS and Redis when they
# are not configured/reachable, builds the images and the four services, applies migrations,
# creates a demo org and project, starts every service in the background and prints the URL and
# an admin token. Writes CADENZA_URL, CADENZA_TOKEN and CADENZA_DATABASE_URL to .cadenza/dev.env.
# Migrations run as the migration role (CADENZA_MIGRATION_DATABASE_URL); the services connect as
# the runtime role (CADENZA_DATABASE_URL) and never see the migration role's credentials.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

: "${CADENZA_MIGRATION_DATABASE_URL:=postgres://cadenza:cadenza@127.0.0.1:15432/cadenza}"
: "${CADENZA_DATABASE_URL:=postgres://cadenza_app:cadenza_app@127.0.0.1:15432/cadenza}"
: "${CADENZA_NATS_URL:=nats://127.0.0.1:14222}"
: "${CADENZA_REDIS_URL:=redis://127.0.0.1:16379}"
: "${CADENZA_API_LISTEN:=127.0.0.1:8080}"
: "${CADENZA_SCHEDULER_LISTEN:=127.0.0.1:8081}"
: "${CADENZA_WORKER_LISTEN:=127.0.0.1:8082}"
: "${CADENZA_LINEAR_SYNC_LISTEN:=127.0.0.1:8083}"
: "${CADENZA_PROFILE:=dev}"
# Plain HTTP on loopback: session cookies cannot be `Secure` here.
: "${CADENZA_DEV_MODE:=true}"
export SQLX_OFFLINE=true
export CADENZA_MIGRATION_DATABASE_URL CADENZA_DATABASE_URL CADENZA_NATS_URL CADENZA_REDIS_URL CADENZA_API_LISTEN CADENZA_DEV_MODE \
  CADENZA_SCHEDULER_LISTEN CADENZA_WORKER_LISTEN CADENZA_LINEAR_SYNC_LISTEN

state="$root/.cadenza"
mkdir -p "$state/logs" "$state/pids"
log() { printf '[run] %s\n' "$*" >&2; }

scripts/infra.sh up
# The demo project runs the real OpenHands agent-server with the LLM named by CADENZA_LLM_MODEL,
# CADENZA_LLM_BASE_URL and CADENZA_LLM_API_KEY. The official image is used when a registry can
# be reached, otherwise the same version is built locally (about five minutes, once).
# CADENZA_DEMO_AGENT=fake runs the scripted fake agent instead: offline, no LLM, `$ ` lines of the
# prompt run as shell commands.
official_image=ghcr.io/openhands/agent-server:1.58.0-python
local_image=cadenza/openhands-agent-server:1.58.0
case "${CADENZA_DEMO_AGENT:-real}" in
  fake)
    CADENZA_SKIP_REAL_AGENT_IMAGE=1 scripts/build-images.sh >/dev/null
    agent_image=${CADENZA_DEMO_AGENT_IMAGE:-cadenza/fake-agent-server:dev}
    agent_kind="the scripted fake agent (no LLM)"
    demo_prompt='$ echo hello > hello.txt\n$ cat hello.txt\ndone'
    ;;
  real)
    if [ -n "${CADENZA_DEMO_AGENT_IMAGE:-}" ]; then
      agent_image=$CADENZA_DEMO_AGENT_IMAGE
    elif docker image inspect "$official_image" >/dev/null 2>&1 \
      || timeout 60 docker pull --quiet "$official_image" >/dev/null 2>&1; then
      agent_image=$official_image
    else
      log "no registry reachable: building $local_image locally (a few minutes, once)"
      agent_image=$local_image
    fi
    # The fake images are small and tests use them; the real one is built only when used.
    if [ "$agent_image" = "$local_image" ]; then
      scripts/build-images.sh >/dev/null
    else
      CADENZA_SKIP_REAL_AGENT_IMAGE=1 scripts/build-images.sh >/dev/null
    fi
    agent_kind="the OpenHands agent-server"
    demo_prompt='Create a file hello.txt that contains the word hello.'
    ;;
  *)
    log "CADENZA_DEMO_AGENT must be 'real' or 'fake'"
    exit 2
    ;;
esac
# The worker's LLM: what the demo project (and any project naming none) uses.
[ -n "${CADENZA_LLM_MODEL:-}" ] && export CADENZA_DEFAULT_LLM_MODEL=$CADENZA_LLM_MODEL
[ -n "${CADENZA_LLM_BASE_URL:-}" ] && export CADENZA_DEFAULT_LLM_BASE_URL=$CADENZA_LLM_BASE_URL
[ -n "${CADENZA_LLM_API_KEY:-}" ] && export CADENZA_DEFAULT_LLM_API_KEY=$CADENZA_LLM_API_KEY
llm_note="LLM: ${CADENZA_DEFAULT_LLM_MODEL:-none}"
if [ "${CADENZA_DEMO_AGENT:-real}" = real ] && [ -z "${CADENZA_DEFAULT_LLM_MODEL:-}" ]; then
  llm_note="LLM: NONE CONFIGURED - runs will fail at once with llm_unconfigured. Set
               CADENZA_LLM_MODEL (e.g. openai/gpt-4o or anthropic/claude-sonnet-4-5-20250929),
               CADENZA_LLM_API_KEY and, for a gateway, CADENZA_LLM_BASE_URL, then make run again;
               or CADENZA_DEMO_AGENT=fake make run for the offline scripted agent"
fi

# The demo project's image must be one the instance allows (CADENZA_AGENT_IMAGES, API and worker).
demo_repository=${agent_image%%@*}
case "${demo_repository##*/}" in
  *:*) demo_repository=${demo_repository%:*} ;;
esac
export CADENZA_AGENT_IMAGES=${CADENZA_AGENT_IMAGES:-"ghcr.io/openhands/agent-server, cadenza/openhands-agent-server, $demo_repository"}

log "building the services (profile $CADENZA_PROFILE)"
cargo build --quiet --profile "$CADENZA_PROFILE" --bins \
  -p cadenza-api -p cadenza-scheduler -p cadenza-worker -p cadenza-linear-sync
target_dir=target/$([ "$CADENZA_PROFILE" = dev ] && echo debug || echo "$CADENZA_PROFILE")

# Secrets are sealed with a key-encryption key. Without one configured, a local key file is
# made once and kept (losing it loses the secrets stored with it).
if [ -z "${CADENZA_SECRET_KEKS:-}" ] && [ -z "${CADENZA_SECRET_KEKS_FILE:-}" ]; then
  CADENZA_SECRET_KEKS_FILE="$state/keks.json"
  if [ ! -s "$CADENZA_SECRET_KEKS_FILE" ]; then
    kek=$("$target_dir/cadenza-api" secrets generate-kek)
    (umask 077; printf '{"active": "%s", "keys": [{"id": "%s", "key": "%s"}]}\n' \
      "${kek%%:*}" "${kek%%:*}" "${kek#*:}" >"$CADENZA_SECRET_KEKS_FILE")
    log "made a local key-encryption key in $CADENZA_SECRET_KEKS_FILE"
  fi
  export CADENZA_SECRET_KEKS_FILE
fi

scripts/stop.sh services >/dev/null 2>&1 || true
"$target_dir/cadenza-api" migrate

start() {
  local name=$1 binary=$2
  env -u CADENZA_MIGRATION_DATABASE_URL CADENZA_MIGRATE_ON_START=false \
    nohup "$target_dir/$binary" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name.pid"
}
start api cadenza-api
start scheduler cadenza-scheduler
start worker cadenza-worker
start linear-sync cadenza-linear-sync

for pair in "api=$CADENZA_API_LISTEN" "scheduler=$CADENZA_SCHEDULER_LISTEN" \
  "worker=$CADENZA_WORKER_LISTEN" "linear-sync=$CADENZA_LINEAR_SYNC_LISTEN"; do
  name=${pair%%=*}
  addr=${pair#*=}
  ready=0
  for _ in $(seq 1 150); do
    if curl -fsS "http://$addr/readyz" >/dev/null 2>&1; then ready=1; break; fi
    if ! kill -0 "$(cat "$state/pids/$name.pid")" 2>/dev/null; then break; fi
    sleep 0.2
  done
  if [ $ready -ne 1 ]; then
    log "$name did not become ready; its log:"
    tail -n 40 "$state/logs/$name.log" >&2
    exit 1
  fi
done

url="http://$CADENZA_API_LISTEN"
token=""
if [ -f "$state/dev.env" ]; then
  previous=$(sed -n 's/^CADENZA_TOKEN=//p' "$state/dev.env")
  if [ -n "$previous" ] && curl -fsS -H "Authorization: Bearer $previous" "$url/api/v1/projects" >/dev/null 2>&1; then
    token=$previous
  fi
fi
bootstrap=$(env -u CADENZA_MIGRATION_DATABASE_URL "$target_dir/cadenza-api" bootstrap --agent-image "$agent_image")
[ -n "$token" ] || token=$(printf '%s\n' "$bootstrap" | sed -n 's/^ *"token": "\(.*\)",\{0,1\}$/\1/p')
project_id=$(printf '%s\n' "$bootstrap" | sed -n 's/^ *"project_id": "\(.*\)",\{0,1\}$/\1/p')

umask 077
cat >"$state/dev.env" <<ENV
CADENZA_URL=$url
CADENZA_TOKEN=$token
CADENZA_DATABASE_URL=$CADENZA_DATABASE_URL
CADENZA_MIGRATION_DATABASE_URL=$CADENZA_MIGRATION_DATABASE_URL
CADENZA_PROJECT_ID=$project_id
ENV

cat <<EOF

Cadenza is running.

  API:         $url/api/v1
  Admin token: $token
  Demo project $project_id: $agent_kind, image $agent_image
  $llm_note

  Settings for scripts:  .cadenza/dev.env   Logs: .cadenza/logs/   Stop: make stop

Try it:
  curl -s -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \\
    -d '{"prompt": "$demo_prompt"}' \\
    $url/api/v1/projects/$project_id/runs
EOF
