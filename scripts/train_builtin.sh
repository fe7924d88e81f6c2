#!/usr/bin/env bash
# Train the built-in model on generated scenes (see scripts/train_builtin.py for the steps).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python scripts/train_builtin.py --out "${1:-runs/builtin}" "${@:2}"
