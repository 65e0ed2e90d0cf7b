#!/usr/bin/env bash
# Regenerate infermesh/client/generated/ from proto/*.proto with the pinned grpcio-tools.
#   scripts/gen_proto.sh          rewrite the generated files
#   scripts/gen_proto.sh --check  fail (exit 1) when the committed files differ
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=infermesh/client/generated
want="$(grep -oE 'grpcio-tools==[0-9.]+' pyproject.toml | cut -d= -f3)"
have="$("$PY" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
if [[ "$want" != "$have" ]]; then
    echo "gen_proto: grpcio-tools $have installed, pyproject pins $want; run scripts/setup.sh" >&2
    exit 2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m grpc_tools.protoc -I"$OUT=proto" --python_out="$tmp" --pyi_out="$tmp" \
    --grpc_python_out="$tmp" "$OUT"/coordinator.proto
if [[ "${1:-}" == "--check" ]]; then
    if ! diff -ru "$tmp/$OUT" "$OUT" --exclude=__init__.py --exclude=__pycache__; then
        echo "gen_proto: $OUT is out of date with proto/; run scripts/gen_proto.sh and commit" >&2
        exit 1
    fi
    echo "gen_proto: generated code matches proto/"
else
    cp "$tmp/$OUT"/*.py "$tmp/$OUT"/*.pyi "$OUT"/
    echo "gen_proto: wrote $(ls "$tmp/$OUT" | tr '\n' ' ')"
fi
