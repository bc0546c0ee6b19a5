"""``flare-seg``: one command, several subcommands. Heavy modules are imported only when used.

Errors the user can fix end with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flare_seg.console import exit_now

log = logging.getLogger("flare_seg")

EXIT_FAILED_CASES = 1
EXIT_USAGE = 2

if TYPE_CHECKING:  # what ``ArgumentParser.add_subparsers`` returns
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _cmd_synth(args: argparse.Namespace) -> int:
    from flare_seg.training.phantom import PhantomOptions, write_dataset

    try:
        options = PhantomOptions(
            size=args.size,
            oblique_probability=args.oblique_probability,
            iliac_wings=args.iliac_wings,
            hu_spread_hu=args.hu_spread_hu,
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
        result = train(Path(args.data_dir), Path(args.run_dir), config)
        print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps, **result.metrics}, indent=2))
        return 0

    return run


def _cmd_export(args: argparse.Namespace) -> int:
    from flare_seg.training.export import export_models

    manifest = export_models(
        Path(args.localization_run),
        Path(args.segmentation_run),
        Path(args.out),
        evaluation_json=Path(args.evaluation) if args.evaluation else None,
        real_ct_evaluation_json=Path(args.real_ct_evaluation) if args.real_ct_evaluation else None,
        notes=args.notes,
    )
    print(f"exported models {manifest['model_version']} to {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from flare_seg.service.cli import format_report_line, predict_dir
    from flare_seg.service.pipeline import Segmenter
    from flare_seg.service.settings import load_settings

    settings = load_settings(
        models_dir=args.models_dir, memory_budget_mb=args.memory_budget_mb, precision=args.precision
    )
    settings.check_paths()
    segmenter = Segmenter.load(settings.models_dir, settings.memory_budget_mb, settings.precision)
    reports = predict_dir(
        Path(args.input_dir),
        Path(args.output_dir),
        segmenter,
        max_voxels=settings.max_voxels,
        on_case=lambda r: print(format_report_line(r), flush=True),
    )
    failed = [r for r in reports if r.status != "ok"]
    print(
        f"{len(reports) - len(failed)} succeeded, {len(failed)} failed; "
        f"summary in {args.output_dir}/summary.json"
    )
    return EXIT_FAILED_CASES if failed else 0


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
        host=args.host, port=args.port, models_dir=args.models_dir, precision=args.precision
    )
    settings.check_paths()
    try:
        serve(settings)
    except ModelLoadError as exc:
        print(f"flare-seg serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Segment the bundled example CT with the shipped models and print organ volumes."""
    from flare_seg.service.pipeline import Segmenter
    from flare_seg.service.settings import load_settings

    settings = load_settings(models_dir=args.models_dir)
    settings.check_paths()
    example = Path(args.image)
    if not example.is_file():
        raise FileNotFoundError(f"example image {example} not found")
    segmenter = Segmenter.load(settings.models_dir, settings.memory_budget_mb, settings.precision)
    result = segmenter.segment_file(example, settings.max_voxels)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.write_mask(out)
    print(f"mask written to {out} (models {result.model_version})")
    for organ, ml in result.volumes_ml.items():
        print(f"  {organ:<9} {ml:9.1f} mL")
    print(f"  total time {sum(result.timings_s.values()):.1f} s")
    return 0


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
    )
    return 0


def _add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "float32"],
        help="network arithmetic: auto (default) = mixed float16 on GPUs with float16 tensor cores, "
        "float32 elsewhere; float32 = always (also $FLARE_SEG_PRECISION)",
    )


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
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_synth)


def _add_train(sub: _Subparsers, task: str) -> None:
    p = sub.add_parser(f"train-{task}", help=f"train the {task} network (resumes from checkpoints)")
    p.add_argument("data_dir", help="dataset in the FLARE21 layout (TrainingImg/, TrainingMask/)")
    p.add_argument("--run-dir", default=f"runs/{task}", help="checkpoints, config, metrics")
    p.add_argument("--config", type=Path, help="YAML file of training settings")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--init-from",
        help=f"initial weights of a fresh run: an exported network folder (e.g. saved_models/{task}) "
        "or a run directory",
    )
    p.set_defaults(func=_cmd_train(task))


def _add_export(sub: _Subparsers) -> None:
    p = sub.add_parser("export", help="export the three SavedModels and the manifest")
    p.add_argument("--localization-run", default="runs/localization")
    p.add_argument("--segmentation-run", default="runs/segmentation")
    p.add_argument("--out", default="saved_models")
    p.add_argument("--evaluation", help="evaluation.json of the full pipeline, recorded in the manifest")
    p.add_argument(
        "--real-ct-evaluation",
        help="evaluation.json of the full pipeline on real CT (measured only, never trained on), "
        "recorded in the manifest",
    )
    p.add_argument("--notes", help="free text recorded in the manifest")
    p.set_defaults(func=_cmd_export)


def _add_predict(sub: _Subparsers) -> None:
    p = sub.add_parser("predict", help="segment every <case>_0000.nii.gz of INPUT_DIR into OUTPUT_DIR")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.add_argument("--models-dir", help="default: $FLARE_SEG_MODELS_DIR or ./saved_models")
    p.add_argument("--memory-budget-mb", type=int, help="bounds slabs and tiles (default 256)")
    _add_precision_flag(p)
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
    p.add_argument("--memory-budget-mb", type=int)
    p.add_argument("--models-dir")
    _add_precision_flag(p)
    p.set_defaults(func=_cmd_bench)


def _add_demo(sub: _Subparsers) -> None:
    p = sub.add_parser("demo", help="segment the bundled example CT and print organ volumes")
    p.add_argument("--image", default="examples/phantom_example_0000.nii.gz")
    p.add_argument("--out", default="outputs/phantom_example.nii.gz")
    p.add_argument("--models-dir")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``flare-seg`` parser; the subcommands are listed in this order in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="flare-seg", description="Two-stage abdominal CT organ segmentation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    for task in ("localization", "segmentation"):
        _add_train(sub, task)
    _add_export(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_serve(sub)
    _add_bench(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from flare_seg.contract import ManifestError

    expected: tuple[type[BaseException], ...] = (
        ValueError,
        FileNotFoundError,
        PermissionError,
        ManifestError,
    )
    try:
        return int(args.func(args))
    except expected as exc:
        if args.verbose:
            log.exception("failed")
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"flare-seg {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"flare-seg {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The ``flare-seg`` command: ``main``, then ``exit_now``."""
    exit_now(main())


if __name__ == "__main__":
    run()
