"""docs/server.md's JSON summary example has the keys a real segmentation returns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import SimpleITK as sitk

from flare_seg.service.api.service import summarize
from tests.conftest import REPO, ct_image


def _documented_summary() -> dict:
    text = (REPO / "docs" / "server.md").read_text()
    match = re.search(r"### The JSON summary\s+```json\n(.*?)```", text, re.S)
    assert match, "no JSON summary example in docs/server.md"
    return json.loads(match.group(1).replace("[...]", "[0, 0, 0]"))


def test_summary_example_matches_a_real_segmentation(tiny_segmenter, tmp_path: Path) -> None:
    path = tmp_path / "case01_0000.nii.gz"
    sitk.WriteImage(ct_image(), str(path))  # axial slices: localization resampled during the read
    volume = tiny_segmenter.read_volume(path)
    geometry = volume.geometry
    result = tiny_segmenter.segment_volume(volume, release_input=True)
    real = summarize(result, "case01", geometry, read_s=0.61, inference_s=2.1241, write_s=6.5e-07)
    documented = _documented_summary()
    body = json.loads(real.model_dump_json())
    assert set(documented) == set(body)
    # ``regrow_s`` exists only when a second pass ran (the prose says so; the random-weight
    # models' labels often reach the region's faces)
    assert list(documented["timings_s"]) == [k for k in body["timings_s"] if k != "regrow_s"]
    assert "`regrow_s`" in (REPO / "docs" / "server.md").read_text()
    assert body["timings_s"]["write_s"] == 0.0 and "e-" not in json.dumps(body["timings_s"])
    assert all(round(v, 4) == v for v in documented["timings_s"].values())
