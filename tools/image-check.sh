#!/usr/bin/env bash
# make image-check: the Dockerfile's install steps (deploy/image/install.sh: a wheel, runtime dependencies
# only, a fresh venv) run outside a container, then the image's command serves /v1/status/healthz and a
# chat request with its data dir in a volume-like directory and a working directory it cannot write.
# No registry is reachable here for a base image, so the image itself is not built (helm/api-router/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(bash tools/find-python.sh 3.12 3.11 3.13)}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The runtime wheels, downloaded once per constraints.txt (the index here costs seconds per package);
# install.sh then runs unchanged with pip reading PIP_NO_INDEX/PIP_FIND_LINKS from the environment.
wheelhouse=$PWD/.wheelhouse/$version
if [ ! -f "$wheelhouse/.complete" ] || [ constraints.txt -nt "$wheelhouse/.complete" ] \
    || [ pyproject.toml -nt "$wheelhouse/.complete" ]; then
    echo "== image-check: downloading the runtime wheels for Python $version into $wheelhouse"
    .venv/bin/python tools/wheelhouse.py "$version" "$wheelhouse"
    touch "$wheelhouse/.complete"
fi
root=$(mktemp -d /tmp/router-image.XXXXXX)
trap 'chmod -R u+w "$root"; rm -rf "$root"' EXIT
start=$(date +%s)
echo "== image-check: deploy/image/install.sh with $("$python" -V)"
PIP_NO_INDEX=1 PIP_FIND_LINKS=$wheelhouse sh deploy/image/install.sh "$PWD" "$root/opt/router" "$python"
echo "== image-check: installed in $(($(date +%s) - start)) s; $(ls "$root/opt/router/lib"/python3.*/site-packages | wc -l) entries in site-packages"
if "$root/opt/router/bin/python" -c 'import pytest' 2>/dev/null; then
    echo "image-check: a dev tool (pytest) is in the runtime install" >&2
    exit 1
fi
mkdir -p "$root/data"
chmod -R a-w "$root/opt"  # the image's root filesystem is read-only (root ignores this: checked below)
touch "$root/before-serving"
PYTHONDONTWRITEBYTECODE=1 "$root/opt/router/bin/python" tools/smoke_serve.py \
    --router "$root/opt/router/bin/router" --data-dir "$root/data"
written=$(find "$root/opt" -newer "$root/before-serving" | head -5)
if [ -n "$written" ]; then
    echo "image-check: serving wrote outside the data dir (the root filesystem is read-only):" >&2
    echo "$written" >&2
    exit 1
fi
echo "== image-check: ok in $(($(date +%s) - start)) s"
