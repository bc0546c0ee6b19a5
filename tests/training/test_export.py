"""Export -> reload -> same outputs, and the manifest that describes the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from flare_seg.contract import (
    LOCALIZATION_DIR,
    MANIFEST_NAME,
    SEGMENTATION_DIR,
    SEGMENTATION_INPUT_CHANNELS,
    ModelContract,
)
from flare_seg.training.config import load_config
from flare_seg.training.train import restore_model


def test_reloaded_savedmodels_match_the_trained_networks(tiny_runs, tiny_models):
    from flare_seg.service.models import load_models

    loaded = load_models(tiny_models)
    rng = np.random.default_rng(3)
    for run, fn, channels, key in (
        (tiny_runs[0], loaded.localization, 1, "heatmaps"),
        (tiny_runs[1], loaded.segmentation, SEGMENTATION_INPUT_CHANNELS, "probabilities"),
    ):
        import yaml

        raw = yaml.safe_load((run / "config.yaml").read_text())
        model, _ = restore_model(run, load_config(raw.pop("task"), None, **raw))
        x = rng.uniform(-1, 1, (1, 16, 24, 8, channels)).astype(np.float32)
        np.testing.assert_allclose(fn(tf.constant(x))[key].numpy(), model(x).numpy(), atol=1e-5)


def test_manifest_records_contract_and_provenance(tiny_models):
    manifest = json.loads((tiny_models / MANIFEST_NAME).read_text())
    contract = ModelContract.from_json(manifest["contract"])
    assert contract == ModelContract()
    sig = manifest["signatures"]
    assert sig[SEGMENTATION_DIR]["inputs"]["image"]["shape"] == [
        1,
        None,
        None,
        None,
        SEGMENTATION_INPUT_CHANNELS,
    ]
    assert sig[LOCALIZATION_DIR]["outputs"]["heatmaps"]["channels"] == [
        "liver",
        "kidney",
        "spleen",
        "pancreas",
    ]
    seg = manifest["training"][SEGMENTATION_DIR]
    assert seg["checkpoint_step"] == 2
    assert seg["data"]["val_cases"] and seg["data"]["train_cases"]
    assert "generator" in manifest["training_data"]  # the phantom dataset says where it came from
    assert manifest["notes"] == "test fixture"


def test_a_tampered_manifest_is_refused(tiny_models, tmp_path):
    import shutil

    import pytest

    from flare_seg.contract import ManifestError
    from flare_seg.service.models import load_models

    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["contract"]["labels"]["4"] = "stomach"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="label map"):
        load_models(copy)
    manifest["contract"]["labels"]["4"] = "pancreas"
    manifest["signatures"][SEGMENTATION_DIR]["inputs"]["image"]["shape"][-1] = 1
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="signatures"):
        load_models(copy)
    shutil.rmtree(copy / "segmentation")
    with pytest.raises(ManifestError, match="not a SavedModel"):
        load_models(copy)


def test_export_refuses_to_overwrite_without_force_and_warns_on_near_zero_dice(tiny_runs, tmp_path, caplog):
    import logging

    import pytest

    from flare_seg.training.export import export_models

    out = tmp_path / "models"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        export_models(tiny_runs[0], tiny_runs[1], out)
    assert (out / "keep.txt").read_text() == "mine" and not (out / MANIFEST_NAME).exists()
    assert not list(tmp_path.glob("*.exporting"))  # refused before any work
    with caplog.at_level(logging.WARNING, logger="flare_seg.training.export"):
        export_models(tiny_runs[0], tiny_runs[1], out, overwrite=True)
    assert (out / MANIFEST_NAME).is_file() and not (out / "keep.txt").exists()
    # Two training steps: the networks have learnt nothing, and the export says so.
    warned = [r.getMessage() for r in caplog.records if "validation Dice is near 0" in r.getMessage()]
    assert warned and any("segmentation network" in w for w in warned)


def test_near_zero_dice_warnings_only_for_low_organs():
    from flare_seg.training.export import near_zero_dice_warnings

    runs = {
        "segmentation": {"checkpoint_step": 900, "validation": {"dice": {"liver": 0.93, "pancreas": 0.01}}},
        "localization": {"checkpoint_step": 100, "validation": {"dice": {"liver": 0.8}}},
        "other": {"validation": None},
    }
    (warning,) = near_zero_dice_warnings(runs)
    assert "segmentation network" in warning and "pancreas 0.010" in warning and "liver" not in warning


def test_evaluations_on_phantoms_and_real_ct_are_recorded_apart(tiny_runs, tmp_path):
    from flare_seg.training.export import export_models

    phantoms, real = tmp_path / "phantoms.json", tmp_path / "real.json"
    phantoms.write_text(json.dumps({"mean": {"liver": {"dice": 0.9}}}))
    real.write_text(json.dumps({"mean": {"liver": {"dice": 0.7}}}))
    manifest = export_models(
        tiny_runs[0],
        tiny_runs[1],
        tmp_path / "models",
        evaluation_json=phantoms,
        real_ct_evaluation_json=real,
    )
    on_disk = json.loads((tmp_path / "models" / MANIFEST_NAME).read_text())
    assert on_disk["evaluation"]["mean"]["liver"]["dice"] == 0.9
    assert on_disk["evaluation_real_ct"]["mean"]["liver"]["dice"] == 0.7
    assert manifest["evaluation_real_ct"] == on_disk["evaluation_real_ct"]
    assert "never trained on" in on_disk["evaluation_real_ct"]["case"]


def test_several_segmentation_runs_are_exported_as_their_mean(
    phantom_dataset, tiny_runs, tiny_models, tmp_path
):
    """An ensemble: one segmentation network, same signature, whose output is the mean of its
    members' (one a run, one an exported network); each member is recorded in the manifest, and an
    ensemble cannot be the starting point of a fine-tuning run."""

    from flare_seg.contract import SEGMENTATION_OUTPUT, SERVING_ENDPOINT
    from flare_seg.training.export import export_models
    from flare_seg.training.train import build_model, initialize_weights, train

    other = tmp_path / "seg_other"
    small = {"steps": 2, "filters": (4, 8, 8, 8), "val_cases": 1, "log_every": 1, "checkpoint_every": 1}
    train(
        phantom_dataset, other, load_config("segmentation", sc_filters=4, patch_size_vox=32, seed=5, **small)
    )
    out = tmp_path / "ensemble"
    manifest = export_models(tiny_runs[0], [tiny_models / SEGMENTATION_DIR, other], out)

    x = tf.constant(
        np.random.default_rng(1)
        .uniform(-1, 1, (1, 16, 16, 16, SEGMENTATION_INPUT_CHANNELS))
        .astype(np.float32)
    )

    def serve(path):
        loaded = tf.saved_model.load(str(path))
        return getattr(loaded, SERVING_ENDPOINT)(x)[SEGMENTATION_OUTPUT].numpy()

    first, second = serve(tiny_models / SEGMENTATION_DIR), serve(out / SEGMENTATION_DIR)
    config = load_config("segmentation", sc_filters=4, patch_size_vox=32, seed=5, **small)
    member, _ = restore_model(other, config)
    other_out = member(x, training=False).numpy()
    assert np.abs(first - other_out).max() > 1e-3  # the members differ, so the mean is not either one
    np.testing.assert_allclose(second, (first + other_out) / 2.0, atol=1e-5)
    np.testing.assert_allclose(second.sum(axis=-1), 1.0, atol=1e-4)  # still class probabilities

    entry = manifest["training"][SEGMENTATION_DIR]
    assert [m["checkpoint_step"] for m in entry["members"]] == [2, 2]
    assert "models" in entry["members"][0]["run"] and entry["members"][1]["run"] == "seg_other"
    assert entry["parameters"] == sum(m["parameters"] for m in entry["members"])
    assert json.loads((out / MANIFEST_NAME).read_text())["training"] == json.loads(
        json.dumps(manifest["training"])
    )

    with pytest.raises(ValueError, match="ensemble"):
        initialize_weights(build_model(config), out / SEGMENTATION_DIR, config)
    with pytest.raises(ValueError, match="ensemble"):
        export_models(tiny_runs[0], [out / SEGMENTATION_DIR, other], tmp_path / "again")
    with pytest.raises(ValueError, match="twice"):
        export_models(tiny_runs[0], [other, Path(f"{other}/")], tmp_path / "twice")
    with pytest.raises(ValueError, match="neither a training run"):
        export_models(tiny_runs[0], [other, tmp_path / "nowhere"], tmp_path / "missing")
    # refused before anything is written
    assert not [
        p.name for p in tmp_path.iterdir() if p.name in ("again", "twice", "missing") or "exporting" in p.name
    ]
