#!/usr/bin/env bash
# `make stop`: stops the services `make run` started; with `all`, also the infrastructure that
# scripts/infra.sh started (never anything it did not start).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pids="$root/.cadenza/pids"
if [ -d "$pids" ]; then
  for file in "$pids"/*.pid; do
    [ -e "$file" ] || continue
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      echo "stopped $(basename "$file" .pid)"
    fi
    rm -f "$file"
  done
fi
if [ "${1:-services}" = "all" ]; then
  "$root/scripts/infra.sh" down
fi
