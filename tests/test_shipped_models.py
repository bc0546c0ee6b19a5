"""The shipped models, through the full two-stage pipeline, on phantoms of seeds never used in training.

The manifest records the evaluation on twenty unseen phantoms (seed 3000). These tests check that the
record is there and says what the models were trained on, and that the models still score like the
record on three more unseen phantoms (so a regression anywhere in the pipeline shows up).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.contract import MANIFEST_NAME
from flare_seg.evaluation import dice
from flare_seg.geometry import Geometry
from flare_seg.labels import ORGANS
from tests.conftest import SHIPPED_MODELS

TEST_SEEDS = (2_100_001, 2_100_002, 2_100_003)  # training used seeds 1000 and 1001, the record 3000
# Three cases vary more than ten: the fresh mean may fall this far below the recorded one.
TOLERANCE = 0.12


def _manifest() -> dict:
    return json.loads((SHIPPED_MODELS / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def shipped():
    from flare_seg.service.pipeline import Segmenter

    return Segmenter.load(SHIPPED_MODELS)


def test_manifest_says_phantoms_and_records_an_evaluation():
    manifest = _manifest()
    assert "phantom" in json.dumps(manifest["training_data"]).lower()
    assert "phantom" in (manifest["notes"] or "").lower()
    evaluation = manifest["evaluation"]
    mean = evaluation["mean"]
    for organ in ORGANS.values():
        assert 0.5 <= mean[organ]["dice"] <= 1.0, (organ, mean[organ])
        assert 0.0 <= mean[organ]["nsd"] <= 1.0, (organ, mean[organ])
    assert len(evaluation["cases"]) >= 10


@pytest.mark.slow
def test_shipped_models_score_like_their_record_on_unseen_phantoms(shipped):
    from flare_seg.training.phantom import PhantomOptions, generate_case

    recorded = _manifest()["evaluation"]["mean"]
    scores: dict[str, list[float]] = {organ: [] for organ in ORGANS.values()}
    for seed in TEST_SEEDS:
        image, truth = generate_case(seed, PhantomOptions(size="full", flip_probability=0.5))
        result = shipped.segment_image(image)
        assert Geometry.of(result.mask) == Geometry.of(image)
        pred, ref = sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(truth)
        for k, organ in ORGANS.items():
            if np.any(ref == k):
                scores[organ].append(dice(pred == k, ref == k))
    means = {organ: float(np.mean(v)) for organ, v in scores.items()}
    for organ, fresh in means.items():
        assert fresh >= recorded[organ]["dice"] - TOLERANCE, (organ, means, recorded)


def test_manifest_records_the_real_ct_apart_from_the_phantoms():
    real = _manifest()["evaluation_real_ct"]
    assert "never trained on" in real["case"]
    assert list(real["cases"]) == ["example_ct"]
    for organ in ORGANS.values():
        assert 0.0 <= real["mean"][organ]["dice"] <= 1.0 and 0.0 <= real["mean"][organ]["nsd"] <= 1.0
