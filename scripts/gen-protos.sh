#!/usr/bin/env bash
# Regenerate the Python code for every protobuf definition in control/api/ with grpcio-tools.
# Before: `make setup` made .venv (grpcio-tools is in the dev extra). After: control/api/*_pb2.py
# and *_pb2_grpc.py are rewritten (commit them) and checked to import with the installed
# protobuf runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
shopt -s nullglob
protos=(control/api/*.proto)
if [ ${#protos[@]} = 0 ]; then echo "gen-protos: no control/api/*.proto" >&2; exit 1; fi
# -I . makes the generated modules import each other as `control.api.<name>_pb2`.
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. "${protos[@]}"
for p in "${protos[@]}"; do
  mod=$(echo "${p%.proto}" | tr / .)
  "$PY" -c "import ${mod}_pb2, ${mod}_pb2_grpc" || { echo "gen-protos: ${mod} does not import" >&2; exit 1; }
done
echo "gen-protos: generated ${#protos[@]} file(s): ${protos[*]}"
