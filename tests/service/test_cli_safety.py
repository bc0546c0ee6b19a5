"""The batch CLI never overwrites an input, says in one line (exit 2) why an output folder cannot
be used, and writes the summary of the finished cases when SIGINT or SIGTERM stops it (130, 143).
With a fake segmenter (no models)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from flare_seg.cli import main
from flare_seg.service.cli import predict_dir
from flare_seg.service.interrupts import Interrupted
from flare_seg.service.io import CtVolume, write_mask_atomic
from tests.service.conftest import FakeResult, FakeSegmenter, make_ct
from tests.service.diskfs import small_tmpfs

pytestmark = pytest.mark.usefixtures("clean_env")


@dataclass(frozen=True)
class _BatchResult:
    result: FakeResult
    organs_localized: bool = True

    @property
    def volumes_ml(self) -> dict[str, float]:
        return self.result.volumes_ml

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.result.warnings

    def write_mask(self, path: Path) -> None:
        write_mask_atomic(self.result.labels_zyx, path, geometry=self.result.geometry)


@dataclass
class BatchFake(FakeSegmenter):
    """A FakeSegmenter for ``predict_dir``; ``before_case(n)`` runs before the n-th segmentation."""

    before_case: Callable[[int], None] | None = None
    seen: list[int] = field(default_factory=list)

    def segment_volume(self, volume: CtVolume, release_input: bool = False, **kwargs: Any) -> Any:
        self.seen.append(len(self.seen) + 1)
        if self.before_case is not None:
            self.before_case(len(self.seen))
        return _BatchResult(super().segment_volume(volume, release_input))  # organs: all


def _cases(folder: Path, *names: str) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sitk.WriteImage(make_ct(), str(folder / name), useCompression=True)
    return {name: (folder / name).read_bytes() for name in names}


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[BatchFake], list[str]]:
    """Makes ``flare-seg predict`` load the given fake; returns the flags that point at a models folder."""
    from flare_seg.service import pipeline

    (tmp_path / "models").mkdir()

    def use(fake: BatchFake) -> list[str]:
        monkeypatch.setattr(pipeline.Segmenter, "load", staticmethod(lambda *a, **k: fake))
        return ["--models-dir", str(tmp_path / "models")]

    return use


def test_predict_into_its_input_folder_is_refused_and_overwrites_nothing(
    tmp_path: Path, fake_models: Callable[[BatchFake], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproducer: a_0000.nii.gz and a_0000_0000.nii.gz in one folder, predict DIR DIR."""
    folder = tmp_path / "cases"
    before = _cases(folder, "a_0000.nii.gz", "a_0000_0000.nii.gz")
    fake = BatchFake()
    code = main(["predict", str(folder), str(folder), *fake_models(fake)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is the input folder" in err[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert fake.calls == 0


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_path_that_is_a_file_is_one_line_and_exit_2(
    tmp_path: Path,
    fake_models: Callable[[BatchFake], list[str]],
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    _cases(tmp_path / "in", "c_0000.nii.gz")
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if where == "a file" else tmp_path / "file" / "out"
    code = main(["predict", str(tmp_path / "in"), str(out), *fake_models(BatchFake())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("flare-seg predict: error: "), err
    assert "Traceback" not in "\n".join(err)


def test_an_output_folder_under_a_read_only_parent_is_one_line_and_exit_2(
    tmp_path: Path, fake_models: Callable[[BatchFake], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _cases(tmp_path / "in", "c_0000.nii.gz")
    with small_tmpfs(tmp_path / "ro", 256, read_only=True) as parent:
        code = main(["predict", str(tmp_path / "in"), str(parent / "out"), *fake_models(BatchFake())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "read-only" in err[0], err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_batch_writes_the_summary_of_what_finished(
    tmp_path: Path,
    fake_models: Callable[[BatchFake], list[str]],
    capsys: pytest.CaptureFixture[str],
    sig: int,
    code: int,
) -> None:
    _cases(tmp_path / "in", "c1_0000.nii.gz", "c2_0000.nii.gz", "c3_0000.nii.gz")

    def stop_at_the_second(n: int) -> None:
        if n == 2:
            os.kill(os.getpid(), sig)  # as docker stop (SIGTERM) or Ctrl-C (SIGINT) would

    out = tmp_path / "out"
    status = main(
        ["predict", str(tmp_path / "in"), str(out), *fake_models(BatchFake(before_case=stop_at_the_second))]
    )
    assert status == code
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert [c["case"] for c in summary["cases"]] == ["c1"] and summary["succeeded"] == 1
    assert (out / "summary.csv").read_text().count("\n") == 2  # header and the finished case
    assert sorted(p.name for p in out.iterdir()) == ["c1.nii.gz", "summary.csv", "summary.json"]
    assert "interrupted" in capsys.readouterr().err


def test_predict_dir_raises_interrupted_after_the_summary(tmp_path: Path) -> None:
    _cases(tmp_path / "in", "c1_0000.nii.gz", "c2_0000.nii.gz")
    fake = BatchFake(before_case=lambda n: os.kill(os.getpid(), signal.SIGTERM) if n == 2 else None)
    with pytest.raises(Interrupted) as caught:
        predict_dir(tmp_path / "in", tmp_path / "out", fake)
    assert caught.value.exit_code == 143
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["succeeded"] == 1


def test_an_interrupt_does_not_wait_for_the_read_of_the_next_case(tmp_path: Path) -> None:
    import threading
    import time

    _cases(tmp_path / "in", "c1_0000.nii.gz", "c2_0000.nii.gz")
    release = threading.Event()

    class SlowReads(BatchFake):
        def read_volume(self, path: Path, max_voxels: int, **kwargs: Any) -> CtVolume:
            if path.name.startswith("c2"):
                release.wait(timeout=30)  # a long read of the next case
            return super().read_volume(path, max_voxels, **kwargs)

    fake = SlowReads(before_case=lambda n: os.kill(os.getpid(), signal.SIGTERM) if n == 1 else None)
    start = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            predict_dir(tmp_path / "in", tmp_path / "out", fake)
        assert time.monotonic() - start < 10
        assert json.loads((tmp_path / "out" / "summary.json").read_text())["cases"] == []
    finally:
        release.set()


def test_a_single_input_file_is_never_overwritten_by_its_mask(
    tmp_path: Path, fake_models: Callable[[BatchFake], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """``flare-seg predict scan.nii.gz .`` in the scan's folder: the mask would be scan.nii.gz."""
    before = _cases(tmp_path, "scan.nii.gz")
    code = main(["predict", str(tmp_path / "scan.nii.gz"), str(tmp_path), *fake_models(BatchFake())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "would overwrite the input" in err[0], err
    assert (tmp_path / "scan.nii.gz").read_bytes() == before["scan.nii.gz"]
