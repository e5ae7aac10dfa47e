#!/usr/bin/env bash
# Set up a virtual environment (CPU build of torch first) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m ruff check src tests benchmarks  # the style rules of pyproject.toml
python -m pytest -q "$@"
