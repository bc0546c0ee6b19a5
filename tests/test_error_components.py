"""bench/error_components.py: missed and extra pieces are found, sized and placed in patient terms,
on a grid with a non-identity (flipped) direction."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "error_components.py"


def _write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # x to the right, y to the front
    sitk.WriteImage(image, str(path))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_missed_piece_is_sized_and_placed_in_patient_terms(tmp_path: Path) -> None:
    ref = np.zeros((30, 40, 40), np.uint8)
    ref[5:25, 10:30, 10:30] = 1  # liver: a 40 mm cube
    pred = ref.copy()
    pred[10:20, 10:30, 10:16] = 0  # a 20 x 40 x 12 mm slab missed at low x index (the patient's left)
    pred[10:20, 2:6, 18:22] = 1  # an extra 20 x 8 x 8 mm piece at low y index (posterior), away from the cube
    out = _run(
        str(_write(pred, tmp_path / "p.nii.gz")),
        str(_write(ref, tmp_path / "r.nii.gz")),
        "--organ",
        "liver",
        "--rim-mm",
        "1",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "liver"
    missed = next(line for line in lines if line.strip().startswith("missed"))
    assert missed.strip().startswith("missed: 9.6 mL")  # 10 * 20 * 6 voxels of 8 uL
    piece = lines[lines.index(missed) + 1]
    # its centre: 7 voxels (14 mm; x 10-15 in 10-29) to low x index: the patient's left here
    assert re.search(
        r"\b14 mm left, 0 mm (posterior|anterior), 0 mm (superior|inferior) of the centre", piece
    ), piece
    extra = next(line for line in lines if line.strip().startswith("extra"))
    assert extra.strip().startswith("extra: 1.3 mL")  # 10 * 4 * 4 voxels
    # 16 voxels (32 mm) towards low y index: posterior here
    assert re.search(r"\b0 mm (left|right), 32 mm posterior, 0 mm", lines[lines.index(extra) + 1])


def test_masks_on_different_grids_are_refused_with_one_line(tmp_path: Path) -> None:
    a = _write(np.zeros((4, 5, 6)), tmp_path / "a.nii.gz")
    b = _write(np.zeros((4, 5, 7)), tmp_path / "b.nii.gz")
    out = _run(str(a), str(b))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: size (x,y,z) differs: prediction (6, 5, 4), reference (7, 5, 4)"
    ]


def test_a_ct_given_as_the_reference_is_refused_with_one_line(tmp_path: Path) -> None:
    labels = _write(np.zeros((4, 5, 6)), tmp_path / "labels.nii.gz")
    ct = sitk.GetImageFromArray(np.full((4, 5, 6), -1000, np.int16))
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    out = _run(str(labels), str(tmp_path / "ct.nii.gz"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: reference is not a label image: its values run from -1000 to -1000 "
        "(labels are 0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas)"
    ]
