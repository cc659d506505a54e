#!/usr/bin/env bash
# Extract -> train -> search on the 40-photo sample catalogue shipped in examples/catalog.
# Run from the repository root after `pip install .`; writes to out/quickstart/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-out/quickstart}"
mkdir -p "$out"
varsitysrch extract "$here/catalog" "$out/features"
varsitysrch train "$out/features" --model "$out/model.vsm" --csv "$out/clusters.csv" -k 5
varsitysrch search "$here/query.jpg" --model "$out/model.vsm" --csv "$out/clusters.csv" -n 5
