from __future__ import annotations

from pathlib import Path

import pytest

from flare_seg.training.config import load_config


def test_defaults_file_and_flags_layer_in_order(tmp_path):
    cfg = tmp_path / "seg.yaml"
    cfg.write_text("task: segmentation\nsteps: 50\nlearning_rate: 0.01\nfilters: [4, 8, 16, 16]\n")
    c = load_config("segmentation", cfg, steps=7, seed=None)
    assert c.steps == 7  # flag wins
    assert c.learning_rate == 0.01  # file beats default
    assert c.filters == (4, 8, 16, 16)
    assert load_config("segmentation").steps != 7


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown training settings: \\['stepz'\\]"):
        load_config("localization", stepz=3)
    with pytest.raises(ValueError, match="patch_size_vox"):
        load_config("segmentation", patch_size_vox=30)
    wrong = tmp_path / "loc.yaml"
    wrong.write_text("task: localization\n")
    with pytest.raises(ValueError, match="is a localization config"):
        load_config("segmentation", wrong)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(ValueError, match=r"empty\.yaml holds no settings"):
        load_config("segmentation", empty)


def test_config_yaml_round_trips(tmp_path):
    import yaml

    c = load_config("localization", steps=11)
    raw = yaml.safe_load(c.to_yaml())
    assert load_config(raw.pop("task"), None, **raw) == c


def test_changed_settings_ignore_a_longer_run_but_not_other_changes():
    from flare_seg.training.config import changed_settings

    first = load_config("segmentation", steps=100)
    assert changed_settings(first.to_yaml(), load_config("segmentation", steps=500, log_every=5)) == []
    changed = changed_settings(first.to_yaml(), load_config("segmentation", steps=500, learning_rate=1e-4))
    assert changed == [f"learning_rate: {first.learning_rate!r} -> 0.0001"]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path):
    """The recipe's configs name their task and only known settings (a typo or an empty file would
    train something else than the recipe says)."""
    import yaml

    task = yaml.safe_load(path.read_text())["task"]
    config = load_config(task, path)
    assert config.task == task
    assert config.steps > 0
