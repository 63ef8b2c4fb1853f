#!/usr/bin/env bash
# Smoke run on one Python version (make smoke-pythons): a runtime-only venv .venv-X.Y (the pinned runtime
# dependencies, no dev tools; reinstalled when pyproject.toml or constraints.txt change), then
# `router serve --demo` on a free port, GET /v1/status/healthz and one chat completion (tools/smoke_serve.py).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1
python=$(bash tools/find-python.sh "$version") || { echo "smoke-pythons: Python $version is needed" >&2; exit 1; }
venv=.venv-$version
stamp=$venv/.installed-runtime
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "== smoke $version: installing the runtime dependencies into $venv"
    [ -x "$venv/bin/pip" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e .
    touch "$stamp"
fi
echo "== smoke $version: $("$venv/bin/python" -V)"
"$venv/bin/python" tools/smoke_serve.py --router "$PWD/$venv/bin/router" 2>&1 | sed "s/^/[$version] /"
