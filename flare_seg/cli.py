"""``flare-seg``: one command, several subcommands. Heavy modules are imported only when used.

Errors the user can fix end with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_seg.console import exit_now

log = logging.getLogger("flare_seg")

EXIT_FAILED_CASES = 1
EXIT_USAGE = 2

if TYPE_CHECKING:  # what ``ArgumentParser.add_subparsers`` returns
    from flare_seg.service.outputs import OutputOptions

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    from flare_seg import tf_logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # TensorFlow's own lines only with -v (set before anything imports it).
    tf_logging.configure(verbose)
    if not verbose:
        tf_logging.quiet_tensorflow_import()
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name every module it copies


def _cmd_synth(args: argparse.Namespace) -> int:
    from flare_seg.training.phantom import PhantomOptions, write_dataset

    try:
        options = PhantomOptions(
            size=args.size,
            oblique_probability=args.oblique_probability,
            iliac_wings=args.iliac_wings,
            hu_spread_hu=args.hu_spread_hu,
            anatomy_variety=args.anatomy_variety,
            lesions=args.lesions,
            arms=args.arms,
            lateral_spleen=args.lateral_spleen,
            fatty_pancreas=args.fatty_pancreas,
            organ_layout=args.organ_layout,
            collapsed_stomach=args.collapsed_stomach,
            liver_masses=args.liver_masses,
            low_left_lobe=args.low_left_lobe,
            thin_left_lobe=args.thin_left_lobe,
            pancreas_lipomatosis=args.pancreas_lipomatosis,
            pancreas_forward=args.pancreas_forward,
            liver_fissures=args.liver_fissures,
            gallbladder_fossa=args.gallbladder_fossa,
            true_pelvis=args.true_pelvis,
            flat_pancreas=args.flat_pancreas,
            stomach_in_front=args.stomach_in_front,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = write_dataset(
        Path(args.out_dir),
        args.cases,
        args.seed,
        options,
        workers=args.workers,
        progress=lambda i, n: log.info("phantom %d/%d written", i, n),
    )
    print(f"wrote {len(names)} cases to {args.out_dir}")
    return 0


def _cmd_train(task: str):
    def run(args: argparse.Namespace) -> int:
        from flare_seg.training.config import load_config
        from flare_seg.training.train import train

        config = load_config(task, args.config, steps=args.steps, seed=args.seed, init_from=args.init_from)  # type: ignore[arg-type]
        cache_dir = Path(args.cache_dir) if args.cache_dir else None
        result = train(Path(args.data_dir), Path(args.run_dir), config, cache_dir=cache_dir)
        print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps, **result.metrics}, indent=2))
        return 0

    return run


def _cmd_export(args: argparse.Namespace) -> int:
    from flare_seg.training.export import export_models

    manifest = export_models(
        Path(args.localization_run),
        [Path(run) for run in (args.segmentation_run or ["runs/segmentation"])],
        Path(args.out),
        evaluation_json=Path(args.evaluation) if args.evaluation else None,
        real_ct_evaluation_json=Path(args.real_ct_evaluation) if args.real_ct_evaluation else None,
        notes=args.notes,
        overwrite=args.force,
    )
    print(f"exported models {manifest['model_version']} to {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from flare_seg.service.cli import check_output_dir, format_report_line, predict_cases
    from flare_seg.service.inputs import DICOM_SEG, find_cases, find_challenge_cases, parse_output_types
    from flare_seg.service.settings import load_settings

    settings = load_settings(
        models_dir=args.models_dir,
        memory_budget_mb=args.memory_budget_mb,
        precision=args.precision,
        device=args.device,
    )
    output_types = parse_output_types(args.output_type)
    options = _output_options(args)  # a bad --organs is a usage error before anything is read
    source, output_dir = Path(args.input), Path(args.output_dir)
    # Everything about the input and output is checked before the models load (seconds).
    cases = find_challenge_cases(source) if args.challenge_layout else find_cases(source)
    if output_types and DICOM_SEG in output_types and not any(c.is_dicom for c in cases):
        raise ValueError(f"--output-type dicom-seg needs DICOM input; {source} holds NIfTI images only")
    input_dirs = [source] if source.is_dir() else []
    check_output_dir(output_dir, cases, output_types, input_dirs)
    kinds = sorted({c.kind for c in cases})
    log.info("%d case(s) in %s (%s)", len(cases), source, ", ".join(kinds))
    settings.check_paths()
    from flare_seg.service.pipeline import Segmenter

    segmenter = Segmenter.load(
        settings.models_dir, settings.memory_budget_mb, settings.precision, device=settings.device
    )
    with _CaseProgress(len(cases)) as progress:
        reports = predict_cases(
            cases,
            output_dir,
            segmenter,
            max_voxels=settings.max_voxels,
            output_types=output_types,
            on_case=lambda r: progress.case_done(format_report_line(r), r.status),
            options=options,
            input_dirs=input_dirs,
            max_image_bytes=settings.max_image_bytes,
        )
    failed = [r for r in reports if r.status != "ok"]
    print(
        f"{len(reports) - len(failed)} succeeded, {len(failed)} failed; "
        f"summary in {args.output_dir}/summary.json"
    )
    return EXIT_FAILED_CASES if failed else 0


def _cmd_dicomweb(args: argparse.Namespace) -> int:
    """Segment a study of a DICOMweb server and store the DICOM SEG back into it."""
    from flare_seg.dicom.dicomweb import DicomWebError, credentials_from_env, make_client, segment_study
    from flare_seg.service.settings import load_settings

    settings = load_settings(
        models_dir=args.models_dir, memory_budget_mb=args.memory_budget_mb, precision=args.precision
    )
    save_to = Path(args.save) if args.save else None
    if save_to is not None and save_to.is_dir():
        raise ValueError(f"--save {save_to} is a folder; give the .dcm file to write")
    settings.check_paths()
    headers, basic_auth = credentials_from_env(os.environ)
    client = make_client(args.url, timeout_s=args.timeout, headers=headers, basic_auth=basic_auth)
    from flare_seg.service.pipeline import Segmenter

    segmenter = Segmenter.load(
        settings.models_dir, settings.memory_budget_mb, settings.precision, device=settings.device
    )
    volumes: dict[str, float] = {}

    def segment(dicom: Any) -> Any:
        result = segmenter.segment_dicom_volume(dicom)
        volumes.update(result.volumes_ml)
        return result.labels_zyx

    try:
        result = segment_study(
            client,
            args.study_uid,
            segment,
            segmenter.model_version,
            max_voxels=settings.max_voxels,
            store=not args.no_store,
            save_to=save_to,
        )
    except DicomWebError as exc:
        print(f"flare-seg dicomweb: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"series: {result.reason}")
    for w in result.warnings:
        print(f"  warning: {w}")
    print("  ".join(f"{organ} {ml:.1f} mL" for organ, ml in volumes.items()))
    where = "not stored (--no-store)" if args.no_store else f"stored in study {result.study_uid}"
    print(f"SEG {result.seg_sop_instance_uid} (series {result.seg_series_uid}) {where}")
    if save_to is not None:
        print(f"SEG written to {save_to}")
    return 0


class _CaseProgress:
    """Report lines on stdout; with stderr on a terminal and several cases, a progress bar too."""

    def __init__(self, total: int) -> None:
        from flare_seg.progress import Progress, stderr_is_terminal

        self.bar = Progress(total, "predict", "case") if total > 1 and stderr_is_terminal() else None

    def case_done(self, line: str, status: str) -> None:
        if self.bar is None:
            print(line, flush=True)
            return
        self.bar.write(line)
        self.bar.update(last=status)

    def __enter__(self) -> _CaseProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _output_options(args: argparse.Namespace) -> OutputOptions:
    from flare_seg.labels import parse_organs
    from flare_seg.service.outputs import OutputOptions

    organs = parse_organs(args.organs) if args.organs else None
    return OutputOptions(args.statistics, args.preview, args.split_masks, organs)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flare_seg.evaluation import evaluate_dirs

    report = evaluate_dirs(
        Path(args.pred_dir),
        Path(args.label_dir),
        args.tolerance_mm,
        Path(args.out_dir) if args.out_dir else None,
    )
    print(report.summary_table())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from flare_seg.service.api import ModelLoadError, serve
    from flare_seg.service.settings import load_settings

    settings = load_settings(
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
        precision=args.precision,
        device=args.device,
    )
    settings.check_paths()
    if settings.device == "gpu":  # before binding the port: a missing GPU is a usage error
        from flare_seg.device import select_device

        select_device("gpu")
    try:
        serve(settings)
    except ModelLoadError as exc:
        print(f"flare-seg serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Segment the bundled example CT with the shipped models; print organ volumes and, for the
    bundled example, the Dice of each organ against its reference mask."""
    from flare_seg.resources import EXAMPLE_IMAGE, EXAMPLE_REFERENCE_MASK
    from flare_seg.service.inputs import find_cases
    from flare_seg.service.pipeline import Segmenter
    from flare_seg.service.settings import load_settings

    settings = load_settings(models_dir=args.models_dir, device=args.device)
    image = args.image or EXAMPLE_IMAGE
    [case, *more] = find_cases(image)  # a NIfTI file, a DICOM series folder or a .zip
    if more:
        raise ValueError(f"{image} holds {len(more) + 1} cases; demo segments one (use flare-seg predict)")
    settings.check_paths()
    segmenter = Segmenter.load(
        settings.models_dir, settings.memory_budget_mb, settings.precision, device=settings.device
    )
    if case.is_dicom:
        result = segmenter.segment_dicom(case.path, settings.max_voxels)
        print(f"series: {result.series}")
    else:
        result = segmenter.segment_file(case.path, settings.max_voxels)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.write_mask(out)
    print(f"mask written to {out} (models {result.model_version})")
    dice = _dice_against(result.labels_zyx, EXAMPLE_REFERENCE_MASK) if args.image is None else {}
    for organ, ml in result.volumes_ml.items():
        score = f"   Dice {dice[organ]:.3f} against the reference mask" if organ in dice else ""
        print(f"  {organ:<9} {ml:9.1f} mL{score}")
    print(f"  total time {sum(result.timings_s.values()):.1f} s")
    return 0


def _dice_against(labels_zyx: Any, reference: Path) -> dict[str, float]:
    """Per-organ Dice of ``labels_zyx`` against the label file ``reference`` (same grid)."""
    import SimpleITK as sitk

    from flare_seg.evaluation import dice
    from flare_seg.labels import ORGANS

    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    return {name: dice(labels_zyx == k, truth == k) for k, name in ORGANS.items()}


def _cmd_bench(args: argparse.Namespace) -> int:
    from flare_seg.bench import run_bench
    from flare_seg.service.settings import load_settings

    settings = load_settings(models_dir=args.models_dir, precision=args.precision)
    settings.check_paths()
    run_bench(
        settings.models_dir,
        Path(args.work_dir),
        args.slices,
        seed=args.seed,
        repeats=args.repeats,
        memory_budget_mb=args.memory_budget_mb or settings.memory_budget_mb,
        precision=settings.precision,
        baseline_slices=args.baseline_slices,
        batch_cases=args.batch_cases,
        out_json=Path(args.out),
        dicom_slices=args.dicom_slices,
    )
    return 0


def _add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "float32"],
        help="network arithmetic: auto (default) = mixed float16 on GPUs with float16 tensor cores, "
        "float32 elsewhere; float32 = always (also $FLARE_SEG_PRECISION)",
    )


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        help="where the networks run: auto (default) = a GPU if TensorFlow sees one; gpu = require one "
        "(also $FLARE_SEG_DEVICE)",
    )


def _add_verbosity(p: argparse.ArgumentParser, in_subcommand: bool) -> None:
    """-v/-q before or after the subcommand (after it, an unset flag keeps the value from before)."""
    default: Any = argparse.SUPPRESS if in_subcommand else False
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging, TensorFlow's too"
    )
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def _add_synth(sub: _Subparsers) -> None:
    p = sub.add_parser("synth", help="write a synthetic phantom dataset in the FLARE21 layout")
    p.add_argument("out_dir")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size", choices=["full", "small"], default="full", help="full: 512x512-ish; small: for tests"
    )
    p.add_argument("--oblique-probability", type=float, default=0.0)
    p.add_argument(
        "--iliac-wings",
        action="store_true",
        help="a bony pelvis (iliac wings, femoral necks, gluteal muscles)",
    )
    p.add_argument(
        "--hu-spread-hu",
        type=float,
        default=0.0,
        help="SD of per-case soft-tissue HU offsets, with fatty liver and pancreas (0: textbook ranges)",
    )
    p.add_argument(
        "--anatomy-variety",
        action="store_true",
        help="organ size, shape and bone density beyond the textbook (atrophic pancreas, deeper liver "
        "and spleen, osteopenic bone)",
    )
    p.add_argument(
        "--lesions",
        action="store_true",
        help="kidney cysts and liver lesions (cysts, tumours, large masses), labelled as their organ",
    )
    p.add_argument("--arms", action="store_true", help="the arms down beside the trunk in 40%% of cases")
    p.add_argument(
        "--lateral-spleen",
        action="store_true",
        help="the spleen further out to the left flank and closer to the ribs in 60%% of cases",
    )
    p.add_argument(
        "--fatty-pancreas",
        action="store_true",
        help="a lobulated, fat-infiltrated, thinner pancreas (fat between its lobules) in 60%% of cases",
    )
    p.add_argument(
        "--pancreas-lipomatosis",
        action="store_true",
        help="an atrophic, fat-infiltrated pancreas (30-60%% fat between lobules, 1-1.7 cm thick), "
        "labelled as a whole, in 50%% of cases (overrides --fatty-pancreas there)",
    )
    p.add_argument(
        "--pancreas-forward",
        action="store_true",
        help="15-45 mm more fat between the aorta and the pancreas (head, neck and body that much "
        "further to the front, the tail a third of it), as with abundant visceral fat, in 60%% of cases",
    )
    p.add_argument(
        "--organ-layout",
        action="store_true",
        help="organs placed and sized as in many real abdomens in 70%% of cases (a larger left liver "
        "lobe, higher kidneys turned to the front, a larger and higher spleen)",
    )
    p.add_argument(
        "--collapsed-stomach",
        action="store_true",
        help="an empty stomach in about 60%% of cases (25%% without), painted as a thick wall of rugal "
        "folds whose mucosa enhances with contrast, as bright as the liver in the portal-venous phase",
    )
    p.add_argument(
        "--liver-masses",
        type=float,
        nargs="?",
        const=1 / 3,  # phantom.lesions.LIVER_MASS_SHARE (not imported here: the CLI starts light)
        default=0.0,
        metavar="SHARE",
        help="one large liver mass (5-15 cm; hypodense, hyperdense, necrotic or heterogeneous, often "
        "bulging out of the liver) in SHARE of the cases (a third if not given), labelled liver",
    )
    p.add_argument(
        "--low-left-lobe",
        action="store_true",
        help="a left liver lobe that reaches 10-35 mm lower, in front of the stomach (the lowest point "
        "of the liver's leftmost 30%% about 3-6 cm above the liver's lowest point, 6-10 cm without), "
        "in 60%% of cases",
    )
    p.add_argument(
        "--thin-left-lobe",
        action="store_true",
        help="a left liver lobe that is a plate 30-50%% as thick as without (about 2.5-4.5 cm at its "
        "root) and up to 30%% taller, against the front abdominal wall with the stomach behind it, "
        "in 60%% of cases",
    )
    p.add_argument(
        "--liver-fissures",
        action="store_true",
        help="fat-filled fissures in the liver, left out of its label: the umbilical fissure (90%% of "
        "cases; with the ligamentum teres in 70%% of those, the falciform ligament's groove in 60%%) and "
        "the fissure for the ligamentum venosum (60%%)",
    )
    p.add_argument(
        "--gallbladder-fossa",
        action="store_true",
        help="the gallbladder in its fossa on the liver's underside (25-65%% of it inside the liver's "
        "outline, the fundus forward and down), pear-shaped, with an enhancing wall (70%%), sludge "
        "(15%%) or stones (12%%); left out of the liver label",
    )
    p.add_argument(
        "--flat-pancreas",
        action="store_true",
        help="in 60%% of cases the pancreas' tail 10-30 mm lower (the body half of it, neither below "
        "the neck): a gland that runs flatter from head to tail",
    )
    p.add_argument(
        "--stomach-in-front",
        action="store_true",
        help="the stomach kept in front of the pancreas with 3-8 mm of fat between them, instead of "
        "wrapping around the gland's body and tail",
    )
    p.add_argument(
        "--true-pelvis",
        action="store_true",
        help="the lesser pelvis and the hips (implies --iliac-wings): the sacrum ending at the coccyx, "
        "pubic and ischial bones, femoral shafts, the iliacus, obturator, gluteal and thigh muscles; "
        "abdomen-pelvis fields of view (35%% of cases instead of 25%%) that end 20-90 mm below the "
        "femoral heads",
    )
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_synth)


def _add_train(sub: _Subparsers, task: str) -> None:
    p = sub.add_parser(f"train-{task}", help=f"train the {task} network (resumes from checkpoints)")
    p.add_argument("data_dir", help="dataset in the FLARE21 layout (TrainingImg/, TrainingMask/)")
    p.add_argument("--run-dir", default=f"runs/{task}", help="checkpoints, config, metrics")
    p.add_argument("--config", type=Path, help="YAML file of training settings")
    p.add_argument("--steps", type=int, help="total steps (a larger value on resume extends the run)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--cache-dir",
        help="where the resampled cases are cached (default RUN_DIR/cache; give both runs the same "
        "folder to share it)",
    )
    p.add_argument(
        "--init-from",
        help=f"initial weights of a fresh run: an exported network folder (e.g. saved_models/{task}) "
        "or a run directory",
    )
    p.set_defaults(func=_cmd_train(task))


def _add_export(sub: _Subparsers) -> None:
    p = sub.add_parser("export", help="export the three SavedModels and the manifest")
    p.add_argument("--localization-run", default="runs/localization")
    p.add_argument(
        "--segmentation-run",
        action="append",
        help="a segmentation run (default runs/segmentation); given more than once, the networks are "
        "exported as one that averages their class probabilities (an ensemble)",
    )
    p.add_argument("--out", default="saved_models", help="models folder to write")
    p.add_argument("--evaluation", help="evaluation.json of the full pipeline, recorded in the manifest")
    p.add_argument(
        "--real-ct-evaluation",
        help="evaluation.json of the full pipeline on real CT (measured only, never trained on), "
        "recorded in the manifest",
    )
    p.add_argument("--notes", help="free text recorded in the manifest")
    p.add_argument("--force", action="store_true", help="replace the models in --out if it exists")
    p.set_defaults(func=_cmd_export)


def _add_predict(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "predict",
        help="segment a NIfTI file, a DICOM series folder, a .zip of DICOM, or a folder of any of those",
        description="Cases: every NIfTI file (any name; <case>_0000.nii.gz gives <case>), every folder that "
        "holds DICOM files (one series is chosen per folder: CT images, axial, most slices) and every "
        ".zip of DICOM files. Outputs: <case>.nii.gz and/or <case>.seg.dcm, summary.json, summary.csv.",
    )
    p.add_argument("input", help="a NIfTI file, a DICOM series folder, a .zip, or a folder of those")
    p.add_argument("output_dir")
    p.add_argument(
        "--output-type",
        action="append",
        metavar="nifti|dicom-seg",
        help="nifti (<case>.nii.gz), dicom-seg (<case>.seg.dcm, DICOM input only) or both; repeat or "
        "comma-separate for both; default: nifti for NIfTI input, dicom-seg for DICOM input",
    )
    p.add_argument(
        "--challenge-layout",
        action="store_true",
        help="only <case>_0000.nii.gz (or .nii) files of the input folder, as the FLARE challenge lays "
        "them out (predict.sh)",
    )
    p.add_argument("--models-dir", help="default: $FLARE_SEG_MODELS_DIR, else the packaged models")
    p.add_argument("--memory-budget-mb", type=int, help="bounds slabs and tiles (default 256)")
    _add_precision_flag(p)
    _add_device_flag(p)
    p.add_argument(
        "--statistics",
        action="store_true",
        help="per organ: volume, voxel count, HU mean and std, box and centroid (LPS mm): "
        "<case>_statistics.json and statistics.csv",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="<case>_preview.png: axial, coronal and sagittal views with the organs",
    )
    p.add_argument("--organs", help="only these organs, comma-separated (e.g. liver,spleen)")
    p.add_argument(
        "--split-masks",
        action="store_true",
        help="also one binary mask per organ: <case>_masks/<organ>.nii.gz",
    )
    p.set_defaults(func=_cmd_predict)


def _add_evaluate(sub: _Subparsers) -> None:
    p = sub.add_parser("evaluate", help="per-case, per-organ Dice and normalized surface distance")
    p.add_argument("pred_dir")
    p.add_argument("label_dir")
    p.add_argument("--tolerance-mm", type=float, default=1.0)
    p.add_argument("--out-dir", help="where evaluation.csv/json go (default PRED_DIR)")
    p.set_defaults(func=_cmd_evaluate)


def _add_serve(sub: _Subparsers) -> None:
    p = sub.add_parser("serve", help="run the HTTP inference server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--models-dir")
    _add_precision_flag(p)
    _add_device_flag(p)
    p.set_defaults(func=_cmd_serve)


def _add_bench(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "bench", help="time and memory of the pipeline on full-size CTs (512 x 512 x N at 0.8/1.5 mm)"
    )
    p.add_argument("--slices", type=int, nargs="+", default=[300, 600, 900], help="input sizes to measure")
    p.add_argument("--work-dir", default="bench_inputs", help="where the generated CTs are kept")
    p.add_argument("--out", default="bench_results.json", help="JSON report")
    p.add_argument("--seed", type=int, default=990001, help="phantom seed of the generated CTs")
    p.add_argument("--repeats", type=int, default=2, help="steady-state runs per size (the best counts)")
    p.add_argument(
        "--baseline-slices",
        type=int,
        nargs="*",
        default=[300],
        help="sizes that also run the single-stage baseline (slow)",
    )
    p.add_argument("--batch-cases", type=int, default=3, help="cases in the batch-throughput run (0: none)")
    p.add_argument(
        "--dicom-slices",
        type=int,
        nargs="*",
        default=[300],
        help="sizes that also run the DICOM variant: read the same CT as a DICOM series, write its SEG",
    )
    p.add_argument("--memory-budget-mb", type=int)
    p.add_argument("--models-dir")
    _add_precision_flag(p)
    p.set_defaults(func=_cmd_bench)


def _add_dicomweb(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "dicomweb",
        help="segment a study of a DICOMweb server (PACS) and store the DICOM SEG back into it",
        description="QIDO-RS finds the study's series; the CT series is chosen (images only, axial, most "
        "slices) and read by WADO-RS; the DICOM SEG (one segment per organ, referencing the series) "
        "is stored into the same study by STOW-RS. Credentials come from the environment: "
        "FLARE_SEG_DICOMWEB_TOKEN (a bearer token) or FLARE_SEG_DICOMWEB_USER and "
        "FLARE_SEG_DICOMWEB_PASSWORD (HTTP basic).",
    )
    p.add_argument("study_uid", metavar="STUDY_UID", help="the Study Instance UID")
    p.add_argument("--url", required=True, help="the DICOMweb root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--save", help="also write the SEG to this .dcm file")
    p.add_argument("--no-store", action="store_true", help="do not store the SEG on the server")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    p.add_argument("--models-dir")
    p.add_argument("--memory-budget-mb", type=int)
    _add_precision_flag(p)
    p.set_defaults(func=_cmd_dicomweb)


def _add_demo(sub: _Subparsers) -> None:
    p = sub.add_parser("demo", help="segment the bundled example CT and print organ volumes")
    p.add_argument(
        "--image",
        type=Path,
        help="a NIfTI file, a DICOM series folder or a .zip of DICOM files (default: the packaged example)",
    )
    p.add_argument("--out", default="outputs/phantom_example.nii.gz")
    p.add_argument("--models-dir")
    _add_device_flag(p)
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``flare-seg`` parser; the subcommands are listed in this order in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="flare-seg", description="Two-stage abdominal CT organ segmentation."
    )
    _add_verbosity(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    for task in ("localization", "segmentation"):
        _add_train(sub, task)
    _add_export(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_serve(sub)
    _add_bench(sub)
    _add_dicomweb(sub)
    _add_demo(sub)
    for subcommand in sub.choices.values():
        _add_verbosity(subcommand, in_subcommand=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    _setup_logging(args.verbose, args.quiet)
    from flare_seg.contract import ManifestError
    from flare_seg.training.interrupt import TrainingInterrupted

    expected: tuple[type[BaseException], ...] = (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        FileExistsError,
        PermissionError,
        ManifestError,
    )
    try:
        return int(args.func(args))
    except TrainingInterrupted as exc:
        print(f"flare-seg {args.command}: {exc}", file=sys.stderr)
        return 130
    except expected as exc:
        if args.verbose:
            log.exception("failed")
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"flare-seg {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        from flare_seg.service.interrupts import exit_code_of

        print(f"flare-seg {args.command}: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return exit_code_of(exc)


def run() -> None:
    """The ``flare-seg`` command: ``main``, then ``exit_now``."""
    exit_now(main())


if __name__ == "__main__":
    run()
