"""Phantom CT cases written as NIfTI (image and mask) and as DICOM series of many geometries, and
helpers that compare DICOM volumes and SEGs with the NIfTI files in patient coordinates."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from flare_seg.dicom.synth import SeriesOptions, write_ct_series
from flare_seg.geometry import Geometry
from tests.conftest import oblique_direction

REAL_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "realct" / "example_ct_dicom"
if not REAL_DICOM.is_dir():  # the main checkout and worktrees sit at different depths
    REAL_DICOM = Path("/work/shared/realct/example_ct_dicom")

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Direction matrices (row-major; columns are the image x, y, z axes in LPS).
GEOMETRIES: dict[str, tuple[float, ...]] = {
    "axial": IDENTITY,
    "flipped-rows": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),  # column cosine [0, -1, 0]
    "flipped-columns": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    "flipped-both": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    "left-handed": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # slices stored head to feet
    "sagittal": (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # x: P, y: -S, z: L
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0),  # x: L, y: -S, z: P
    "oblique": oblique_direction(14.0),
}
SPACING_MM_XYZ = (0.9, 1.3, 2.5)
ORIGIN_MM_XYZ = (-40.25, 31.5, -120.0)
SIZE_XYZ = (30, 26, 14)


@dataclass(frozen=True)
class PhantomCase:
    """One case: the CT and its label mask as NIfTI files, and its DICOM series folder."""

    image_nifti: Path
    mask_nifti: Path
    dicom_dir: Path
    geometry: Geometry


def phantom_arrays(size_xyz: tuple[int, int, int] = SIZE_XYZ, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """HU voxels (noise, so that any mirroring shows) and a mask with one block per organ, each in
    a different corner (asymmetric along every axis)."""
    x, y, z = size_xyz
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1500, size=(z, y, x)).astype(np.int16)
    mask = np.zeros((z, y, x), np.uint8)
    mask[1 : z // 2, 1 : y // 2, 2 : x // 3] = 1
    mask[z // 2 : z - 1, y // 2 : y - 2, 1 : x // 4] = 2
    mask[2 : z // 3, y - 6 : y - 1, x - 8 : x - 2] = 3
    mask[z - 4 : z - 1, 2:6, x // 2 : x - 3] = 4
    return image, mask


def write_case(
    root: Path, direction: tuple[float, ...], options: SeriesOptions | None = None, size_xyz=SIZE_XYZ
) -> PhantomCase:
    geometry = Geometry(size_xyz, SPACING_MM_XYZ, ORIGIN_MM_XYZ, direction)
    image, mask = phantom_arrays(size_xyz)
    root.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = root / "case_0000.nii.gz", root / "case_mask.nii.gz"
    for array, path in ((image, image_path), (mask, mask_path)):
        im = sitk.GetImageFromArray(array)
        geometry.apply_to(im)
        sitk.WriteImage(im, str(path), useCompression=True)
    write_ct_series(image, geometry, root / "dicom", options)
    return PhantomCase(image_path, mask_path, root / "dicom", geometry)


@pytest.fixture(params=sorted(GEOMETRIES))
def geometry_case(request: pytest.FixtureRequest, tmp_path: Path) -> PhantomCase:
    """A phantom case in each supported geometry; odd ones also have reversed instance numbers and
    file names in reverse slice order (the reader must sort by position)."""
    name = request.param
    reverse = name in ("flipped-rows", "sagittal", "oblique")
    options = SeriesOptions(reverse_instance_numbers=reverse, reverse_slice_files=reverse)
    return write_case(tmp_path / name, GEOMETRIES[name], options)


def nifti_index_of(points_mm: np.ndarray, nifti: sitk.Image) -> np.ndarray:
    """Integer (x, y, z) indices of the NIfTI voxels whose centres are ``points_mm`` (N, 3);
    asserts that every point is a voxel centre to 1e-3 voxel."""
    index = Geometry.of(nifti).physical_to_index_xyz(points_mm)
    rounded = np.round(index)
    assert np.max(np.abs(index - rounded)) < 1e-3, "a DICOM voxel centre is not a NIfTI voxel centre"
    return rounded.astype(int)


def grid_points_mm(geometry: Geometry) -> np.ndarray:
    """Physical centres of every voxel of ``geometry``, (z, y, x, 3) in C order."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in geometry.shape_zyx), indexing="ij")
    index_xyz = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    return geometry.index_to_physical_xyz(index_xyz).reshape((*geometry.shape_zyx, 3))


def sample_nifti(nifti: sitk.Image, geometry: Geometry) -> np.ndarray:
    """The NIfTI's voxels at the centres of ``geometry``'s voxels (which must be NIfTI centres)."""
    points = grid_points_mm(geometry).reshape(-1, 3)
    ix, iy, iz = nifti_index_of(points, nifti).T
    size = np.asarray(nifti.GetSize())
    inside = (ix >= 0) & (iy >= 0) & (iz >= 0) & (ix < size[0]) & (iy < size[1]) & (iz < size[2])
    assert inside.all(), "the DICOM grid reaches outside the NIfTI grid"
    array = sitk.GetArrayViewFromImage(nifti)
    return np.asarray(array[iz, iy, ix]).reshape(geometry.shape_zyx)


def seg_frames_in_nifti(seg_path: Path, nifti_mask: sitk.Image) -> dict[int, np.ndarray]:
    """Per segment number, the NIfTI (x, y, z) indices of every voxel the SEG marks, found by
    mapping each frame's pixels to patient coordinates with the frame's own plane position and
    the shared orientation and pixel spacing."""
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    marked: dict[int, list[np.ndarray]] = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        r, c = np.nonzero(frames[i])
        points = ipp + np.outer(c * col_mm, iop[:3]) + np.outer(r * row_mm, iop[3:])
        marked.setdefault(number, []).append(nifti_index_of(points, nifti_mask))
    return {k: np.concatenate(v) for k, v in marked.items()}


def assert_seg_matches_mask(seg_path: Path, mask_nifti: sitk.Image) -> None:
    """Voxel for voxel: the SEG's segment k covers exactly the NIfTI mask's voxels of label k."""
    mask = sitk.GetArrayFromImage(mask_nifti)
    marked = seg_frames_in_nifti(seg_path, mask_nifti)
    for label in range(1, 5):
        expected = np.zeros(mask.shape, bool)
        expected[mask == label] = True
        got = np.zeros(mask.shape, bool)
        if label in marked:
            ix, iy, iz = marked[label].T
            got[iz, iy, ix] = True
            assert len(marked[label]) == int(got.sum()), f"segment {label}: a voxel is marked twice"
        assert np.array_equal(got, expected), (
            f"segment {label}: {int((got & ~expected).sum())} voxels marked outside the mask, "
            f"{int((expected & ~got).sum())} mask voxels not marked"
        )


def assert_dciodvfy_clean(path: Path) -> None:
    """David Clunie's validator (dicom3tools) finds no error in ``path`` (warnings are allowed);
    skips when it is not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    assert "Segmentation" in output  # it recognized the IOD


# ----------------------------------------------------------------------------- Orthanc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    url: str  # REST root
    dicomweb_url: str


_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@contextmanager
def running_orthanc(root: Path, users: dict[str, str] | None = None) -> Iterator[Orthanc]:
    """A real Orthanc with the DICOMweb plugin on a free loopback port, with its own storage under
    ``root``; with ``users``, HTTP basic authentication is required. Stopped afterwards."""
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian packages orthanc and orthanc-dicomweb)")
    if not _DICOMWEB_PLUGIN.exists():
        pytest.skip(f"the Orthanc DICOMweb plugin is not installed ({_DICOMWEB_PLUGIN})")
    port = _free_port()
    config = {
        "Name": "flare-seg-test",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": users is not None,
        "RegisteredUsers": users or {},
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "Plugins": [str(_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpTimeout": 60,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed after the process ends
    process = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process, root)
        yield Orthanc(url, f"{url}/dicom-web")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_for(url: str, process: subprocess.Popen, root: Path) -> None:
    """Until Orthanc answers on ``url`` (401 counts: it is up, and asks for credentials)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/system", timeout=2) as r:
                json.load(r)
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def upload_to_orthanc(orthanc: Orthanc, paths: list[Path], basic_auth: str | None = None) -> None:
    for path in paths:
        request = urllib.request.Request(f"{orthanc.url}/instances", data=path.read_bytes(), method="POST")
        request.add_header("Content-Type", "application/dicom")
        if basic_auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(basic_auth.encode()).decode())
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
