"""Load the three SavedModels with plain TensorFlow and check them against the contract.

No training code is imported: the networks and the traced preprocessing come from the
SavedModels alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from flare_seg.contract import (
    LOCALIZATION_DIR,
    SEGMENTATION_DIR,
    SERVING_ENDPOINT,
    TF_UTILS_DIR,
    TF_UTILS_FUNCTIONS,
    ManifestError,
    ModelContract,
    read_manifest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModels:
    localization: Any  # callable: image (1,D,H,W,1) float32 -> {"heatmaps": (1,D,H,W,organs)}
    segmentation: Any  # callable: image (1,D,H,W,4) float32 -> {"probabilities": (1,D,H,W,classes)}
    tf_utils: Any  # the tf_utils_module SavedModel (functions named in TF_UTILS_FUNCTIONS)
    manifest: dict[str, Any]
    contract: ModelContract
    saved_models: tuple[Any, ...] = ()  # the loaded objects; their functions need them alive
    precision: str = "float32"  # the networks' arithmetic: "float32" or "mixed_float16" (choose_precision)

    @property
    def model_version(self) -> str:
        return str(self.manifest.get("model_version", "unknown"))


# The ``precision`` setting: "auto" runs the networks in mixed float16 on GPUs with float16 tensor
# cores (compute capability 7.0 and up) and in float32 elsewhere; "float32" never converts.
PRECISIONS = ("auto", "float32")
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)


def choose_precision(setting: str, gpu_capabilities: list[tuple[int, int] | None]) -> str:
    """The arithmetic the networks will use: "mixed_float16" when ``setting`` is "auto" and every
    visible GPU has float16 tensor cores, else "float32". ``gpu_capabilities``: one CUDA compute
    capability per GPU (None when unknown)."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {setting!r}")
    if setting == "float32" or not gpu_capabilities:
        return "float32"
    if all(c is not None and tuple(c) >= MIXED_PRECISION_MIN_CAPABILITY for c in gpu_capabilities):
        return "mixed_float16"
    return "float32"


def _configure_precision(setting: str) -> str:
    """Turn on TensorFlow's automatic mixed precision (a graph rewrite: convolutions and their
    neighbours in float16, softmax, reductions and the outputs in float32) when
    ``choose_precision`` says so, and off otherwise. It is a process-wide option that applies to
    every function TensorFlow optimizes afterwards, so this runs before the first forward pass.
    Returns the precision in use."""
    capabilities: list[tuple[int, int] | None] = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except (RuntimeError, ValueError):
            capability = None
        capabilities.append(tuple(capability) if capability else None)
    precision = choose_precision(setting, capabilities)
    # Process-wide: set either way, so that a later load with another setting is not left with
    # the previous one's rewrite.
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision": precision == "mixed_float16"})
    log.info("network precision: %s (setting %s, GPUs %s)", precision, setting, capabilities or "none")
    return precision


def load_models(models_dir: Path, precision: str = "auto") -> LoadedModels:
    """Load and check ``models_dir``; raises ManifestError naming what does not match.
    ``precision``: one of PRECISIONS (see ``choose_precision``)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ManifestError(f"models directory {models_dir} does not exist")
    manifest = read_manifest(models_dir)
    _configure_gpus()
    chosen = _configure_precision(precision)
    warning = onednn_warning()
    if warning:
        log.warning("%s", warning)
    contract = ModelContract.from_json(manifest["contract"])
    expected = contract.signatures()
    if manifest.get("signatures") != _jsonish(expected):
        raise ManifestError(f"{models_dir}: the manifest's signatures differ from what this service expects")
    loaded = {}
    for name in (LOCALIZATION_DIR, SEGMENTATION_DIR, TF_UTILS_DIR):
        try:
            loaded[name] = tf.saved_model.load(str(models_dir / name))
        except Exception as exc:  # TensorFlow raises many types for a damaged SavedModel
            raise ManifestError(f"cannot load SavedModel {models_dir / name}: {exc}") from None
    for name in (LOCALIZATION_DIR, SEGMENTATION_DIR):
        if not hasattr(loaded[name], SERVING_ENDPOINT):
            raise ManifestError(f"{models_dir / name} has no '{SERVING_ENDPOINT}' endpoint")
    missing = [f for f in TF_UTILS_FUNCTIONS if not hasattr(loaded[TF_UTILS_DIR], f)]
    if missing:
        raise ManifestError(f"{models_dir / TF_UTILS_DIR} lacks functions {missing}")
    log.info("loaded models %s from %s", manifest.get("model_version"), models_dir)
    return LoadedModels(
        getattr(loaded[LOCALIZATION_DIR], SERVING_ENDPOINT),
        getattr(loaded[SEGMENTATION_DIR], SERVING_ENDPOINT),
        loaded[TF_UTILS_DIR],
        manifest,
        contract,
        tuple(loaded.values()),
        chosen,
    )


def _configure_gpus() -> None:
    """Let GPU memory grow as needed instead of reserving the whole device up front."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already initialized, or not applicable to this allocator
            log.debug("could not set memory growth on %s", gpu.name)


def onednn_enabled() -> bool | None:
    """Whether TensorFlow's oneDNN CPU kernels are on in this process (None: cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - a TensorFlow build without the query
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_warning() -> str | None:
    """A message when the networks will run on the CPU without oneDNN although nobody turned it
    off: TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported, so a program that
    imports TensorFlow before flare_seg gets the slow kernels (3-4x slower 3D convolutions)."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip() == "0" or tf.config.list_physical_devices("GPU"):
        return None
    if onednn_enabled() is not False:
        return None
    return (
        "TensorFlow's oneDNN CPU kernels are off (TensorFlow was imported before flare_seg): "
        "the networks run 3-4x slower on the CPU; import flare_seg before tensorflow or set "
        "TF_ENABLE_ONEDNN_OPTS=1 before starting Python"
    )


def _jsonish(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists, keys strings)."""
    import json

    return json.loads(json.dumps(value))
