#!/usr/bin/env bash
# `make test`: prepares everything the tests need (Postgres, NATS, Redis, Docker images), then
# runs the quality gates and the whole test suite. This is what CI runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/infra.sh up
scripts/build-images.sh

# The test runner; a fresh machine may have cargo without it.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# Builds use the checked-in offline query data; the check below proves it matches the schema.
export SQLX_OFFLINE=true
scripts/sqlx-prepare.sh --check

cargo fmt --all -- --check
# The committed OpenAPI document is valid OpenAPI 3.1 (the suite checks it matches the code).
scripts/check-openapi.sh
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The cross-service tests start the service binaries as separate processes.
cargo build --workspace --bins --quiet
cargo nextest run --workspace --no-fail-fast "$@"
