"""Batch prediction (challenge convention): every ``<case>_0000.nii.gz`` in INPUT_DIR becomes
``<case>.nii.gz`` in OUTPUT_DIR, plus ``summary.json`` and ``summary.csv`` for the run.

A bad case is reported and skipped; the others still finish; no partial output file is left.
The next case is read in a background thread while the current one is segmented.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flare_seg.labels import ORGANS
from flare_seg.service.io import CtVolume, InputError

log = logging.getLogger(__name__)

INPUT_SUFFIXES = ("_0000.nii.gz", "_0000.nii")
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"


@dataclass
class CaseReport:
    case: str
    input: str
    status: str = "pending"  # ok | failed
    seconds: float = 0.0
    output: str | None = None
    error: str | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    organs_localized: bool | None = None
    warnings: list[str] = field(default_factory=list)


def find_inputs(input_dir: Path) -> list[tuple[str, Path]]:
    """(case, path) for every ``<case>_0000.nii.gz`` (or ``.nii``) in ``input_dir``, sorted by case."""
    found: dict[str, Path] = {}
    for path in sorted(Path(input_dir).iterdir()):
        for suffix in INPUT_SUFFIXES:
            if path.name.endswith(suffix) and len(path.name) > len(suffix):
                found.setdefault(path.name[: -len(suffix)], path)
    return sorted(found.items())


def _warm_up(segmenter: Any) -> None:
    """The segmenter's one-off first-call work, if it has any; a failure here is only logged (the
    cases then report their own errors)."""
    warm_up = getattr(segmenter, "warm_up", None)
    if warm_up is None:
        return
    try:
        warm_up()
    except Exception:
        log.warning("warm-up failed; the first case pays for the first calls", exc_info=True)


def predict_dir(
    input_dir: Path,
    output_dir: Path,
    segmenter: Any,
    max_voxels: int = 1_500_000_000,
    on_case: Callable[[CaseReport], None] | None = None,
) -> list[CaseReport]:
    """Segment every input case; returns one report per case (in input order)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    inputs = find_inputs(input_dir)
    if not inputs:
        raise FileNotFoundError(f"no <case>_0000.nii.gz files in {input_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(output_dir, os.W_OK):
        raise PermissionError(f"output folder {output_dir} is not writable")

    reports: list[CaseReport] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader") as reader:
        pending: Future[CtVolume] | None = reader.submit(segmenter.read_volume, inputs[0][1], max_voxels)
        _warm_up(segmenter)  # while the first case is being read
        for i, (case, path) in enumerate(inputs):
            report = CaseReport(case=case, input=path.name)
            t = time.perf_counter()
            current, pending = pending, None
            if i + 1 < len(inputs):
                pending = reader.submit(segmenter.read_volume, inputs[i + 1][1], max_voxels)
            try:
                assert current is not None
                volume = current.result()
                current = None  # the future holds the volume too: let it go with ``volume``
                result = segmenter.segment_volume(volume, release_input=True)
                del volume
                out = output_dir / f"{case}.nii.gz"
                result.write_mask(out)
                report.status, report.output = "ok", out.name
                report.volumes_ml = dict(result.volumes_ml)
                report.organs_localized = result.organs_localized
                report.warnings = list(result.warnings)
            except InputError as exc:
                report.status, report.error = "failed", str(exc)
            except MemoryError:
                report.status, report.error = (
                    "failed",
                    "out of memory: lower the memory budget or free memory",
                )
            except Exception as exc:  # one bad case must not lose the others
                log.debug("case %s failed", case, exc_info=True)
                report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"
            report.seconds = round(time.perf_counter() - t, 3)
            reports.append(report)
            if on_case:
                on_case(report)
    write_summary(output_dir, reports)
    return reports


def write_summary(output_dir: Path, reports: list[CaseReport]) -> None:
    """``summary.json`` and ``summary.csv`` next to the outputs, each written atomically."""
    ok = [r for r in reports if r.status == "ok"]
    doc = {
        "cases": [asdict(r) for r in reports],
        "succeeded": len(ok),
        "failed": len(reports) - len(ok),
        "total_seconds": round(sum(r.seconds for r in reports), 3),
    }
    _atomic_write_text(output_dir / SUMMARY_JSON, json.dumps(doc, indent=2))
    buf = io.StringIO()
    writer = csv.writer(buf)
    organs = list(ORGANS.values())
    writer.writerow(["case", "status", "seconds", *[f"{o}_ml" for o in organs], "error"])
    for r in reports:
        writer.writerow(
            [r.case, r.status, r.seconds, *[r.volumes_ml.get(o, "") for o in organs], r.error or ""]
        )
    _atomic_write_text(output_dir / SUMMARY_CSV, buf.getvalue())


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_report_line(r: CaseReport) -> str:
    if r.status == "ok":
        vols = "  ".join(f"{k} {v:.1f} mL" for k, v in r.volumes_ml.items())
        line = f"{r.case}: ok in {r.seconds:.1f} s  {vols}"
        return "".join([line, *(f"\n  warning: {w}" for w in r.warnings)])
    return f"{r.case}: FAILED: {r.error}"
