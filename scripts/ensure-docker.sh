#!/usr/bin/env bash
# Makes sure a Docker engine answers. On Debian/Ubuntu as root it installs docker.io (and
# debootstrap, used to build the lab's base image without a registry, and the ssh client the
# lab's SSH profiles are reached with) and starts dockerd
# when none runs; elsewhere it says what to install. A dockerd started here is recorded in
# .cache/dockerd.pid so that `make docker-stop` (and CI) can stop it again.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

# The lab's SSH profiles (inventory/standalone, inventory/trixie) are reached with OpenSSH's
# client, as real hosts are; installed here beside Docker where it is missing.
if ! command -v ssh >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "docker: installing openssh-client with apt-get ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client >/dev/null
fi

if docker info >/dev/null 2>&1; then
  echo "docker: engine reachable ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<'MSG'
docker: no Docker engine is reachable.
  Install and start Docker (https://docs.docker.com/engine/install/), make sure your user
  may use it (`docker info` must work), and install debootstrap if no registry is
  reachable. Then run `make up` again.
MSG
  exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "docker: installing ${missing[*]} with apt-get ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -d /run/systemd/system ]; then
  echo "docker: starting docker.service ..."
  systemctl start docker
else
  echo "docker: starting dockerd (log: .cache/dockerd.log) ..."
  nohup dockerd >.cache/dockerd.log 2>&1 &
  echo $! >.cache/dockerd.pid
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker: engine ready"
    exit 0
  fi
  sleep 1
done
echo "docker: dockerd did not come up within 60 s; see .cache/dockerd.log" >&2
exit 1
