#!/usr/bin/env bash
# Reproduces flare_seg/saved_models/ (the models shipped in the package) in two stages, both on
# synthetic phantoms only (no real CT is used):
#
# 1. base models: phantoms -> localization -> segmentation -> export to ${BASE}. The base weights
#    (model version 20261123-172730) came from this stage run in steps on a 2-core CPU (the
#    localization net 500 steps on the first phantom set, then resumed on both sets to step 2500;
#    the segmentation net first without, then resumed with, contrast compression and the second
#    phantom set, to step 6600, then resumed to steps 10000, 13000 and 18000, and to 20500 with
#    the pancreas weighted 3:1 as a patch centre); run straight through, it gives models of the
#    same kind. Set BASE to a copy of those models to skip it.
# 2. real-CT training of the segmentation network (FINETUNE=0 skips it and ships the base models),
#    on phantoms only, in fifteen runs:
#    a. from the base weights, with appearance randomization (configs/segmentation_finetune.yaml)
#       on the first phantom set plus a set with the bony pelvis and wider soft-tissue intensities
#       (synth --iliac-wings --hu-spread-hu 15);
#    b. from a (configs/segmentation_variety.yaml), with three more sets: organ size, shape and
#       bone density beyond the textbook (--anatomy-variety), the same with kidney cysts and liver
#       lesions (--lesions), and with the arms down beside the trunk as well (--arms);
#    c. from b (configs/segmentation_lateral.yaml), with a sixth set whose spleen often lies further
#       out to the left flank (--lateral-spleen), as real spleens do;
#    d. from c (configs/segmentation_appearance.yaml), with wider appearance randomization (coarser
#       acquisitions resampled to the network's grid, larger per-organ HU offsets, a stronger
#       soft-tissue curve), on the first set and the --lateral-spleen set;
#    e. from d (configs/segmentation_pancreas.yaml), with the same randomization, on five sets, the
#       last of which often has a lobulated, fat-infiltrated, thin pancreas (--fatty-pancreas, with
#       every other option);
#    f. from e (configs/segmentation_intensity.yaml), on the same sets, with the organs' HU
#       randomized further (per-organ offsets of SD 25 HU, a soft-tissue curve of up to 40 HU);
#    g. from f (configs/segmentation_intensity_strong.yaml), further still (35 and 50 HU);
#    h. from g (configs/segmentation_organ_layout.yaml), with g's randomization, on the first set,
#       the --fatty-pancreas set and one that also varies the organs' layout (--organ-layout: a
#       larger left liver lobe, the liver further forward, higher kidneys turned and leaning to the
#       front, a larger and higher spleen);
#    i. from c (configs/segmentation_organ_layout_mild.yaml), with c's randomization, on six sets
#       (those of e and the --organ-layout set);
#    j. from i (configs/segmentation_organ_layout_strong.yaml), on the same sets, with g's
#       randomization;
#    k. from j (configs/segmentation_organ_layout_long.yaml), the same for another 3000 steps (a
#       warm restart with its own sampling seed);
#    l. from j (configs/segmentation_collapsed_stomach.yaml), as k with a seventh set that often has
#       an empty stomach of enhancing rugal folds (--collapsed-stomach);
#    m. from j (configs/segmentation_liver_masses.yaml), as k with a seventh set in which every case
#       has one large liver mass (--liver-masses 1);
#    n. from i (configs/segmentation_liver_masses_mild.yaml), on m's sets with i's randomization;
#    o. from k (configs/segmentation_liver_masses_long.yaml), on m's sets with k's randomization;
#    p. from the base network (configs/segmentation_fov_base.yaml) and q. from i
#       (configs/segmentation_fov_mild.yaml), 2000 steps each on i's six sets with 40% of the patches
#       cut to a shorter scan whose face cuts the organs (the patch ends at the face, as the input
#       does at inference; the box centre is the one inference computes for that scan);
#    r. from k (configs/segmentation_fov_strong.yaml), the same with k's randomization;
#    s. from the base network (configs/segmentation_fov_base_mild.yaml), as p with i's
#       randomization;
#    t. from q (configs/segmentation_low_left_lobe.yaml), 2000 steps on the first set, the
#       --fatty-pancreas and --organ-layout sets and one in which 60% of the cases have a lower left
#       liver lobe (--low-left-lobe with every other option);
#    u. from r (configs/segmentation_low_left_lobe_strong.yaml), the same on t's sets;
#    t2. from t (configs/segmentation_low_left_lobe_long.yaml), 2000 more steps;
#    v. from t (configs/segmentation_liver_fissures.yaml), 2000 steps on t's sets and one in which
#       most livers have fat-filled fissures (--liver-fissures with every other option);
#    w. from r (configs/segmentation_liver_fissures_strong.yaml), the same with r's randomization;
#    x. from t (configs/segmentation_centre_jitter.yaml), as v with the position channels' box
#       centre jittered by 30 mm instead of 10;
#    y. from t (configs/segmentation_spatial_sum.yaml), as t2 with the spatial configuration term
#       added to the local scores in log space (sc_combine: sum) instead of multiplied, t's
#       saturated product term folded into its local scores and the spatial branch starting at zero;
#    z. from r (configs/segmentation_spatial_sum_strong.yaml), as u with the sum, folded the same way;
#    aa. from t (configs/segmentation_gallbladder.yaml), 2000 steps on t's sets and one in which the
#       gallbladder lies in its fossa, partly inside the liver's outline (--gallbladder-fossa with
#       every other option); ab. from r (configs/segmentation_gallbladder_strong.yaml), the same with
#       r's randomization; aa2. from aa (configs/segmentation_gallbladder_long.yaml), 2000 more steps
#       on aa's sets and a second --gallbladder-fossa set; aa3. from aa2
#       (configs/segmentation_gallbladder_longer.yaml), 2000 more steps on aa2's sets; ac. from r
#       (configs/segmentation_gallbladder_strong_long.yaml) and ad. from p
#       (configs/segmentation_gallbladder_base.yaml), 4000 steps each on aa2's sets with r's and p's
#       randomization; ae. from ac (configs/segmentation_gallbladder_settle.yaml), 2000 more steps
#       with aa2's milder randomization; af. from aa2 (configs/segmentation_gallbladder_robust.yaml),
#       2000 more steps on its sets with r's randomization; ag., ah. and ai. from aa2
#       (configs/segmentation_thin_left_lobe.yaml, configs/segmentation_pancreas_lipomatosis.yaml,
#       configs/segmentation_pancreas_forward.yaml), 2000 steps on aa2's sets and one more with
#       every option, --low-left-lobe and --gallbladder-fossa: with --thin-left-lobe (seed 1750),
#       --pancreas-lipomatosis (seed 1760) or --pancreas-forward (seed 1770); aj. ai repeated with
#       another sampling seed (configs/segmentation_pancreas_forward_repeat.yaml), to size the
#       run-to-run spread; ak. aa3 widened to twice its filters without changing its outputs
#       (configs/segmentation_wide.yaml, flare_seg/training/widen.py), 2500 steps on its sets; al.
#       aa3, 2000 more steps with correlated noise of up to 40 HU (configs/segmentation_noise.yaml);
#       am. aa2, 2000 steps on its sets and a flatter pancreas further to the front (--pancreas-forward
#       --flat-pancreas, seed 1790; configs/segmentation_flat_pancreas.yaml); an. aa2, 2000 steps on
#       its sets and two with the stomach in front of the pancreas (--stomach-in-front, seeds 1791 and
#       1792; configs/segmentation_stomach.yaml); an2. the same on stomach-in-front sets only (1791
#       to 1793; configs/segmentation_stomach_only.yaml);
#    and the localization network, from its variety stage (checkpoints/realct_variety/localization),
#    2000 steps on the same sets with half the samples cut to a shorter scan
#    (configs/localization_fov.yaml). With CANDIDATES=1 also lp and lp2: the field-of-view
#    localization network fine-tuned on aa2's sets and two sets with the lesser pelvis and the hips
#    (--true-pelvis, seeds 1800 and 1801), 1500 steps (configs/localization_pelvis.yaml) or 1000 at
#    a third of the learning rate (configs/localization_pelvis_mild.yaml); measured, not shipped.
#    The shipped segmentation network is the mean of aa2, aa3 and r (export with three
#    --segmentation-run; q, t and aa are the steps that lead to aa2; until 20261207-025541 it was p,
#    aa2 and r); the localization network is the field-of-view one (weights of it, p and q
#    in checkpoints/realct_fov/, of r, s, t, u and t2 in checkpoints/realct_fov2/segmentation_{strong,
#    base_mild,low_left_lobe,low_left_lobe_strong,low_left_lobe_long}: copy them to
#    ${WORK}/runs/segmentation_fov_strong, _fov_base_mild, _low_left_lobe, _low_left_lobe_strong and
#    _low_left_lobe_long). d to h, l to o, p, s, u, t2, v to z, ab and ac to an2 are not part of it and run only with CANDIDATES=1 (the weights of v, w and x: checkpoints/realct_fov3/segmentation_{liver_fissures,liver_fissures_strong,centre_jitter}; of y and z: checkpoints/realct_fov4/segmentation_{spatial_sum,spatial_sum_strong}; of ab and aa3: checkpoints/realct_fov5/segmentation_{gallbladder_strong,gallbladder_longer}; of ac to af: checkpoints/realct_fov6/segmentation_{gallbladder_strong_long,gallbladder_base,gallbladder_settle,gallbladder_robust}; of ag, ai and aj: checkpoints/realct_fov7/segmentation_{thin_left_lobe,pancreas_forward,pancreas_forward_repeat}; ah's and ak's to an2's were not kept). Fine-tuning the localization net the same way
#    (configs/localization_{finetune,variety}.yaml, weights in checkpoints/realct_finetune/ and
#    checkpoints/realct_variety/) cut organs on the real scans, so the recipe does not run it; nor
#    configs/segmentation_layout.yaml (weights in checkpoints/realct_layout/), whose network, alone
#    or as a third member, took less of the real CT's spleen. The weights of a to o are in
#    checkpoints/realct_finetune/, checkpoints/realct_variety/, checkpoints/realct_lateral/, checkpoints/realct_appearance/,
#    checkpoints/realct_pancreas/, checkpoints/realct_intensity/,
#    checkpoints/realct_intensity_strong/, checkpoints/realct_organ_layout/,
#    checkpoints/realct_organ_layout_mild/, checkpoints/realct_organ_layout_strong/,
#    checkpoints/realct_organ_layout_long/, checkpoints/realct_collapsed_stomach/,
#    checkpoints/realct_liver_masses/, checkpoints/realct_liver_masses_mild/ and
#    checkpoints/realct_liver_masses_long/ (run folders: copy each one's segmentation/ to
#    ${WORK}/runs/segmentation_<name> as named below and the runs resume as done, or export them).
# Then both are evaluated on phantoms of an unseen seed and on the real development CT (if REAL_CT
# holds it; measured only, never trained on, and a regression gate: a candidate is not shipped if
# it lowers the mean Dice of liver, kidneys and spleen there or any one of them by more than 0.02),
# and exported again with both figures in the manifest.
#
# With real FLARE21 data, point DATA (and FT_DATA) at it and skip the synth steps.
set -euo pipefail
WORK="${WORK:-work}"
DATA="${DATA:-${WORK}/train}"
FT_DATA="${FT_DATA:-${WORK}/train_finetune}"
TEST="${TEST:-${WORK}/test}"
BASE="${BASE:-${WORK}/base_models}"

link_sets() {  # link_sets OUT SET...: one FLARE21-layout folder of symbolic links to phantom sets
  local out="$1"
  shift
  mkdir -p "${out}/TrainingImg" "${out}/TrainingMask"
  for set in "$@"; do
    for sub in TrainingImg TrainingMask; do
      ln -sf "$(cd "${WORK}/${set}/${sub}" && pwd)"/*.nii.gz "${out}/${sub}/"
    done
  done
  # one dataset.json describing every set (recorded in the manifest as the training data)
  python3 - "${out}/dataset.json" "${@/#/${WORK}/}" <<'PY'
import json, sys
sets = [json.load(open(f"{d}/dataset.json")) for d in sys.argv[2:]]
merged = {"generator": sets[0]["generator"], "seeds": [s["seed"] for s in sets],
          "options_by_seed": {str(s["seed"]): s["options"] for s in sets}, "labels": sets[0]["labels"],
          "case_seeds": {k: v for s in sets for k, v in s["case_seeds"].items()},
          "case_info": {k: v for s in sets for k, v in s["case_info"].items()}}
json.dump(merged, open(sys.argv[1], "w"), indent=2)
PY
}

# --- stage 1: base models
if [ ! -d "${BASE}/localization" ]; then
  if [ ! -d "${DATA}/TrainingImg" ]; then
    flare-seg synth "${WORK}/phantoms_1000" --cases 40 --seed 1000 --workers 2
    flare-seg synth "${WORK}/phantoms_1001" --cases 24 --seed 1001 --workers 2
    link_sets "${DATA}" phantoms_1000 phantoms_1001
  fi
  flare-seg train-localization "${DATA}" --run-dir "${WORK}/runs/localization" --config configs/localization.yaml --cache-dir "${WORK}/cache"
  flare-seg train-segmentation "${DATA}" --run-dir "${WORK}/runs/segmentation" --config configs/segmentation.yaml --cache-dir "${WORK}/cache"
  flare-seg export --localization-run "${WORK}/runs/localization" --segmentation-run "${WORK}/runs/segmentation" --out "${BASE}" --force
fi

# --- stage 2: real-CT training of the segmentation network (FINETUNE=0 skips it)
VARIETY_DATA="${VARIETY_DATA:-${WORK}/train_variety}"
LATERAL_DATA="${LATERAL_DATA:-${WORK}/train_lateral}"
APPEARANCE_DATA="${APPEARANCE_DATA:-${WORK}/train_appearance}"
PANCREAS_DATA="${PANCREAS_DATA:-${WORK}/train_pancreas}"
LOC_RUN="${WORK}/runs/localization"
SEG_RUNS=(--segmentation-run "${WORK}/runs/segmentation")
if [ "${FINETUNE:-1}" = 1 ]; then
  if [ ! -d "${FT_DATA}/TrainingImg" ]; then
    [ -d "${WORK}/phantoms_1000/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1000" --cases 40 --seed 1000 --workers 2
    flare-seg synth "${WORK}/phantoms_1100" --cases 40 --seed 1100 --iliac-wings --hu-spread-hu 15 --workers 2
    link_sets "${FT_DATA}" phantoms_1000 phantoms_1100
  fi
  if [ ! -d "${VARIETY_DATA}/TrainingImg" ]; then
    flare-seg synth "${WORK}/phantoms_1200" --cases 48 --seed 1200 --iliac-wings --hu-spread-hu 15 --anatomy-variety --workers 2
    flare-seg synth "${WORK}/phantoms_1300" --cases 48 --seed 1300 --iliac-wings --hu-spread-hu 15 --anatomy-variety --lesions --workers 2
    flare-seg synth "${WORK}/phantoms_1400" --cases 48 --seed 1400 --iliac-wings --hu-spread-hu 15 --anatomy-variety --lesions --arms --workers 2
    link_sets "${VARIETY_DATA}" phantoms_1000 phantoms_1100 phantoms_1200 phantoms_1300 phantoms_1400
  fi
  if [ ! -d "${LATERAL_DATA}/TrainingImg" ]; then
    flare-seg synth "${WORK}/phantoms_1500" --cases 48 --seed 1500 --iliac-wings --hu-spread-hu 15 --anatomy-variety --lesions --lateral-spleen --workers 2
    link_sets "${LATERAL_DATA}" phantoms_1000 phantoms_1100 phantoms_1200 phantoms_1300 phantoms_1400 phantoms_1500
  fi
  if [ ! -d "${APPEARANCE_DATA}/TrainingImg" ]; then
    link_sets "${APPEARANCE_DATA}" phantoms_1000 phantoms_1500
  fi
  if [ ! -d "${PANCREAS_DATA}/TrainingImg" ]; then
    flare-seg synth "${WORK}/phantoms_1600" --cases 48 --seed 1600 --iliac-wings --hu-spread-hu 15 --anatomy-variety --lesions --arms --lateral-spleen --fatty-pancreas --workers 2
    link_sets "${PANCREAS_DATA}" phantoms_1000 phantoms_1300 phantoms_1400 phantoms_1500 phantoms_1600
  fi
  # the --organ-layout set and the later ones take every generator option so far; i to o train on
  # the six sets of ORGAN_LAYOUT_SETS (plus one more for l to o)
  EVERY_OPTION=(--iliac-wings --hu-spread-hu 15 --anatomy-variety --lesions --arms --lateral-spleen --fatty-pancreas --organ-layout)
  ORGAN_LAYOUT_SETS=(phantoms_1000 phantoms_1300 phantoms_1400 phantoms_1500 phantoms_1600 phantoms_1700)
  ORGAN_LAYOUT_DATA="${ORGAN_LAYOUT_DATA:-${WORK}/train_organ_layout}"
  ORGAN_LAYOUT_ALL_DATA="${ORGAN_LAYOUT_ALL_DATA:-${WORK}/train_organ_layout_all}"
  if [ ! -d "${ORGAN_LAYOUT_DATA}/TrainingImg" ] || [ ! -d "${ORGAN_LAYOUT_ALL_DATA}/TrainingImg" ]; then
    [ -d "${WORK}/phantoms_1700/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1700" --cases 48 --seed 1700 \
      "${EVERY_OPTION[@]}" --workers 2
    link_sets "${ORGAN_LAYOUT_DATA}" phantoms_1000 phantoms_1600 phantoms_1700
    link_sets "${ORGAN_LAYOUT_ALL_DATA}" "${ORGAN_LAYOUT_SETS[@]}"
  fi
  # finetune DATA NAME FROM: run ${WORK}/runs/segmentation_NAME with configs/segmentation_NAME.yaml,
  # starting from the network or run FROM
  finetune() {
    flare-seg train-segmentation "$1" --run-dir "${WORK}/runs/segmentation_$2" \
      --config "configs/segmentation_$2.yaml" --init-from "$3" --cache-dir "${WORK}/cache"
  }
  # a (its run folder may be a copy of checkpoints/realct_finetune/segmentation: it resumes as done)
  finetune "${FT_DATA}" finetune "${BASE}/segmentation"
  finetune "${VARIETY_DATA}" variety "${WORK}/runs/segmentation_finetune"  # b
  finetune "${LATERAL_DATA}" lateral "${WORK}/runs/segmentation_variety"  # c
  finetune "${ORGAN_LAYOUT_ALL_DATA}" organ_layout_mild "${WORK}/runs/segmentation_lateral"  # i
  finetune "${ORGAN_LAYOUT_ALL_DATA}" organ_layout_strong "${WORK}/runs/segmentation_organ_layout_mild"  # j
  finetune "${ORGAN_LAYOUT_ALL_DATA}" organ_layout_long "${WORK}/runs/segmentation_organ_layout_strong"  # k
  # d to h and l to o are measured candidates that the shipped network does not use (CANDIDATES=1 runs them)
  if [ "${CANDIDATES:-0}" = 1 ]; then
    finetune "${APPEARANCE_DATA}" appearance "${WORK}/runs/segmentation_lateral"  # d
    finetune "${PANCREAS_DATA}" pancreas "${WORK}/runs/segmentation_appearance"  # e
    finetune "${PANCREAS_DATA}" intensity "${WORK}/runs/segmentation_pancreas"  # f
    finetune "${PANCREAS_DATA}" intensity_strong "${WORK}/runs/segmentation_intensity"  # g
    finetune "${ORGAN_LAYOUT_DATA}" organ_layout "${WORK}/runs/segmentation_intensity_strong"  # h
    STOMACH_DATA="${STOMACH_DATA:-${WORK}/train_collapsed_stomach}"
    if [ ! -d "${STOMACH_DATA}/TrainingImg" ]; then
      [ -d "${WORK}/phantoms_1800/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1800" --cases 48 --seed 1800 \
        "${EVERY_OPTION[@]}" --collapsed-stomach --workers 2
      link_sets "${STOMACH_DATA}" "${ORGAN_LAYOUT_SETS[@]}" phantoms_1800
    fi
    finetune "${STOMACH_DATA}" collapsed_stomach "${WORK}/runs/segmentation_organ_layout_strong"  # l
    MASS_DATA="${MASS_DATA:-${WORK}/train_liver_masses}"
    if [ ! -d "${MASS_DATA}/TrainingImg" ]; then
      [ -d "${WORK}/phantoms_1910/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1910" --cases 48 --seed 1910 \
        "${EVERY_OPTION[@]}" --liver-masses 1 --workers 2
      link_sets "${MASS_DATA}" "${ORGAN_LAYOUT_SETS[@]}" phantoms_1910
    fi
    finetune "${MASS_DATA}" liver_masses "${WORK}/runs/segmentation_organ_layout_strong"  # m
    finetune "${MASS_DATA}" liver_masses_mild "${WORK}/runs/segmentation_organ_layout_mild"  # n
    finetune "${MASS_DATA}" liver_masses_long "${WORK}/runs/segmentation_organ_layout_long"  # o
  fi
  finetune "${ORGAN_LAYOUT_ALL_DATA}" fov_mild "${WORK}/runs/segmentation_organ_layout_mild"  # q
  finetune "${ORGAN_LAYOUT_ALL_DATA}" fov_strong "${WORK}/runs/segmentation_organ_layout_long"  # r
  if [ "${CANDIDATES:-0}" = 1 ]; then
    finetune "${ORGAN_LAYOUT_ALL_DATA}" fov_base "${BASE}/segmentation"  # p
    finetune "${ORGAN_LAYOUT_ALL_DATA}" fov_base_mild "${BASE}/segmentation"  # s
  fi
  LOW_LEFT_LOBE_DATA="${LOW_LEFT_LOBE_DATA:-${WORK}/train_low_left_lobe}"
  if [ ! -d "${LOW_LEFT_LOBE_DATA}/TrainingImg" ]; then
    [ -d "${WORK}/phantoms_1720/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1720" --cases 48 --seed 1720 \
      "${EVERY_OPTION[@]}" --low-left-lobe --workers 2
    link_sets "${LOW_LEFT_LOBE_DATA}" phantoms_1000 phantoms_1600 phantoms_1700 phantoms_1720
  fi
  finetune "${LOW_LEFT_LOBE_DATA}" low_left_lobe "${WORK}/runs/segmentation_fov_mild"  # t
  # aa: t on t's sets and one with the gallbladder in its fossa (--gallbladder-fossa); aa2: aa on
  # those and a second such set
  GALLBLADDER_DATA="${GALLBLADDER_DATA:-${WORK}/train_gallbladder}"
  GALLBLADDER_LONG_DATA="${GALLBLADDER_LONG_DATA:-${WORK}/train_gallbladder2}"
  for seed in 1730 1731; do
    [ -d "${WORK}/phantoms_${seed}/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_${seed}" --cases 48 --seed "${seed}" \
      "${EVERY_OPTION[@]}" --low-left-lobe --gallbladder-fossa --workers 2
  done
  [ -d "${GALLBLADDER_DATA}/TrainingImg" ] || link_sets "${GALLBLADDER_DATA}" phantoms_1000 phantoms_1600 phantoms_1700 phantoms_1720 phantoms_1730
  [ -d "${GALLBLADDER_LONG_DATA}/TrainingImg" ] || link_sets "${GALLBLADDER_LONG_DATA}" phantoms_1000 phantoms_1600 phantoms_1700 phantoms_1720 phantoms_1730 phantoms_1731
  finetune "${GALLBLADDER_DATA}" gallbladder "${WORK}/runs/segmentation_low_left_lobe"  # aa
  finetune "${GALLBLADDER_LONG_DATA}" gallbladder_long "${WORK}/runs/segmentation_gallbladder"  # aa2
  finetune "${GALLBLADDER_LONG_DATA}" gallbladder_longer "${WORK}/runs/segmentation_gallbladder_long"  # aa3
  if [ "${CANDIDATES:-0}" = 1 ]; then
    finetune "${LOW_LEFT_LOBE_DATA}" low_left_lobe_strong "${WORK}/runs/segmentation_fov_strong"  # u
    finetune "${LOW_LEFT_LOBE_DATA}" low_left_lobe_long "${WORK}/runs/segmentation_low_left_lobe"  # t2
    # v, w and x: t's four sets and one with fat-filled liver fissures (--liver-fissures)
    LIVER_FISSURES_DATA="${LIVER_FISSURES_DATA:-${WORK}/train_liver_fissures}"
    if [ ! -d "${LIVER_FISSURES_DATA}/TrainingImg" ]; then
      [ -d "${WORK}/phantoms_1740/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1740" --cases 48 --seed 1740 \
        "${EVERY_OPTION[@]}" --low-left-lobe --liver-fissures --workers 2
      link_sets "${LIVER_FISSURES_DATA}" phantoms_1000 phantoms_1600 phantoms_1700 phantoms_1720 phantoms_1740
    fi
    finetune "${LIVER_FISSURES_DATA}" liver_fissures "${WORK}/runs/segmentation_low_left_lobe"  # v
    finetune "${LIVER_FISSURES_DATA}" liver_fissures_strong "${WORK}/runs/segmentation_fov_strong"  # w
    finetune "${LIVER_FISSURES_DATA}" centre_jitter "${WORK}/runs/segmentation_low_left_lobe"  # x
    # y and z: t and r with the spatial term added in log space (sc_combine: sum)
    finetune "${LOW_LEFT_LOBE_DATA}" spatial_sum "${WORK}/runs/segmentation_low_left_lobe"  # y
    finetune "${LOW_LEFT_LOBE_DATA}" spatial_sum_strong "${WORK}/runs/segmentation_fov_strong"  # z
    finetune "${GALLBLADDER_DATA}" gallbladder_strong "${WORK}/runs/segmentation_fov_strong"  # ab
    # ac and ad: r and p, 4000 steps on aa2's sets with their own randomization; ae: ac, 2000 more
    # with aa2's milder randomization; af: aa2, 2000 more with r's stronger randomization
    finetune "${GALLBLADDER_LONG_DATA}" gallbladder_strong_long "${WORK}/runs/segmentation_fov_strong"  # ac
    finetune "${GALLBLADDER_LONG_DATA}" gallbladder_base "${WORK}/runs/segmentation_fov_base"  # ad
    finetune "${GALLBLADDER_LONG_DATA}" gallbladder_settle "${WORK}/runs/segmentation_gallbladder_strong_long"  # ae
    finetune "${GALLBLADDER_LONG_DATA}" gallbladder_robust "${WORK}/runs/segmentation_gallbladder_long"  # af
    # ag, ah and ai: aa2, 2000 steps on its sets and one more: a thin, plate-like left liver lobe
    # (--thin-left-lobe, seed 1750), an atrophic fat-infiltrated pancreas (--pancreas-lipomatosis,
    # 1760) or the pancreas further in front of the aorta (--pancreas-forward, 1770)
    for extra in "thin_left_lobe 1750" "pancreas_lipomatosis 1760" "pancreas_forward 1770"; do
      read -r name seed <<<"${extra}"
      [ -d "${WORK}/phantoms_${seed}/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_${seed}" --cases 48 \
        --seed "${seed}" "${EVERY_OPTION[@]}" --low-left-lobe --gallbladder-fossa "--${name//_/-}" --workers 2
      [ -d "${WORK}/train_${name}/TrainingImg" ] || link_sets "${WORK}/train_${name}" phantoms_1000 phantoms_1600 \
        phantoms_1700 phantoms_1720 phantoms_1730 phantoms_1731 "phantoms_${seed}"
      finetune "${WORK}/train_${name}" "${name}" "${WORK}/runs/segmentation_gallbladder_long"  # ag, ah, ai
    done
    finetune "${WORK}/train_pancreas_forward" pancreas_forward_repeat "${WORK}/runs/segmentation_gallbladder_long"  # aj
    finetune "${GALLBLADDER_LONG_DATA}" wide "${WORK}/runs/segmentation_gallbladder_longer"  # ak
    finetune "${GALLBLADDER_LONG_DATA}" noise "${WORK}/runs/segmentation_gallbladder_longer"  # al
    # am: aa2, 2000 steps on its sets and a flatter pancreas further to the front (seed 1790)
    [ -d "${WORK}/phantoms_1790/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1790" --cases 48 --seed 1790 \
      "${EVERY_OPTION[@]}" --low-left-lobe --gallbladder-fossa --pancreas-forward --flat-pancreas --workers 2
    [ -d "${WORK}/train_flat_pancreas/TrainingImg" ] || link_sets "${WORK}/train_flat_pancreas" phantoms_1000 \
      phantoms_1600 phantoms_1700 phantoms_1720 phantoms_1730 phantoms_1731 phantoms_1790
    finetune "${WORK}/train_flat_pancreas" flat_pancreas "${WORK}/runs/segmentation_gallbladder_long"  # am
    # an: aa2, 2000 steps on its sets and two with the stomach kept in front of the pancreas (1791, 1792)
    for seed in 1791 1792; do
      [ -d "${WORK}/phantoms_${seed}/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_${seed}" --cases 48 \
        --seed "${seed}" "${EVERY_OPTION[@]}" --low-left-lobe --gallbladder-fossa --stomach-in-front --workers 2
    done
    [ -d "${WORK}/train_stomach/TrainingImg" ] || link_sets "${WORK}/train_stomach" phantoms_1000 phantoms_1600 \
      phantoms_1700 phantoms_1720 phantoms_1730 phantoms_1731 phantoms_1791 phantoms_1792
    finetune "${WORK}/train_stomach" stomach "${WORK}/runs/segmentation_gallbladder_long"  # an
    # an2: aa2, 2000 steps on stomach-in-front sets only (1791, 1792, 1793)
    [ -d "${WORK}/phantoms_1793/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_1793" --cases 48 --seed 1793 \
      "${EVERY_OPTION[@]}" --low-left-lobe --gallbladder-fossa --stomach-in-front --workers 2
    [ -d "${WORK}/train_stomach_only/TrainingImg" ] || link_sets "${WORK}/train_stomach_only" phantoms_1791 \
      phantoms_1792 phantoms_1793
    finetune "${WORK}/train_stomach_only" stomach_only "${WORK}/runs/segmentation_gallbladder_long"  # an2
  fi
  # the localization net's variety stage (its run folder: a copy of checkpoints/realct_variety/localization)
  [ -d "${WORK}/runs/localization_variety" ] || cp -r checkpoints/realct_variety/localization "${WORK}/runs/localization_variety"
  flare-seg train-localization "${ORGAN_LAYOUT_ALL_DATA}" --run-dir "${WORK}/runs/localization_fov" \
    --config configs/localization_fov.yaml --cache-dir "${WORK}/cache"
  LOC_RUN="${WORK}/runs/localization_fov"
  if [ "${CANDIDATES:-0}" = 1 ]; then
    # lp and lp2: the localization network on abdomen-pelvis scans with the lesser pelvis and hips
    for seed in 1800 1801; do
      [ -d "${WORK}/phantoms_${seed}/TrainingImg" ] || flare-seg synth "${WORK}/phantoms_${seed}" --cases 48 \
        --seed "${seed}" "${EVERY_OPTION[@]}" --low-left-lobe --gallbladder-fossa --true-pelvis --workers 2
    done
    [ -d "${WORK}/train_pelvis/TrainingImg" ] || link_sets "${WORK}/train_pelvis" phantoms_1000 phantoms_1600 \
      phantoms_1700 phantoms_1720 phantoms_1730 phantoms_1731 phantoms_1800 phantoms_1801
    for name in pelvis pelvis_mild; do
      flare-seg train-localization "${WORK}/train_pelvis" --run-dir "${WORK}/runs/localization_${name}" \
        --config "configs/localization_${name}.yaml" --cache-dir "${WORK}/cache"  # lp, lp2
    done
  fi
  SEG_RUNS=(--segmentation-run "${WORK}/runs/segmentation_gallbladder_long"
    --segmentation-run "${WORK}/runs/segmentation_gallbladder_longer" --segmentation-run "${WORK}/runs/segmentation_fov_strong")
fi
flare-seg export --localization-run "${LOC_RUN}" "${SEG_RUNS[@]}" --out flare_seg/saved_models --force

# --- evaluation on phantoms of an unseen seed (the record in the manifest)
if [ ! -d "${TEST}/TrainingImg" ]; then
  flare-seg synth "${TEST}" --cases 20 --seed 3000 --workers 2
fi
mkdir -p "${WORK}/test_inputs"
cp -f "${TEST}"/TrainingImg/*_0000.nii.gz "${WORK}/test_inputs/"
flare-seg predict "${WORK}/test_inputs" "${WORK}/test_predictions"
flare-seg evaluate "${WORK}/test_predictions" "${TEST}/TrainingMask"
# --- and on the real development CT, measured only (never trained on; the regression gate above)
REAL_CT="${REAL_CT:-../shared/realct}"
REAL_EVAL=()
if [ -f "${REAL_CT}/example_ct.nii.gz" ]; then
  mkdir -p "${WORK}/real_inputs" "${WORK}/real_labels"
  cp -f "${REAL_CT}/example_ct.nii.gz" "${WORK}/real_inputs/example_ct_0000.nii.gz"
  cp -f "${REAL_CT}/example_ct_labels.nii.gz" "${WORK}/real_labels/example_ct.nii.gz"
  flare-seg predict "${WORK}/real_inputs" "${WORK}/real_predictions"
  flare-seg evaluate "${WORK}/real_predictions" "${WORK}/real_labels"
  REAL_EVAL=(--real-ct-evaluation "${WORK}/real_predictions/evaluation.json")
  # the same CT presented eleven ways (other grids, orientations, fields of view, noise, phase)
  python bench/realct_versions.py --ct "${REAL_CT}/example_ct.nii.gz" --labels "${REAL_CT}/example_ct_labels.nii.gz" \
    --models-dir flare_seg/saved_models --out "${WORK}/realct_versions.json"
fi
flare-seg export --localization-run "${LOC_RUN}" "${SEG_RUNS[@]}" \
  --out flare_seg/saved_models --force --evaluation "${WORK}/test_predictions/evaluation.json" ${REAL_EVAL[@]+"${REAL_EVAL[@]}"} \
  --notes "Trained on synthetic phantoms only (flare-seg synth --seed 1000, 40 cases, and --seed 1001, 24 cases; then, for the segmentation network, fine-tuned for real CT on --seed 1000 and --seed 1100 --iliac-wings --hu-spread-hu 15, 40 cases each, and also on --seed 1200 --iliac-wings --hu-spread-hu 15 --anatomy-variety, --seed 1300 with --lesions added and --seed 1400 with --arms added too, and --seed 1500 with --lesions and --lateral-spleen, 48 cases each; then with wider appearance randomization on --seed 1000 and 1500, and on --seed 1000, 1300, 1400, 1500 and 1600 (--fatty-pancreas with every other option, 48 cases) with the organs' HU randomized further in two more steps; then, from the --lateral-spleen step, on those five sets and --seed 1700 (--organ-layout with every other option, 48 cases) in three steps, the second with the stronger randomization and the third its continuation; the 20261203-060725 segmentation network was the mean of the base network, the first and the third of those steps), not on FLARE21 or any real CT; evaluated through the full two-stage pipeline on 20 unseen phantoms (seed 3000). Since 20261203-100930: the localization network is the variety-stage one fine-tuned on the six organ-layout sets (--seed 1000, 1300, 1400, 1500, 1600, 1700) with half its samples cut to shorter scans (configs/localization_fov.yaml). This version: the segmentation network is the mean of three nets fine-tuned with 40% of the patches cut to shorter scans: from step k (r, segmentation_fov_strong.yaml), 2000 steps on the six organ-layout sets, and aa2 and aa3: step i fine-tuned 2000 steps on those sets (q, segmentation_fov_mild.yaml), then 2000 on --seed 1000, 1600, 1700 and --seed 1720 (every option plus --low-left-lobe, 48 cases; t, segmentation_low_left_lobe.yaml), then 2000 with --seed 1730 added (--gallbladder-fossa too: the gallbladder in its fossa, partly inside the liver's outline; aa, segmentation_gallbladder.yaml) and 2000 with --seed 1731 (the same options) added (aa2, segmentation_gallbladder_long.yaml), and 2000 more on the same sets (aa3, segmentation_gallbladder_longer.yaml). Until 20261207-025541 the first member was p (the base network, 2000 steps on the organ-layout sets, segmentation_fov_base.yaml) instead of aa3."
