#!/usr/bin/env bash
# Reproduces saved_models/: phantoms -> localization -> segmentation -> export -> evaluation on
# phantoms of an unseen seed -> export again with the evaluation recorded in the manifest.
# With real FLARE21 data, point DATA at it and skip the synth step.
set -euo pipefail
WORK="${WORK:-work}"
DATA="${DATA:-${WORK}/train}"
TEST="${TEST:-${WORK}/test}"
if [ ! -d "${DATA}/TrainingImg" ]; then
  flare-seg synth "${DATA}" --cases 40 --seed 1000 --workers 2
fi
flare-seg train-localization "${DATA}" --run-dir "${WORK}/runs/localization" --config configs/localization.yaml
flare-seg train-segmentation "${DATA}" --run-dir "${WORK}/runs/segmentation" --config configs/segmentation.yaml
flare-seg export --localization-run "${WORK}/runs/localization" --segmentation-run "${WORK}/runs/segmentation" --out saved_models
if [ ! -d "${TEST}/TrainingImg" ]; then
  flare-seg synth "${TEST}" --cases 10 --seed 2000 --workers 2
fi
mkdir -p "${WORK}/test_inputs"
cp -f "${TEST}"/TrainingImg/*_0000.nii.gz "${WORK}/test_inputs/"
flare-seg predict "${WORK}/test_inputs" "${WORK}/test_predictions"
flare-seg evaluate "${WORK}/test_predictions" "${TEST}/TrainingMask"
flare-seg export --localization-run "${WORK}/runs/localization" --segmentation-run "${WORK}/runs/segmentation" \
  --out saved_models --evaluation "${WORK}/test_predictions/evaluation.json" \
  --notes "Trained on synthetic phantoms (flare-seg synth --seed 1000), not on FLARE21 data; evaluation on unseen phantoms (seed 2000)."
