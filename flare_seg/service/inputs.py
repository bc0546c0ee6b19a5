"""What an input path holds: the cases ``flare-seg predict`` (and the Python API) segment, and the
outputs each case gets.

An input is a NIfTI file of any name, a DICOM series folder, a folder of several series (one case
per folder that holds DICOM files), a .zip of DICOM files, or a folder of any mix of those. Files
are recognized by their content (gzip or NIfTI header, DICOM preamble, zip signature), not by
their names. The challenge convention (only ``<case>_0000.nii.gz``, see ``find_challenge_cases``)
is what ``predict.sh`` uses.

Outputs: ``nifti`` (``<case>.nii.gz``, the default for NIfTI input) and ``dicom-seg``
(``<case>.seg.dcm``, the default for DICOM input); a DICOM SEG needs DICOM input, since it
references its source images.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flare_seg.dicom.archive import is_zip
from flare_seg.dicom.series import folders_with_dicom, has_dicom_preamble

NIFTI = "nifti"
DICOM_SEG = "dicom-seg"
OUTPUT_TYPES = (NIFTI, DICOM_SEG)
CHALLENGE_SUFFIXES = ("_0000.nii.gz", "_0000.nii")
SEG_SUFFIX = ".seg.dcm"


@dataclass(frozen=True)
class InputCase:
    """One case to segment: ``kind`` is "nifti" (a file), "dicom" (a folder) or "zip" (a file)."""

    case: str  # the output files' stem
    kind: str
    path: Path
    display: str  # the input as messages name it (relative to what the user gave)

    @property
    def is_dicom(self) -> bool:
        return self.kind in ("dicom", "zip")


def parse_output_types(values: Iterable[str] | None) -> tuple[str, ...] | None:
    """``--output-type`` values ("nifti", "dicom-seg", "both", or comma-separated) -> the set, in
    a fixed order; None when none was given (each case then gets its input's default)."""
    if values is None:
        return None
    chosen: set[str] = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip().lower()
            if part == "both":
                chosen.update(OUTPUT_TYPES)
            elif part in OUTPUT_TYPES:
                chosen.add(part)
            elif part:
                raise ValueError(f"unknown output type {part!r}; expected nifti, dicom-seg or both")
    if not chosen:
        return None
    return tuple(t for t in OUTPUT_TYPES if t in chosen)


def outputs_for(case: InputCase, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The outputs a case gets: the requested ones, or its input's default."""
    if requested:
        return tuple(requested)
    return (DICOM_SEG,) if case.is_dicom else (NIFTI,)


def output_names(case: InputCase, types: Sequence[str]) -> list[str]:
    return [f"{case.case}.nii.gz" if t == NIFTI else f"{case.case}{SEG_SUFFIX}" for t in types]


def looks_like_nifti(path: Path) -> bool:
    """gzip data (a .nii.gz of any name) or a NIfTI-1/2 header size in either byte order."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if head[:2] == b"\x1f\x8b":
        return True
    return len(head) == 4 and any(struct.unpack(e + "i", head)[0] in (348, 540) for e in "<>")


def _stem(name: str) -> str:
    for suffix in (*CHALLENGE_SUFFIXES, ".nii.gz", ".nii", ".zip", ".gz"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _file_case(path: Path, display: str) -> InputCase:
    """The case of one input file, or a ``ValueError`` that says why it is not one."""
    if is_zip(path):
        return InputCase(_stem(path.name), "zip", path, display)
    if has_dicom_preamble(path):
        raise ValueError(
            f"{display} is a single DICOM file; give the folder that holds its series (or a .zip)"
        )
    if looks_like_nifti(path):
        return InputCase(_stem(path.name), NIFTI, path, display)
    raise ValueError(f"{display} is not a NIfTI image, a DICOM series folder or a .zip of DICOM files")


def find_cases(input_path: Path) -> list[InputCase]:
    """Every case under ``input_path`` (a file or a folder), sorted by case name.

    Raises:
        FileNotFoundError: the path does not exist, or a folder holds no input.
        ValueError: a single file that is not an input (e.g. one DICOM slice, a text file).
    """
    if not input_path.exists():
        raise FileNotFoundError(f"input {input_path} does not exist")
    if input_path.is_file():
        return [_file_case(input_path, input_path.name)]
    if not input_path.is_dir():
        raise ValueError(f"input {input_path} is neither a file nor a folder")
    cases: list[InputCase] = []
    for path in sorted(input_path.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            if is_zip(path):
                cases.append(InputCase(_stem(path.name), "zip", path, path.name))
            elif looks_like_nifti(path) and path.name.endswith((".nii", ".nii.gz")):
                cases.append(InputCase(_stem(path.name), NIFTI, path, path.name))
    for folder in folders_with_dicom(input_path):
        relative = folder.relative_to(input_path)
        name = "_".join(relative.parts) if relative.parts else input_path.resolve().name
        cases.append(InputCase(name, "dicom", folder, str(relative) if relative.parts else input_path.name))
    if not cases:
        raise FileNotFoundError(f"no NIfTI image, DICOM series or .zip of DICOM files in {input_path}")
    return _unique(sorted(cases, key=lambda c: (c.case, c.display)))


def find_challenge_cases(input_dir: Path) -> list[InputCase]:
    """Only ``<case>_0000.nii.gz`` (or ``.nii``) files, the challenge's convention."""
    if not input_dir.exists():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    if not input_dir.is_dir():
        raise NotADirectoryError(
            f"{input_dir} is a file; the challenge convention needs a folder of <case>_0000.nii.gz"
        )
    found: dict[str, InputCase] = {}
    for path in sorted(input_dir.iterdir()):
        for suffix in CHALLENGE_SUFFIXES:
            if path.name.endswith(suffix) and len(path.name) > len(suffix):
                case = path.name[: -len(suffix)]
                found.setdefault(case, InputCase(case, NIFTI, path, path.name))
    if not found:
        raise FileNotFoundError(f"no <case>_0000.nii.gz files in {input_dir}")
    return sorted(found.values(), key=lambda c: c.case)


def _unique(cases: list[InputCase]) -> list[InputCase]:
    """Cases with distinct output stems: a repeated stem gets the input kind, then a number."""
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        name = c.case
        if name in seen:
            seen[name] += 1
            name = f"{name}_{c.kind}{seen[c.case]}"
        else:
            seen[name] = 0
        out.append(InputCase(name, c.kind, c.path, c.display))
    return out
