#!/usr/bin/env bash
# Reproduces flare_seg/saved_models/ (the models shipped in the package): phantoms -> localization -> segmentation -> export -> evaluation on
# phantoms of an unseen seed -> export again with the evaluation recorded in the manifest.
# With real FLARE21 data, point DATA at it and skip the synth steps.
#
# The shipped weights came from this recipe run in stages on a 2-core CPU (the localization net
# 500 steps on the first phantom set, then resumed on both sets to step 2500; the segmentation net
# first without, then resumed with, contrast compression and the second phantom set, to step 6600,
# then resumed to steps 10000, 13000 and 18000, and to 20500 with the pancreas weighted 3:1 as a
# patch centre); run straight through, it gives models of the same kind.
set -euo pipefail
WORK="${WORK:-work}"
DATA="${DATA:-${WORK}/train}"
TEST="${TEST:-${WORK}/test}"
if [ ! -d "${DATA}/TrainingImg" ]; then
  flare-seg synth "${WORK}/phantoms_1000" --cases 40 --seed 1000 --workers 2
  flare-seg synth "${WORK}/phantoms_1001" --cases 24 --seed 1001 --workers 2
  mkdir -p "${DATA}/TrainingImg" "${DATA}/TrainingMask"
  for set in phantoms_1000 phantoms_1001; do
    for sub in TrainingImg TrainingMask; do
      ln -sf "$(cd "${WORK}/${set}/${sub}" && pwd)"/*.nii.gz "${DATA}/${sub}/"
    done
  done
  cp "${WORK}/phantoms_1000/dataset.json" "${DATA}/dataset.json"
fi
flare-seg train-localization "${DATA}" --run-dir "${WORK}/runs/localization" --config configs/localization.yaml --cache-dir "${WORK}/cache"
flare-seg train-segmentation "${DATA}" --run-dir "${WORK}/runs/segmentation" --config configs/segmentation.yaml --cache-dir "${WORK}/cache"
flare-seg export --localization-run "${WORK}/runs/localization" --segmentation-run "${WORK}/runs/segmentation" --out flare_seg/saved_models --force
if [ ! -d "${TEST}/TrainingImg" ]; then
  flare-seg synth "${TEST}" --cases 20 --seed 3000 --workers 2
fi
mkdir -p "${WORK}/test_inputs"
cp -f "${TEST}"/TrainingImg/*_0000.nii.gz "${WORK}/test_inputs/"
flare-seg predict "${WORK}/test_inputs" "${WORK}/test_predictions"
flare-seg evaluate "${WORK}/test_predictions" "${TEST}/TrainingMask"
flare-seg export --localization-run "${WORK}/runs/localization" --segmentation-run "${WORK}/runs/segmentation" \
  --out flare_seg/saved_models --force --evaluation "${WORK}/test_predictions/evaluation.json" \
  --notes "Trained on synthetic phantoms (flare-seg synth --seed 1000, 40 cases, and --seed 1001, 24 cases), not on FLARE21 data; evaluated through the full two-stage pipeline on 20 unseen phantoms (seed 3000)."
