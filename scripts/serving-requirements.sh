#!/usr/bin/env bash
# Write the serving image's Python requirements, pinned from uv.lock: only what the service
# imports (and their dependencies), never the training stack (scikit-learn, MLflow, Prefect).
#
# Usage: scripts/serving-requirements.sh [OUT]   (default: bento/requirements.txt)
# Run it after `uv lock` changes; the unit tests check that the file agrees with the lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/bento/requirements.txt}"
# The service's direct imports: bento/*.py and data_contracts/spec.py.
SERVING_PACKAGES=(bentoml onnxruntime numpy pyarrow pydantic pyyaml)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$ROOT"
uv export --frozen --no-hashes --no-dev --no-emit-project --no-header --quiet -o "$work/lock.txt"
printf '%s\n' "${SERVING_PACKAGES[@]}" >"$work/serving.in"
uv pip compile --quiet --no-header --no-annotate --python-version 3.11 \
    -c "$work/lock.txt" -o "$work/requirements.txt" "$work/serving.in"
{
    echo "# Serving image requirements, pinned from uv.lock by scripts/serving-requirements.sh."
    cat "$work/requirements.txt"
} >"$OUT"
echo "wrote $OUT ($(grep -c '==' "$OUT") pinned packages)" >&2
