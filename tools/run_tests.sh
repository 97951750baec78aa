#!/usr/bin/env bash
# Set up (or check) the environment, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOD_SQUAD_VENV:-$REPO/.venv}"
bash "$REPO/tools/setup_env.sh"
cd "$REPO"
exec "$VENV/bin/python" -m pytest tests "$@"
