#!/usr/bin/env bash
# Extract -> train -> search on the 40-photo sample catalogue shipped in examples/catalog,
# then the same search from Python with each hit's folder (its class) beside it.
# Run from the repository root after `pip install .`; writes to out/quickstart/ (or to $1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-out/quickstart}"
mkdir -p "$out"
echo "# 1. extract: embed the catalogue's photos"
varsitysrch extract "$here/catalog" "$out/features"
echo "# 2. train: cluster them (k=5)"
varsitysrch train "$out/features" --model "$out/model.vsm" --csv "$out/clusters.csv" -k 5
echo "# 3. search: the 5 photos most like query.jpg (a t-shirt)"
varsitysrch search "$here/query.jpg" --model "$out/model.vsm" --csv "$out/clusters.csv" -n 5
echo "# 4. the same search from Python, with each hit's folder (its class)"
python "$here/quickstart.py" "$out"
