#!/usr/bin/env bash
# Create (or update) the mod_squad environment: a virtual environment with torch,
# mmengine, mmcv with compiled ops, mmdet, mmsegmentation, mmpretrain, the test tools
# and mod_squad itself (editable). Idempotent: a second run checks and returns.
#
# Usage: bash tools/setup_env.sh
#
# Environment variables:
#   MOD_SQUAD_VENV        virtual environment to create/use (default: <repo>/.venv)
#   MOD_SQUAD_CACHE       where built mmcv wheels are cached, keyed by Python, torch and
#                         ops kind (default: ${XDG_CACHE_HOME:-~/.cache}/mod_squad)
#   MOD_SQUAD_WHEELHOUSE  optional folder of prebuilt wheels (e.g. an mmcv 2.1.0 wheel
#                         built by this recipe); used instead of building when it has one
#   FORCE_CUDA=1          build mmcv's CUDA ops (GPU machines; needs nvcc)
#   PYTHON                interpreter for the venv (default: python3)
#   MAX_JOBS              parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOD_SQUAD_VENV:-$REPO/.venv}"
CACHE="${MOD_SQUAD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mod_squad}"
FORCE_CUDA="${FORCE_CUDA:-0}"
PINS="$REPO/requirements/env.txt"

log() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
pin() { grep -E "^$1==" "$PINS" || die "no pin for $1 in $PINS"; }

stamp_of() {
    cat "$PINS" "$REPO/requirements/build.txt" "$REPO/requirements/tests.txt" \
        "$REPO/setup.py" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16
    echo "FORCE_CUDA=$FORCE_CUDA"
}

check_stack() {
    (cd "$REPO" && "$VENV/bin/python" - <<'EOF'
import mod_squad, mmcv.ops, mmdet.models, mmseg.models, mmpretrain.models  # noqa
import mmcv._ext  # noqa: the compiled ops
from mmcv.ops import get_compiling_cuda_version
cuda = get_compiling_cuda_version()
print(f'mmcv ops: {"CUDA " + cuda if cuda != "not available" else "CPU only"}')
EOF
    )
}

STAMP_FILE="$VENV/.mod_squad_env"
if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$(stamp_of)" ]] \
        && ops="$(check_stack 2>/dev/null)"; then
    log "environment up to date: $VENV ($ops)"
    exit 0
fi

# 1. Virtual environment and build tools.
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV" || die "could not create $VENV"
fi
PY="$VENV/bin/python"
# pip warns about every find-links folder of the machine's config that is missing.
pip_install() {
    "$PY" -m pip install --disable-pip-version-check -q "$@" \
        2> >(grep -v '^WARNING: Location .* is ignored' >&2)
}
pip_install --upgrade pip
pip_install -r "$REPO/requirements/build.txt"

# 2. torch (mmcv compiles against it) and mmengine.
log "installing $(pin torch) $(pin torchvision) $(pin mmengine)"
pip_install "$(pin torch)" "$(pin torchvision)" "$(pin mmengine)"

# 3. mmcv with compiled ops, from a wheelhouse, the cache, or built from source.
MMCV_PIN="$(pin mmcv)"
MMCV_VERSION="${MMCV_PIN#mmcv==}"
if (cd / && "$PY" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '$MMCV_VERSION'") 2>/dev/null; then
    log "mmcv $MMCV_VERSION with compiled ops already installed"
else
    read -r PY_TAG TORCH_VERSION < <("$PY" -c \
        "import sys, torch; print(f'cp{sys.version_info.major}{sys.version_info.minor}', torch.__version__)")
    OPS_KIND=cpu
    if [[ "$FORCE_CUDA" == 1 ]] || "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        OPS_KIND=cuda
    fi
    KEY_DIR="$CACHE/mmcv-$MMCV_VERSION/$PY_TAG-torch${TORCH_VERSION}-$OPS_KIND"
    WHEEL=""
    if [[ -n "${MOD_SQUAD_WHEELHOUSE:-}" && "$OPS_KIND" == cpu ]]; then
        WHEEL="$(ls "$MOD_SQUAD_WHEELHOUSE"/mmcv-"$MMCV_VERSION"-"$PY_TAG"-*.whl 2>/dev/null | head -n1 || true)"
        [[ -n "$WHEEL" ]] && log "using prebuilt wheel from the wheelhouse: $WHEEL"
    fi
    if [[ -z "$WHEEL" ]]; then
        WHEEL="$(ls "$KEY_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
        [[ -n "$WHEEL" ]] && log "using cached wheel: $WHEEL"
    fi
    if [[ -z "$WHEEL" ]]; then
        log "building $MMCV_PIN with $OPS_KIND ops from source for $PY_TAG + torch $TORCH_VERSION" \
            "(about 10 minutes on 2 cores; cached in $KEY_DIR)"
        BUILD_DIR="$(mktemp -d)"
        trap 'rm -rf "$BUILD_DIR"' EXIT
        # Without build isolation: with it the metadata step fails on pkg_resources and
        # the build silently drops the compiled ops.
        "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
            "$MMCV_PIN" -d "$BUILD_DIR" || die "could not download the $MMCV_PIN sources"
        tar xzf "$BUILD_DIR"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD_DIR"
        SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
        # torch >= 2.10 headers need C++20.
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        mkdir -p "$KEY_DIR"
        (cd "$SRC" && FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$BUILD_DIR/wheel" .) \
            || die "building mmcv failed (see the compiler output above)"
        mv "$BUILD_DIR"/wheel/mmcv-*.whl "$KEY_DIR"/
        WHEEL="$(ls "$KEY_DIR"/mmcv-*.whl | head -n1)"
        log "built $WHEEL"
    fi
    pip_install --force-reinstall --no-deps "$WHEEL"
    (cd / && "$PY" -c "import mmcv._ext") \
        || die "mmcv was installed from $WHEEL but its compiled ops (mmcv._ext) do not import"
fi

# 4. The toolboxes, test tools and mod_squad itself.
log "installing $(pin mmdet) $(pin mmsegmentation) $(pin mmpretrain) and test tools"
pip_install "$MMCV_PIN" "$(pin mmdet)" "$(pin mmsegmentation)" "$(pin mmpretrain)" \
    "$(pin fairscale)" ftfy regex -r "$REPO/requirements/tests.txt"
pip_install --no-deps --no-build-isolation -e "$REPO"

ops="$(check_stack)" || die "the stack does not import; see the traceback above"
stamp_of > "$STAMP_FILE"
log "environment ready: $VENV ($ops)"
