#!/usr/bin/env bash
# The main job: set up (or check) the environment, generate the bundled synthetic
# data, evaluate the untrained demo model (the baseline), train the demo config jointly
# on classification + detection + segmentation (CPU), then evaluate the final
# checkpoint on all three tasks.
# Extra arguments go to tools/train.py (e.g. --cfg-options train_cfg.max_iters=200).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOD_SQUAD_VENV:-$REPO/.venv}"
CONFIG=configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py
WORK_DIR="${WORK_DIR:-work_dirs/demo}"

bash "$REPO/tools/setup_env.sh"
cd "$REPO"
PY="$VENV/bin/python"
"$PY" tools/dataset_converters/make_synthetic.py --out data/synthetic
"$PY" tools/test.py "$CONFIG" --untrained --work-dir "$WORK_DIR/untrained"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
"$PY" tools/test.py "$CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR"
