#!/usr/bin/env bash
# Generates adapterd/v1/*_pb2*.py from protos/adapterd/v1/*.proto. The one command that makes
# generated code; the output is a build product (gitignored), never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
rm -f adapterd/v1/*_pb2*.py adapterd/v1/*_pb2*.pyi
"$python" -m grpc_tools.protoc -I protos \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/adapterd/v1/*.proto
