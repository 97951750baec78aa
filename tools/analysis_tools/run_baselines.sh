#!/usr/bin/env bash
# Joint vs single-task, MoE vs dense, on the bundled synthetic data (README, "Joint vs
# single-task"): trains and evaluates, for one seed,
#   single  - the three stock single-task models (configs/mod_squad/baselines/*-cls/det/seg),
#             each on its task alone for the iterations it gets in the joint run;
#   joint   - the joint demo (configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py);
#   dense   - the joint recipe with a dense shared ViT (baselines/dense-vit-demo_2k_...).
# Usage: bash tools/analysis_tools/run_baselines.sh [SEED] [RUN ...]   (default: 0, all runs)
# Each run's metrics are in WORK_DIR/<run>/<timestamp>/vis_data/scalars.json (the final
# validation), its wall time in WORK_DIR/times.txt. The single-task configs' iteration
# counts are those of seed 0; get_flops.py gives the parameters and active FLOPs.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${MOD_SQUAD_VENV:-$REPO/.venv}/bin/python"
SEED="${1:-0}"
shift || true
RUNS=("$@")
[ ${#RUNS[@]} -eq 0 ] && RUNS=(dense cls det seg joint)
WORK_DIR="${WORK_DIR:-work_dirs/baselines/seed$SEED}"
B=configs/mod_squad/baselines
declare -A CONFIG=(
    [cls]=$B/mod-squad-vit-demo_linear_617it_synthetic-cls.py
    [det]=$B/retinanet_mod-squad-vit-demo_fpn_649it_synthetic-det.py
    [seg]=$B/upernet_mod-squad-vit-demo_mln_734it_synthetic-seg.py
    [joint]=configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py
    [dense]=$B/dense-vit-demo_2k_synthetic-cls-det-seg.py
)
cd "$REPO"
[ -d data/synthetic ] || "$PY" tools/dataset_converters/make_synthetic.py --out data/synthetic
mkdir -p "$WORK_DIR"
for run in "${RUNS[@]}"; do
    start=$(date +%s)
    "$PY" tools/train.py "${CONFIG[$run]}" --work-dir "$WORK_DIR/$run" \
        --cfg-options randomness.seed="$SEED"
    echo "$run $(( $(date +%s) - start )) s" | tee -a "$WORK_DIR/times.txt"
done
