#!/bin/sh
# The image's install steps (Dockerfile, build stage), also run by `make image-check` outside a container:
# build the router's wheel from the source tree, then install it with its pinned runtime dependencies
# only (constraints.txt; no dev tools) into a fresh venv. pip's cache is used unless PIP_NO_CACHE_DIR=1
# (the Dockerfile sets it, so no cache lands in the image).
#   install.sh SOURCE_DIR VENV_DIR [PYTHON]
set -eu
src=$1
venv=$2
python=${3:-python3}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" wheel --disable-pip-version-check --quiet --no-deps --wheel-dir "$wheels" "$src"
"$venv/bin/pip" install --disable-pip-version-check --quiet \
    --constraint "$src/constraints.txt" "$wheels"/api_router-*.whl
"$venv/bin/router" version
