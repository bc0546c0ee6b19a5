"""Service settings: defaults <- environment (``FLARE_SEG_*``) <- explicit overrides (CLI flags).

This is the only module that reads the environment. Nothing is read at import time: call
``load_settings()`` at start-up, then ``Settings.check_paths()`` before serving. A bad value fails
with a ``SettingsError`` that names the environment variable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flare_seg.resources import PACKAGED_MODELS_DIR

ENV_PREFIX = "FLARE_SEG_"
DEFAULT_MIN_IMAGE_MB = 2048  # the least default of max_image_mb
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """An invalid setting; the message names the environment variable and the accepted values."""


class Settings(BaseSettings):
    """Configuration of the inference service (and the parts of it the batch CLI shares).

    Every field can be set with the environment variable ``FLARE_SEG_<FIELD NAME IN CAPITALS>``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    models_dir: Path = Field(
        default_factory=lambda: PACKAGED_MODELS_DIR,
        description="folder holding the SavedModels and their manifest; default: the models "
        "installed with the package",
    )
    memory_budget_mb: int = Field(
        256,
        ge=64,
        description="working memory for one inference beyond its input and output (MiB); bounds the slabs",
    )
    precision: Literal["auto", "float32"] = Field(
        "auto",
        description="network arithmetic: auto = mixed float16 on GPUs with float16 tensor cores "
        "(compute capability >= 7.0), float32 elsewhere; float32 = always float32",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where the networks run: auto = a GPU when TensorFlow sees one; cpu; gpu = require "
        "one (a clear error at start-up when there is none)",
    )
    max_upload_mb: int = Field(2048, ge=1, description="largest accepted upload (MiB)")
    max_voxels: int = Field(1_500_000_000, ge=1, description="largest accepted image, in voxels (x*y*z)")
    queue_size: int = Field(
        4, ge=1, description="requests that may wait for the single inference worker (sync and jobs together)"
    )
    max_image_mb: int | None = Field(
        None,
        ge=1,
        description="largest accepted image, in MiB of voxel data counted at max(2, bytes per voxel) "
        "(what decompressing it writes, and what holding it as int16 takes); default: 8 x memory_budget_mb, "
        "at least 2048",
    )
    max_concurrent_uploads: int = Field(
        8, ge=1, description="uploads received at once (apart from the inference queue); past it: 503"
    )
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, description="longest wait for the next piece of an upload; a stalled upload gets 408"
    )
    upload_min_bytes_per_s: int = Field(
        16384,
        ge=0,
        description="least average upload rate, enforced after upload_idle_timeout_s (0: none); slower: 408",
    )
    job_ttl_s: int = Field(3600, ge=10, description="seconds a finished job and its result are kept")
    work_dir: Path | None = Field(
        None,
        description="folder for uploads, the job records (jobs.sqlite3) and results, kept across restarts "
        "(one server process per folder); default: flare-seg in the system temporary folder",
    )
    api_token: SecretStr | None = Field(
        None,
        description="bearer token required on every endpoint but /health, /ready and the docs; unset: off",
    )
    host: str = Field("0.0.0.0", min_length=1, description="address the server binds to")
    port: int = Field(8000, ge=1, le=65535, description="TCP port the server listens on")
    log_level: str = Field("info", description="one of debug, info, warning, error")
    # Where models_dir came from, for messages: "--models-dir", the variable, or the package.
    _models_dir_source: str = PrivateAttr(default="")

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in LOG_LEVELS:
                raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        # FLARE_SEG_API_TOKEN="" (e.g. from compose's ${VAR:-}) means "no authentication".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def models_dir_source(self) -> str:
        """Where ``models_dir`` was set: "--models-dir" (an override, i.e. the command's flag),
        "FLARE_SEG_MODELS_DIR", or "packaged" (the default: the models installed with the package)."""
        if self._models_dir_source:
            return self._models_dir_source
        if f"{ENV_PREFIX}MODELS_DIR" in os.environ:
            return f"{ENV_PREFIX}MODELS_DIR"
        return "packaged" if self.models_dir == PACKAGED_MODELS_DIR else "models_dir"

    @property
    def max_image_bytes(self) -> int:
        """``max_image_mb`` in bytes; default: 8 x ``memory_budget_mb``, at least 2048 MiB (a small
        budget bounds the working slabs; it should not refuse a 512 x 512 x 2000 int16 CT)."""
        return (self.max_image_mb or max(DEFAULT_MIN_IMAGE_MB, 8 * self.memory_budget_mb)) * 1024 * 1024

    @property
    def work_folder(self) -> Path:
        """``work_dir``, or ``flare-seg`` in the system temporary folder."""
        return self.work_dir if self.work_dir is not None else Path(tempfile.gettempdir()) / "flare-seg"

    def check_paths(self) -> None:
        """Check the paths at start-up (not at import): models_dir must be an existing folder and
        work_dir, when set, a folder that exists or can be created.

        Raises:
            SettingsError: naming the offending environment variable.
        """
        source = self.models_dir_source
        if source == "packaged":
            if not (self.models_dir / "manifest.json").is_file():
                raise SettingsError(
                    f"the models installed with flare-seg are missing ({self.models_dir}): reinstall "
                    f"the package, or give a models folder with --models-dir or {ENV_PREFIX}MODELS_DIR"
                )
        elif not self.models_dir.exists():
            raise SettingsError(f"{source}: models folder {self.models_dir} does not exist")
        elif not self.models_dir.is_dir():
            raise SettingsError(f"{source}: {self.models_dir} is not a folder")
        if self.work_dir is not None:
            try:
                self.work_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SettingsError(f"{ENV_PREFIX}WORK_DIR: cannot create {self.work_dir} ({e})") from None
            if not self.work_dir.is_dir():
                raise SettingsError(f"{ENV_PREFIX}WORK_DIR: {self.work_dir} is not a directory")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the defaults, the ``FLARE_SEG_*`` environment and ``overrides`` (highest priority).

    Overrides whose value is ``None`` are ignored (an unset CLI flag), so
    ``load_settings(port=args.port)`` keeps the environment's port when no flag was given.

    Raises:
        SettingsError: an invalid value or an unknown setting; the message names the variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        settings = Settings(**given)
    except ValidationError as e:
        raise SettingsError(_describe(e, set(given))) from None
    if "models_dir" in given:
        settings._models_dir_source = "--models-dir"
    return settings


def _describe(error: ValidationError, overridden: set[str]) -> str:
    """One line (the commands print only the first): each bad setting's variable, value and rule,
    e.g. ``FLARE_SEG_QUEUE_SIZE='0': must be greater than or equal to 1``."""
    parts = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else "?"
        source = f"setting {field!r}" if field in overridden else f"{ENV_PREFIX}{field.upper()}"
        value = item.get("input")
        shown = "" if field == "api_token" or isinstance(value, dict) else f"={value!r}"
        rule = str(item["msg"]).removeprefix("Value error, ")
        rule = rule.replace("Input should be", "must be", 1).replace("Input should", "must", 1)
        parts.append(f"{source}{shown}: {rule}")
    return "invalid settings: " + "; ".join(parts)
