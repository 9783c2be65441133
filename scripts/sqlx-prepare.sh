#!/usr/bin/env bash
# Regenerates the offline query data in .sqlx/ from a scratch database migrated with
# migrations/, so the crates build without a database (SQLX_OFFLINE). With --check, regenerates
# into a temporary directory and fails when the checked-in data differs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The migration role: it may create databases and owns what the migrations make.
admin_url=${CADENZA_MIGRATION_DATABASE_URL:-postgres://cadenza:cadenza@127.0.0.1:15432/cadenza}
# A different scratch name lets two checkouts prepare at once on one server.
scratch=${CADENZA_SQLX_SCRATCH_DB:-cadenza_sqlx_prepare}
base_url=${admin_url%/*}
scratch_url="$base_url/$scratch"

psql -q "$admin_url" -c "drop database if exists $scratch with (force)" -c "create database $scratch"
for migration in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 "$scratch_url" -f "$migration" >/dev/null
done

out="$root/.sqlx"
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
else
  rm -rf "$out"
  mkdir -p "$out"
fi

# Touch the crates that use the query macros so they are expanded again against the schema.
for crate in crates/storage; do touch "$crate/src/lib.rs"; done
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" DATABASE_URL="$scratch_url" \
  cargo check --quiet -p cadenza-storage --all-targets
psql -q "$admin_url" -c "drop database if exists $scratch with (force)"

if [ "${1:-}" = "--check" ]; then
  if ! diff -r -q "$out" "$root/.sqlx" >/dev/null; then
    echo "error: .sqlx/ is out of date with migrations/ or the queries; run scripts/sqlx-prepare.sh and commit the result" >&2
    diff -r -q "$out" "$root/.sqlx" >&2 || true
    exit 1
  fi
  echo "sqlx offline data is up to date"
else
  echo "wrote $(ls "$out" | wc -l) query files to .sqlx/"
fi
