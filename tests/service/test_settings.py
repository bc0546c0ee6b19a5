"""Tests for flare_seg.service.settings: defaults, environment, overrides, fail-fast validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from flare_seg.resources import PACKAGED_MODELS_DIR
from flare_seg.service import settings as settings_module
from flare_seg.service.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults() -> None:
    s = load_settings()
    assert s.models_dir == PACKAGED_MODELS_DIR and s.models_dir_source == "packaged"
    assert (s.models_dir / "manifest.json").is_file()
    assert (s.memory_budget_mb, s.max_upload_mb, s.max_voxels) == (256, 2048, 1_500_000_000)
    assert (s.queue_size, s.job_ttl_s) == (4, 3600)
    assert s.work_dir is None and s.api_token is None
    assert (s.host, s.port, s.log_level) == ("0.0.0.0", 8000, "info")
    assert s.precision == "auto"


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLARE_SEG_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("FLARE_SEG_QUEUE_SIZE", "7")
    monkeypatch.setenv("FLARE_SEG_API_TOKEN", "s3cret")
    monkeypatch.setenv("FLARE_SEG_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("FLARE_SEG_PORT", "9000")
    monkeypatch.setenv("FLARE_SEG_PRECISION", "float32")
    s = load_settings(port=8123, host=None)  # None: an unset CLI flag, ignored
    assert s.precision == "float32"
    assert s.models_dir == tmp_path and s.queue_size == 7 and s.log_level == "debug"
    assert s.api_token is not None and s.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.port == 8123 and s.host == "0.0.0.0"


def test_empty_token_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLARE_SEG_API_TOKEN", "")
    assert load_settings().api_token is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FLARE_SEG_MEMORY_BUDGET_MB", "10", "greater than or equal to 64"),
        ("FLARE_SEG_MAX_UPLOAD_MB", "0", "greater than or equal to 1"),
        ("FLARE_SEG_MAX_VOXELS", "-5", "greater than or equal to 1"),
        ("FLARE_SEG_QUEUE_SIZE", "zero", "valid integer"),
        ("FLARE_SEG_JOB_TTL_S", "5", "greater than or equal to 10"),
        ("FLARE_SEG_PORT", "70000", "less than or equal to 65535"),
        ("FLARE_SEG_LOG_LEVEL", "verbose", "debug, info, warning, error"),
        ("FLARE_SEG_PRECISION", "float16", "'auto' or 'float32'"),
    ],
)
def test_bad_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "\n" not in text  # the commands print the first line only
    assert f"{variable}={value!r}: " in text
    assert message in text


def test_queue_size_zero_names_variable_value_and_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLARE_SEG_QUEUE_SIZE", "0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == "invalid settings: FLARE_SEG_QUEUE_SIZE='0': must be greater than or equal to 1"


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="setting 'queue_size'"):
        load_settings(queue_size=0)
    with pytest.raises(SettingsError, match="unknown setting"):
        load_settings(queue_sise=3)


def test_token_value_never_shown_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLARE_SEG_PORT", "x")
    with pytest.raises(SettingsError) as info:
        load_settings(api_token=12345)  # wrong type: error must not echo it
    assert "12345" not in str(info.value)


def test_check_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SettingsError, match=r"^--models-dir: models folder .*nope does not exist"):
        load_settings(models_dir=missing).check_paths()
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(SettingsError, match=r"^--models-dir: .* is not a folder"):
        load_settings(models_dir=a_file).check_paths()
    monkeypatch.setenv("FLARE_SEG_MODELS_DIR", str(missing))
    with pytest.raises(SettingsError, match=r"^FLARE_SEG_MODELS_DIR: models folder .*nope does not exist"):
        load_settings().check_paths()
    monkeypatch.delenv("FLARE_SEG_MODELS_DIR")
    load_settings().check_paths()  # the packaged models
    monkeypatch.setattr(settings_module, "PACKAGED_MODELS_DIR", missing)
    with pytest.raises(SettingsError, match=r"models installed with flare-seg are missing"):
        load_settings().check_paths()
    with pytest.raises(SettingsError, match="FLARE_SEG_WORK_DIR"):
        load_settings(models_dir=tmp_path, work_dir=a_file / "sub").check_paths()
    work = tmp_path / "work" / "deeper"
    load_settings(models_dir=tmp_path, work_dir=work).check_paths()
    assert work.is_dir()


def test_no_settings_at_import() -> None:
    """No Settings object lives at module level (see also tests/service/api's import test with a bad env)."""
    assert not any(isinstance(value, Settings) for value in vars(settings_module).values())


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]


def test_the_image_byte_limit_follows_the_memory_budget(clean_env: None) -> None:
    from flare_seg.service.settings import load_settings

    MiB = 1024 * 1024
    assert load_settings().max_image_bytes == 2048 * MiB
    assert load_settings(memory_budget_mb=1024).max_image_bytes == 8192 * MiB
    assert load_settings(memory_budget_mb=64).max_image_bytes == 2048 * MiB  # never under 2 GiB by default
    assert load_settings(memory_budget_mb=64, max_image_mb=100).max_image_bytes == 100 * MiB
