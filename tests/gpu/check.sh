#!/usr/bin/env bash
# The GPU path in one go: GPU-marked tests, 50 bf16 steps of the paper-size model, predict.
#
#   bash tests/gpu/check.sh           # on a GPU machine (planned for: one H200, 16 cores; < 8 min)
#   bash tests/gpu/check.sh --tiny    # the same script on CPU at tiny size (tests/test_gpu_check.py)
#
# Python: $PYTHON, else ./.venv/bin/python, else python3. Everything prints to stdout; the
# figures come last, in one block.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" tests/gpu/check.py "$@"
