"""Fixtures for the service io, settings and api tests: CT files, NIfTI headers, a fake segmenter."""

from __future__ import annotations

import gzip
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.geometry import Geometry
from flare_seg.service.io import CtVolume, read_ct_volume

# A non-identity direction: x and y flipped (RAS-like storage), z as is.
FLIPPED_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
ANISOTROPIC_SPACING_MM_XYZ = (0.8, 0.7, 2.5)
ORIGIN_MM_XYZ = (120.5, -80.25, -300.0)
SIZE_XYZ = (20, 16, 12)


def make_ct(
    size_xyz: tuple[int, int, int] = SIZE_XYZ,
    pixel_type: int = sitk.sitkInt16,
    direction: tuple[float, ...] = FLIPPED_DIRECTION,
) -> sitk.Image:
    """A tiny CT-like phantom (HU): air, a soft-tissue body, a bright 'organ' block; anisotropic spacing,
    flipped x/y axes, non-zero origin."""
    x, y, z = size_xyz
    array_zyx = np.full((z, y, x), -1000, dtype=np.int16)
    array_zyx[1:-1, 2:-2, 2:-2] = 40
    array_zyx[z // 4 : z // 2 + 1, y // 4 : y // 2, x // 4 : x // 2] = 200
    image = sitk.GetImageFromArray(array_zyx)
    image = sitk.Cast(image, pixel_type) if pixel_type != sitk.sitkInt16 else image
    image.SetSpacing(ANISOTROPIC_SPACING_MM_XYZ)
    image.SetOrigin(ORIGIN_MM_XYZ)
    image.SetDirection(direction)
    return image


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    """A small int16 CT phantom written as .nii.gz (flipped direction, anisotropic spacing)."""
    path = tmp_path / "case01_0000.nii.gz"
    sitk.WriteImage(make_ct(), str(path), useCompression=True)
    return path


def nifti1_header(
    dims: tuple[int, ...],
    datatype: int = 4,
    bitpix: int = 16,
    pixdim: tuple[float, ...] = (1.0, 1.0, 1.0),
    endian: str = "<",
    magic: bytes = b"n+1\x00",
) -> bytes:
    """A minimal NIfTI-1 header (348 bytes) plus the 4-byte extension flag; data starts at byte 352."""
    header = bytearray(348)
    struct.pack_into(endian + "i", header, 0, 348)
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into(endian + "8h", header, 40, *dim)
    struct.pack_into(endian + "hh", header, 70, datatype, bitpix)
    struct.pack_into(endian + "8f", header, 76, 1.0, *pixdim, *([1.0] * (7 - len(pixdim))))
    struct.pack_into(endian + "f", header, 108, 352.0)
    struct.pack_into(endian + "f", header, 112, 1.0)  # scl_slope
    header[344:348] = magic
    return bytes(header) + b"\x00\x00\x00\x00"


def nifti2_header(
    dims: tuple[int, ...],
    datatype: int = 4,
    bitpix: int = 16,
    pixdim: tuple[float, ...] = (1.0, 1.0, 1.0),
    endian: str = "<",
) -> bytes:
    """A minimal NIfTI-2 header (540 bytes) plus the 4-byte extension flag; data starts at byte 544."""
    header = bytearray(540)
    struct.pack_into(endian + "i", header, 0, 540)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into(endian + "hh", header, 12, datatype, bitpix)
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into(endian + "8q", header, 16, *dim)
    struct.pack_into(endian + "8d", header, 104, 1.0, *pixdim, *([1.0] * (7 - len(pixdim))))
    struct.pack_into(endian + "q", header, 168, 544)
    struct.pack_into(endian + "d", header, 176, 1.0)  # scl_slope
    struct.pack_into(endian + "i", header, 344, 1)  # qform_code: scanner
    return bytes(header) + b"\x00\x00\x00\x00"


def write_bytes(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    return path


@dataclass(frozen=True)
class FakeResult:
    labels_zyx: np.ndarray
    geometry: Geometry
    volumes_ml: dict[str, float]
    organ_boxes_mm: dict[str, Any]
    roi_box_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    timings_s: dict[str, float]
    model_version: str
    warnings: tuple[str, ...] = ()


@dataclass
class FakeSegmenter:
    """Thresholds the image: > 100 HU is 'liver' (label 1). Optionally blocks on ``gate``."""

    gate: threading.Event | None = None
    fail_with: Exception | None = None
    model_version: str = "fake-1.0"
    manifest: dict[str, Any] = field(
        default_factory=lambda: {"model_version": "fake-1.0", "labels": {"1": "liver", "2": "kidney"}}
    )
    started: threading.Event = field(default_factory=threading.Event)
    calls: int = 0
    warmed_up: bool = False
    warnings: tuple[str, ...] = ()  # given to every result

    def warm_up(self) -> None:
        self.warmed_up = True

    def read_volume(
        self,
        path: Path,
        max_voxels: int,
        *,
        display_name: str | None = None,
        max_image_bytes: int | None = None,
    ) -> CtVolume:
        return read_ct_volume(
            path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes, as_int16=True
        )

    def segment_volume(self, volume: CtVolume, release_input: bool = False) -> FakeResult:
        image = volume.to_image()
        if release_input:
            volume.array_zyx = None  # type: ignore[assignment]
        return self.segment_image(image)

    def segment_image(self, image: sitk.Image) -> FakeResult:
        self.calls += 1
        self.started.set()
        if self.gate is not None and not self.gate.wait(timeout=20):
            raise TimeoutError("test gate never opened")
        if self.fail_with is not None:
            raise self.fail_with
        mask = sitk.Cast(image > 100, sitk.sitkUInt8)
        mask.CopyInformation(image)
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        corner = tuple(float(v) for v in image.GetOrigin())
        box = (corner, tuple(c + 10.0 for c in corner))
        return FakeResult(
            labels_zyx=sitk.GetArrayFromImage(mask),
            geometry=Geometry.of(image),
            volumes_ml={"liver": voxels * voxel_ml, "kidney": 0.0},
            organ_boxes_mm={"liver": box, "kidney": None},
            roi_box_mm=box,
            timings_s={"localization": 0.01, "segmentation": 0.02},
            model_version=self.model_version,
            warnings=self.warnings,
        )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No FLARE_SEG_* variables from the developer's shell leak into the test."""
    import os

    for name in list(os.environ):
        if name.startswith("FLARE_SEG_"):
            monkeypatch.delenv(name)
    yield
