#!/usr/bin/env bash
# Challenge convention: every <case>_0000.nii.gz in IN becomes <case>.nii.gz in OUT.
# Usage: ./predict.sh [IN] [OUT]   (defaults: /workspace/inputs -> /workspace/outputs)
# Exit status: 0 when every case succeeded, 1 when some failed, 2 on a usage or setup error.
set -euo pipefail
IN="${1:-/workspace/inputs}"
OUT="${2:-/workspace/outputs}"
# Models: $FLARE_SEG_MODELS_DIR if set, else those installed with the package.
if command -v flare-seg >/dev/null 2>&1; then
  exec flare-seg predict --challenge-layout "${IN}" "${OUT}"
fi
exec python3 -m flare_seg predict --challenge-layout "${IN}" "${OUT}"
