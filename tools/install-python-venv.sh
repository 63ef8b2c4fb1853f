#!/usr/bin/env bash
# Debian/Ubuntu ship Python's venv module separately: install it when `python3 -m venv` fails.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "install-python-venv: python3 -m venv failed; as root run: apt-get install -y python3-venv" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
