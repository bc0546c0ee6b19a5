"""Peak memory of reading crafted CT uploads through the server's reading path, one subprocess each.

Crafts small .nii.gz files that decompress to large volumes (all-zero voxels compress ~1000:1),
then, for each, runs in a fresh Python process exactly what the server does with an upload:
``validate_nifti`` (header, voxel and byte limits, before any voxel is decompressed) and
``read_ct_volume(as_int16=True)`` (one decompression, converted to int16 on the way), as the
pipeline's ``read_volume`` calls it. Prints one line per file: its size
on the wire, what the reader answered, the peak resident memory (``ru_maxrss``) of the process
after its imports and after the read, and the array it held.

    python bench/read_memory.py [--work-dir bench_inputs/read_memory] [--json out.json]

The limits come from the service settings (``FLARE_SEG_*`` environment), as in the server; e.g.
``FLARE_SEG_MAX_IMAGE_MB=100000`` lifts the byte limit to show what the int16 conversion alone holds.
A file whose read would allocate more than ``--guard-mb`` after passing the checks is not read
(reported as skipped): the script must not take the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from isal import isal_zlib

REPO = Path(__file__).resolve().parents[1]
_BLOCK_BYTES = 64 << 20
_DATATYPES = {"int16": (4, 16), "float32": (16, 32), "float64": (64, 64)}


@dataclass(frozen=True)
class Case:
    name: str
    size_xyz: tuple[int, int, int]
    dtype: str
    zeros: bool  # all-zero voxels (a crafted upload) or a CT-like phantom

    @property
    def file_name(self) -> str:
        return f"{self.name}.nii.gz"


CASES = (
    Case("ct_512x512x300_int16", (512, 512, 300), "int16", zeros=False),
    Case("ct_512x512x300_float64", (512, 512, 300), "float64", zeros=False),
    Case("zeros_4096x4096x89_int16", (4096, 4096, 89), "int16", zeros=True),
    Case("zeros_4096x4096x20_float64", (4096, 4096, 20), "float64", zeros=True),
    Case("zeros_4096x4096x89_float64", (4096, 4096, 89), "float64", zeros=True),
)


def nifti1_header(size_xyz: tuple[int, int, int], dtype: str, spacing_mm_xyz=(0.8, 0.8, 1.5)) -> bytes:
    """A NIfTI-1 header (scanner sform, no scaling) and the 4-byte extension flag."""
    code, bitpix = _DATATYPES[dtype]
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *size_xyz, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, code, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, *spacing_mm_xyz, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<ff", h, 108, 352.0, 1.0)  # vox_offset, scl_slope
    struct.pack_into("<hh", h, 252, 0, 1)  # qform_code, sform_code
    sx, sy, sz = spacing_mm_xyz
    struct.pack_into("<12f", h, 280, sx, 0, 0, 0, 0, sy, 0, 0, 0, 0, sz, 0)
    h[344:348] = b"n+1\x00"
    return bytes(h) + bytes(4)


def _phantom_slice(nx: int, ny: int, dtype: str, z: int) -> np.ndarray:
    rng = np.random.default_rng(z)
    yy, xx = np.mgrid[0:ny, 0:nx]
    body = ((xx - nx / 2) / (0.42 * nx)) ** 2 + ((yy - ny / 2) / (0.35 * ny)) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, (ny, nx))
    return hu.astype(dtype)


def craft(case: Case, folder: Path) -> Path:
    """Write the case's file (kept: crafted once), streaming the voxels through the compressor."""
    path = folder / case.file_name
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = case.size_xyz
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(compressor.compress(nifti1_header(case.size_xyz, case.dtype)))
        if case.zeros:
            remaining = nx * ny * nz * np.dtype(case.dtype).itemsize
            block = bytes(min(_BLOCK_BYTES, remaining))
            while remaining:
                piece = block[: min(len(block), remaining)]
                f.write(compressor.compress(piece))
                remaining -= len(piece)
        else:
            for z in range(nz):
                f.write(compressor.compress(_phantom_slice(nx, ny, case.dtype, z).tobytes()))
        f.write(compressor.flush())
    tmp.rename(path)
    return path


_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from flare_seg.service import io
from flare_seg.service.settings import load_settings

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

path, guard_mb = Path(sys.argv[1]), float(sys.argv[2])
settings = load_settings()
limits = {"max_voxels": settings.max_voxels, "max_image_bytes": settings.max_image_bytes}
out = {"rss_after_imports_mb": round(peak_mb(), 1)}
start = time.perf_counter()
try:
    header = io.validate_nifti(path, display_name=path.name, scan_data=False, **limits)
    if header.voxel_count * 2 / 2**20 > guard_mb:
        mib = header.voxel_count * 2 / 2**20
        out.update(status="skipped", detail=f"passed the checks; reading would allocate {mib:.0f} MiB")
    else:
        volume = io.read_ct_volume(path, display_name=path.name, as_int16=True, **limits)
        out.update(status="read", held=f"{volume.array_zyx.dtype} {volume.array_zyx.nbytes / 2**20:.0f} MiB")
except io.InputError as e:
    out.update(status=f"rejected {e.status_code}", detail=str(e))
out["seconds"] = round(time.perf_counter() - start, 2)
out["peak_rss_mb"] = round(peak_mb(), 1)
print(json.dumps(out))
"""


def measure(path: Path, guard_mb: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(guard_mb)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    if done.returncode != 0:
        return {"status": f"crashed (exit {done.returncode})", "detail": done.stderr.strip()[-300:]}
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench_inputs" / "read_memory")
    parser.add_argument("--guard-mb", type=float, default=6000.0, help="do not read files that allocate more")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--cases", nargs="*", help="names of the cases to run (default: all)")
    args = parser.parse_args(argv)
    rows = []
    for case in CASES:
        if args.cases and case.name not in args.cases:
            continue
        t = time.perf_counter()
        path = craft(case, args.work_dir)
        crafted_s = time.perf_counter() - t
        wire_mb = round(path.stat().st_size / 2**20, 2)
        result = {"case": case.name, "wire_mb": wire_mb, **measure(path, args.guard_mb)}
        rows.append(result)
        print(
            f"{case.name:<28} {result['wire_mb']:>8.2f} MB on the wire  {result['status']:<13} "
            f"peak RSS {result.get('peak_rss_mb', '?')} MiB "
            f"(imports {result.get('rss_after_imports_mb', '?')})  "
            f"{result.get('held', '')}{result.get('detail', '')[:120]}  [crafted in {crafted_s:.1f} s]",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
