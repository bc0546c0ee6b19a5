"""Batch prediction: every case of an input (see ``service.inputs``: NIfTI files of any name, DICOM
series folders, zips of DICOM) becomes ``<case>.nii.gz`` and/or ``<case>.seg.dcm`` in OUTPUT_DIR,
plus ``summary.json`` and ``summary.csv`` for the run. ``predict_dir`` keeps the challenge
convention (every ``<case>_0000.nii.gz`` in INPUT_DIR becomes ``<case>.nii.gz``).

A bad case is reported and skipped; the others still finish; no partial output file is left (a
case's outputs are written all or none). The next case is read in a background thread while the
current one is segmented. For DICOM input the chosen series, and why, is logged and recorded.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flare_seg.dicom.archive import extracted_zip
from flare_seg.dicom.seg import build_seg, write_seg_atomic
from flare_seg.dicom.volume import DicomSource, read_dicom_volume
from flare_seg.labels import ORGANS
from flare_seg.service.inputs import (
    DICOM_SEG,
    NIFTI,
    InputCase,
    find_challenge_cases,
    output_names,
    outputs_for,
)
from flare_seg.service.interrupts import signals_interrupt
from flare_seg.service.io import CtVolume, InputError
from flare_seg.service.outdir import prepare_output_folder
from flare_seg.service.outputs import STATISTICS_CSV, CaseExtras, OutputOptions, write_case_extras
from flare_seg.statistics import OrganStatistics, write_statistics_csv

log = logging.getLogger(__name__)

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
    outputs: list[str] = field(default_factory=list)  # every file written for the case (extras too)
    series: str | None = None  # DICOM input: the series segmented, and why it was chosen


@dataclass
class _ReadCase:
    """A case's volume as read (on the reader thread), with its DICOM source when it has one."""

    volume: CtVolume
    source: DicomSource | None = None
    series: str | None = None


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
    options: OutputOptions | None = None,
    max_image_bytes: int | None = None,
) -> list[CaseReport]:
    """The challenge convention: every ``<case>_0000.nii.gz`` of ``input_dir`` -> ``<case>.nii.gz``."""
    cases = find_challenge_cases(Path(input_dir))
    return predict_cases(
        cases,
        Path(output_dir),
        segmenter,
        max_voxels,
        (NIFTI,),
        on_case,
        options,
        input_dirs=[Path(input_dir)],
        max_image_bytes=max_image_bytes,
    )


def check_output_dir(
    output_dir: Path,
    cases: list[InputCase],
    output_types: tuple[str, ...] | None = None,
    input_dirs: Iterable[Path] | None = None,
) -> None:
    """Check ``output_dir`` before any case is read (``outdir.prepare_output_folder``): not an
    input folder, no output file over an input, a folder that can be created and written.

    ``input_dirs``: the folders given as input (default: the folders holding the cases).

    Raises:
        OutputFolderError: why the folder cannot be used, in one line.
    """
    if input_dirs is None:
        input_dirs = {case.path if case.kind == "dicom" else case.path.parent for case in cases}
    names = [name for case in cases for name in output_names(case, outputs_for(case, output_types))]
    prepare_output_folder(
        input_dirs, Path(output_dir), [case.path for case in cases], [*names, SUMMARY_JSON, SUMMARY_CSV]
    )


def predict_cases(
    cases: list[InputCase],
    output_dir: Path,
    segmenter: Any,
    max_voxels: int = 1_500_000_000,
    output_types: tuple[str, ...] | None = None,
    on_case: Callable[[CaseReport], None] | None = None,
    options: OutputOptions | None = None,
    *,
    input_dirs: Iterable[Path] | None = None,
    max_image_bytes: int | None = None,
) -> list[CaseReport]:
    """Segment every case; returns one report per case (in input order).

    ``output_types``: ``nifti`` and/or ``dicom-seg`` for every case; None gives each case its
    input's default (NIfTI for NIfTI, DICOM SEG for DICOM). ``options``: the organ subset and the
    extra outputs (statistics, previews, split masks; see ``service.outputs``). The output folder
    is checked first (``check_output_dir``, with ``input_dirs``). On SIGINT or SIGTERM the summary
    of the cases finished so far is written (marked ``interrupted``) and
    ``interrupts.Interrupted`` is raised (exit status 130 or 143).

    Raises:
        FileNotFoundError: no cases.
        OutputFolderError: the output folder cannot be used (one line).
        Interrupted: SIGINT or SIGTERM, after the summary is written.
    """
    if not cases:
        raise FileNotFoundError("no input cases")
    check_output_dir(output_dir, cases, output_types, input_dirs)
    options = options or OutputOptions()
    read = functools.partial(_read_case, segmenter, max_voxels=max_voxels, max_image_bytes=max_image_bytes)
    statistics: list[tuple[str, dict[str, OrganStatistics]]] = []
    reports: list[CaseReport] = []
    try:
        with signals_interrupt():
            _predict_each(
                cases, output_dir, segmenter, read, output_types, options, reports, statistics, on_case
            )
    except KeyboardInterrupt:
        write_summary(output_dir, reports, interrupted=True)
        raise
    write_summary(output_dir, reports)
    if options.statistics:
        write_statistics_csv(output_dir / STATISTICS_CSV, statistics)
    return reports


def _predict_each(
    cases: list[InputCase],
    output_dir: Path,
    segmenter: Any,
    read_case: Callable[[InputCase], _ReadCase],
    output_types: tuple[str, ...] | None,
    options: OutputOptions,
    reports: list[CaseReport],
    statistics: list[tuple[str, dict[str, OrganStatistics]]],
    on_case: Callable[[CaseReport], None] | None,
) -> None:
    """Segment the cases in turn (the next one read meanwhile), appending to ``reports`` and
    ``statistics``. When interrupted, the read of the next case is not waited for."""
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader")
    interrupted = False
    try:
        pending: Future[_ReadCase] | None = reader.submit(read_case, cases[0])
        _warm_up(segmenter)  # while the first case is being read
        for i, case in enumerate(cases):
            report = CaseReport(case=case.case, input=case.display)
            t = time.perf_counter()
            current, pending = pending, None
            if i + 1 < len(cases):
                pending = reader.submit(read_case, cases[i + 1])
            try:
                assert current is not None
                read = current.result()
                current = None  # the future holds the volume too: let it go with ``read``
                types = outputs_for(case, output_types)
                stats = _segment_case(segmenter, case, read, output_dir, types, report, options)
                del read
                if stats is not None:
                    statistics.append((case.case, stats))
            except InputError as exc:
                report.status, report.error = "failed", str(exc)
            except MemoryError:
                report.status, report.error = (
                    "failed",
                    "out of memory: lower the memory budget or free memory",
                )
            except Exception as exc:  # one bad case must not lose the others
                log.debug("case %s failed", case.case, exc_info=True)
                report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"
            report.seconds = round(time.perf_counter() - t, 3)
            reports.append(report)
            if on_case:
                on_case(report)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        reader.shutdown(wait=not interrupted, cancel_futures=True)


def _read_case(
    segmenter: Any, case: InputCase, *, max_voxels: int, max_image_bytes: int | None = None
) -> _ReadCase:
    """Read one case's volume: NIfTI through the segmenter (which may start work on the way), a
    DICOM folder or zip through ``dicom.read_dicom_volume`` (the series choice is logged)."""
    if case.kind == NIFTI:
        volume = segmenter.read_volume(
            case.path, max_voxels, display_name=case.display, max_image_bytes=max_image_bytes
        )
        return _ReadCase(volume)
    if case.kind == "zip":
        with extracted_zip(case.path, 2 * max_voxels + (256 << 20), display_name=case.display) as root:
            dicom = read_dicom_volume(root, max_voxels, display_name=case.display)
    else:
        # one case per folder that holds DICOM files: its subfolders are cases of their own
        dicom = read_dicom_volume(case.path, max_voxels, display_name=case.display, recursive=False)
    return _ReadCase(dicom.volume, dicom.source, dicom.choice.reason if dicom.choice else None)


def _segment_case(
    segmenter: Any,
    case: InputCase,
    read: _ReadCase,
    output_dir: Path,
    types: tuple[str, ...],
    report: CaseReport,
    options: OutputOptions,
) -> dict[str, OrganStatistics] | None:
    """Segment one read case and write its outputs (all or none), filling in ``report``; then the
    extras of ``options``. Returns the case's statistics when asked for."""
    report.series = read.series
    if DICOM_SEG in types and read.source is None:
        raise InputError(f"{case.display}: a DICOM SEG needs DICOM input; this is a NIfTI image")
    result = segmenter.segment_volume(read.volume, release_input=not options.needs_ct, organs=options.organs)
    ct_zyx = read.volume.array_zyx if options.needs_ct else None
    read.volume = None  # type: ignore[assignment]
    names = output_names(case, types)
    written: list[Path] = []
    try:
        for kind, name in zip(types, names, strict=True):
            out = output_dir / name
            if kind == NIFTI:
                result.write_mask(out)
            else:
                assert read.source is not None
                write_seg_atomic(
                    build_seg(result.labels_zyx, read.source, model_version=result.model_version), out
                )
            written.append(out)
    except BaseException:
        for out in written:  # no partial set of outputs either
            out.unlink(missing_ok=True)
        raise
    report.status, report.output, report.outputs = "ok", names[0], names
    report.volumes_ml = dict(result.volumes_ml)
    report.organs_localized = result.organs_localized
    writes_seg = any(kind != NIFTI for kind in types)  # the UID warnings concern the SEG's references
    seg_warnings = read.source.warnings if read.source is not None and writes_seg else ()
    report.warnings = [*seg_warnings, *result.warnings]
    extras = _extras_or_warning(output_dir, case.case, result, ct_zyx, options, report)
    report.outputs = [*names, *extras.files]
    return extras.statistics


def _extras_or_warning(
    output_dir: Path, case: str, result: Any, ct_zyx: Any, options: OutputOptions, report: CaseReport
) -> CaseExtras:
    """``write_case_extras``; if it fails, the mask (already written) stays good and the case says
    what is missing in a warning."""
    try:
        return write_case_extras(output_dir, case, result, ct_zyx, options)
    except Exception as exc:
        log.debug("extra outputs of %s failed", case, exc_info=True)
        report.warnings.append(f"the statistics, preview or split masks could not be written: {exc}")
        return CaseExtras()


def write_summary(output_dir: Path, reports: list[CaseReport], *, interrupted: bool = False) -> None:
    """``summary.json`` and ``summary.csv`` next to the outputs, each written atomically;
    ``interrupted``: the run was stopped, the reports are the cases that finished."""
    ok = [r for r in reports if r.status == "ok"]
    doc = {
        "cases": [asdict(r) for r in reports],
        "succeeded": len(ok),
        "failed": len(reports) - len(ok),
        "total_seconds": round(sum(r.seconds for r in reports), 3),
        "interrupted": interrupted,
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
        series = [f"\n  series: {r.series}"] if r.series else []
        return "".join([line, *series, *(f"\n  warning: {w}" for w in r.warnings)])
    return f"{r.case}: FAILED: {r.error}"
