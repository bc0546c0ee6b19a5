"""A new user's install: the wheel built from this checkout, installed (not editable) into a fresh
virtual environment, run from a folder outside the checkout. The shipped models and the example
CT must come with the package: ``demo`` and ``predict`` work with nothing else."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import SimpleITK as sitk

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(the fresh environment's bin folder, the environment variables to run it with)."""
    root = tmp_path_factory.mktemp("new_user")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("FLARE_SEG_")}
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], root, env)
    (wheel,) = wheels.glob("flare_seg-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, env)
    # The dependencies (TensorFlow & co.) come from this environment's site-packages as a plain
    # path entry: a path entry's own .pth files are not run, so an editable install of this
    # checkout there stays invisible and ``flare_seg`` can only come from the wheel.
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "deps_from_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    bin_dir = venv / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    _run([*pip, str(wheel)], root, env)
    where = _run([str(bin_dir / "python"), "-c", "import flare_seg; print(flare_seg.__file__)"], root, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    return bin_dir, env


def test_demo_from_any_folder(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = installed
    proc = _run([str(bin_dir / "flare-seg"), "demo"], tmp_path, env)
    assert "liver" in proc.stdout and "Dice" in proc.stdout, proc.stdout
    assert (tmp_path / "outputs" / "phantom_example.nii.gz").is_file()
    assert "E0000" not in proc.stderr and "I0000" not in proc.stderr, proc.stderr


def test_predict_a_folder_with_statistics_and_preview(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    example = bin_dir.parent / "lib"
    (image,) = example.glob("python3*/site-packages/flare_seg/examples/phantom_example_0000.nii.gz")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "case1_0000.nii.gz").write_bytes(image.read_bytes())
    cmd = [str(bin_dir / "flare-seg"), "predict", "in", "out", "--statistics", "--preview"]
    _run(cmd, tmp_path, env)
    out = tmp_path / "out"
    mask = sitk.ReadImage(str(out / "case1.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(image)).GetSize()
    stats = json.loads((out / "case1_statistics.json").read_text())
    assert stats["liver"]["volume_ml"] > 100 and stats["liver"]["hu_mean"] is not None
    assert (out / "statistics.csv").read_text().startswith("case,organ,")
    assert (out / "case1_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
