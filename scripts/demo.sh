#!/usr/bin/env bash
# Set up (idempotent) and run the main job: `layertrace demo` on the embedded real data.
# Extra arguments go to `layertrace demo` (e.g. --out DIR, --preset quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
exec .venv/bin/layertrace demo "$@"
