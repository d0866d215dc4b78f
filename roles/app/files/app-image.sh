#!/bin/sh
# Builds the app's images on the controller and saves them in one archive, once per source
# state (roles/app, app_install_method: image).
#
#   app-image.sh CACHE_DIR DOCKERFILE BASE_IMAGE IMAGE_NAME WHEEL BUILD_PY PYTHON COMPONENT...
#
# The key is a hash of the Dockerfile, the base image's ID and the wheel: an archive
# <CACHE_DIR>/image/<key>/<key>.tar that exists already is used as it is (nothing is built).
# Otherwise: the Python of the image (its `rootfs` stage) is probed, the wheelhouse for that
# Python and platform is made with scripts/app-build.py, the images IMAGE_NAME:<key>-<component>
# are built from a context holding the Dockerfile and wheels/ (offline), and `docker save`
# writes them (their one layer is shared) to the archive. Prints one JSON object:
# {"key", "archive", "built"}.
set -eu
cache=$1 dockerfile=$2 base=$3 name=$4 wheel=$5 build_py=$6 python=$7
shift 7
[ $# -gt 0 ] || { echo "app-image: no component given" >&2; exit 2; }

base_id=$(docker image inspect --format '{{.Id}}' "$base") || {
  echo "app-image: base image $base not found in the Docker engine (roles/lab builds it)" >&2
  exit 1
}
key=$( { sha256sum "$dockerfile" "$wheel" | cut -d' ' -f1; echo "$base_id $*"; } | sha256sum | cut -c1-16)
dir=$cache/image/$key
archive=$dir/$key.tar
refs=""
for c in "$@"; do refs="$refs $name:$key-$c"; done

if [ -f "$dir/.complete" ]; then
  printf '{"key": "%s", "archive": "%s", "built": false}\n' "$key" "$archive"
  exit 0
fi

mkdir -p "$cache/image"
work=$(mktemp -d "$cache/image/.tmp-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx/wheels" "$work/out"
cp "$dockerfile" "$work/ctx/Dockerfile"

# The image's Python decides which wheels fit (the same probe the pip method runs on hosts).
docker build -q --target rootfs --build-arg "BASE_IMAGE=$base" -t "$name:$key-rootfs" \
  "$work/ctx" >/dev/null
probe=$(docker run --rm --network none "$name:$key-rootfs" python3 -c \
  "import platform, sys; print('%d.%d.%d' % sys.version_info[:3], platform.machine(), platform.libc_ver()[1])")
pyver=${probe%% *}; rest=${probe#* }; machine=${rest%% *}; glibc=${rest#* }
house=$("$python" "$build_py" --cache-dir "$cache" wheelhouse --artifact "$wheel" \
  --python-version "$pyver" --machine "$machine" --glibc "$glibc")
house_tar=$(printf '%s' "$house" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["archive"])')
tar -xf "$house_tar" -C "$work/ctx/wheels"

for c in "$@"; do
  docker build -q --build-arg "BASE_IMAGE=$base" --build-arg "COMPONENT=$c" \
    -t "$name:$key-$c" "$work/ctx" >/dev/null
done
docker rmi "$name:$key-rootfs" >/dev/null
# shellcheck disable=SC2086
docker save -o "$work/out/$key.tar" $refs
: > "$work/out/.complete"
rm -rf "$dir"
mv "$work/out" "$dir"

# Earlier archives (keep the newest two) and their images go.
ls -1dt "$cache"/image/*/ 2>/dev/null | tail -n +3 | while read -r old; do
  oldkey=$(basename "$old")
  docker images --format '{{.Repository}}:{{.Tag}}' "$name" | grep -F ":$oldkey-" | xargs -r docker rmi >/dev/null 2>&1 || true
  rm -rf "$old"
done
printf '{"key": "%s", "archive": "%s", "built": true}\n' "$key" "$archive"
