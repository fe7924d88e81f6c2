#!/usr/bin/env bash
# Train the built-in model on generated scenes (see projects/builtin/train_builtin.py for the steps).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python projects/builtin/train_builtin.py --out "${1:-runs/builtin}" "${@:2}"
