#!/usr/bin/env bash
# Validates docs/openapi.json against the OpenAPI 3.1 specification with an independent
# validator (openapi-spec-validator, from PyPI, in a virtual environment under .cadenza/).
# The test suite checks that the file is what the code generates; this checks that what the
# code generates is valid OpenAPI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cadenza/venv-openapi"
validator_version="0.9.0"

if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "[openapi] installing python3-venv" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); else sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
fi
if ! "$venv/bin/python" -c "import openapi_spec_validator" 2>/dev/null; then
  "$venv/bin/pip" install -q "openapi-spec-validator==$validator_version"
fi
"$venv/bin/python" - "$root/docs/openapi.json" <<'PY'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

document, _ = read_from_filename(sys.argv[1])
validate(document)
operations = sum(len(methods) for methods in document["paths"].values())
print(f"[openapi] {sys.argv[1].rsplit('/', 1)[-1]}: valid OpenAPI {document['openapi']}, "
      f"{len(document['paths'])} paths, {operations} operations, "
      f"{len(document['components']['schemas'])} schemas")
PY
