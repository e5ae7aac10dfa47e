#!/usr/bin/env bash
# Create .venv and install mucosa with its test tools. torch's CPU build is installed first, so a CPU-only
# machine does not pull a multi-GB CUDA build; pyproject keeps a plain torch>=2.4 range for other machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# On this project's machines torch==2.13.0 resolves to a CPU wheel kept on disk. Elsewhere, point
# TORCH_INDEX_URL at PyTorch's CPU wheel index to get the CPU build.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
python -m pip install -q -e ".[test]"
# axe-core, the accessibility engine the viewer's browser tests inject (package.json, package-lock.json):
# installed where npm is (CI's .ci/run installs npm first); without it those checks skip outside CI.
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
fi
