#!/usr/bin/env bash
# Installs schemathesis (pinned, from PyPI) in a virtual environment under .cadenza/ and prints
# the path of its command. Used by the schema-driven fuzzing test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cadenza/venv-fuzz"
version="4.32.5"
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); else sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
fi
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  "$venv/bin/pip" install -q "schemathesis==$version" >&2
fi
echo "$venv/bin/schemathesis"
