#!/usr/bin/env bash
# The downstream table (README, "Downstream: which part to fine-tune"): fine-tunes the
# joint demo checkpoint on the downstream set (new classes and textures) in every mode
# of configs/mod_squad/downstream/, with the same iterations and schedule, for each
# seed, then writes the table.
#   full        - every parameter;
#   routers     - the 'cls' routers and task embedding;
#   top-experts - those + the 4 experts per layer the old 'cls' task uses most;
#   continual   - a new task: its router, task embedding and 2 new experts per layer;
#   adapter     - VMT-Adapters (r = 16) only;
#   extracted   - every parameter of the cls model extracted with 4 experts per layer.
# The new head trains in every mode.
# Usage: bash tools/analysis_tools/run_downstream.sh [SEED ...]   (default: 0)
# Makes data/synthetic and data/synthetic_downstream if missing, trains the demo
# (work_dirs/demo/iter_2000.pth) if missing, extracts its cls model, then trains
# WORK_DIR/seed<S>/<mode> for each seed and mode (wall times in WORK_DIR/times.txt)
# and writes WORK_DIR/downstream.md and .json
# (tools/analysis_tools/downstream_table.py).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${MOD_SQUAD_VENV:-$REPO/.venv}/bin/python"
SEEDS=("$@")
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=(0)
WORK_DIR="${WORK_DIR:-work_dirs/downstream}"
DEMO_CONFIG=configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py
DEMO=work_dirs/demo/iter_2000.pth
EXTRACTED="$WORK_DIR/extract/cls_extracted.pth"
D=configs/mod_squad/downstream
MODES=(full routers top-experts continual adapter extracted)
declare -A CONFIG=(
    [full]=$D/mod-squad-vit-demo_full_500it_synthetic-downstream.py
    [routers]=$D/mod-squad-vit-demo_routers_500it_synthetic-downstream.py
    [top-experts]=$D/mod-squad-vit-demo_top-experts-4_500it_synthetic-downstream.py
    [continual]=$D/mod-squad-vit-demo_continual-m2_500it_synthetic-downstream.py
    [adapter]=$D/mod-squad-vit-demo_vmt-adapter-r16_500it_synthetic-downstream.py
    [extracted]=$D/mod-squad-vit-demo-extracted-keep4_full_500it_synthetic-downstream.py
)
cd "$REPO"
[ -d data/synthetic ] || "$PY" tools/dataset_converters/make_synthetic.py \
    --out data/synthetic
[ -d data/synthetic_downstream ] || "$PY" tools/dataset_converters/make_synthetic.py \
    --dataset downstream --out data/synthetic_downstream
[ -f "$DEMO" ] || "$PY" tools/train.py "$DEMO_CONFIG" --work-dir work_dirs/demo
[ -f "$EXTRACTED" ] || "$PY" tools/model_converters/extract_task_model.py \
    "$DEMO_CONFIG" "$DEMO" --task cls --keep 4 --out-dir "$(dirname "$EXTRACTED")"
for seed in "${SEEDS[@]}"; do
    for mode in "${MODES[@]}"; do
        options=(randomness.seed="$seed")
        [ "$mode" = extracted ] && options+=(load_from="$EXTRACTED")
        start=$(date +%s)
        "$PY" tools/train.py "${CONFIG[$mode]}" --work-dir "$WORK_DIR/seed$seed/$mode" \
            --cfg-options "${options[@]}"
        echo "seed$seed $mode $(( $(date +%s) - start )) s" \
            | tee -a "$WORK_DIR/times.txt"
    done
done
"$PY" tools/analysis_tools/downstream_table.py "$WORK_DIR" --modes "${MODES[@]}"
