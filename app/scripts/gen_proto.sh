#!/usr/bin/env bash
# Regenerate the gRPC/protobuf modules from proto/clusterkit/v1/jobs.proto.
#   usage: (cd app && scripts/gen_proto.sh)   # needs grpcio-tools (pip install -e '.[dev]')
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/clusterkit_app/pb
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python}" -m grpc_tools.protoc -I proto --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  clusterkit/v1/jobs.proto
# protoc emits absolute imports ("from clusterkit.v1 import jobs_pb2"): make them package-relative.
sed -i 's/^from clusterkit\.v1 import jobs_pb2/from clusterkit_app.pb import jobs_pb2/' \
  "$tmp/clusterkit/v1/jobs_pb2_grpc.py"
cp "$tmp/clusterkit/v1/jobs_pb2.py" "$tmp/clusterkit/v1/jobs_pb2.pyi" \
  "$tmp/clusterkit/v1/jobs_pb2_grpc.py" "$out/"
echo "generated: $out/jobs_pb2.py $out/jobs_pb2.pyi $out/jobs_pb2_grpc.py"
