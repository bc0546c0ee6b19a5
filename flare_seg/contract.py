"""The SavedModel contract shared by export (training) and loading (service).

Defined once here: directory names, signature names, tensor names, dtypes, channels-last
(NDHWC) shapes, spacings, intensity windows, valid sizes and the label map. Export writes it
into ``manifest.json`` next to the models; the service reads that manifest (not these defaults)
and refuses models whose manifest does not match the contract it was written for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flare_seg.labels import LABELS, NUM_CLASSES, NUM_ORGANS

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "flare-seg-models"
FORMAT_VERSION = 1

LOCALIZATION_DIR = "localization"
SEGMENTATION_DIR = "segmentation"
TF_UTILS_DIR = "tf_utils_module"

SERVING_ENDPOINT = "serve"  # the one endpoint of each network SavedModel
LOCALIZATION_OUTPUT = "heatmaps"
SEGMENTATION_OUTPUT = "probabilities"
SEGMENTATION_INPUT_CHANNELS = 4  # windowed intensity + (z, y, x) position relative to the organ box centre

# tf_utils_module function names (each a tf.function with a fixed input signature)
TF_UTILS_FUNCTIONS = (
    "crop_resample_inplane",
    "resample_z",
    "normalize_localization",
    "normalize_segmentation",
    "box_from_heatmaps",
    "resample_taps",
    "label_cells",
    "labels_at",
)


@dataclass(frozen=True)
class ModelContract:
    """Numbers both stages agree on. Spacings in mm, windows in HU, sizes in voxels."""

    localization_spacing_mm: float = 6.0
    segmentation_spacing_mm: float = 2.0
    localization_window_hu: tuple[float, float] = (-1000.0, 1000.0)
    segmentation_window_hu: tuple[float, float] = (-300.0, 400.0)
    localization_size_multiple: int = 8  # valid sizes: multiples of this on every axis
    segmentation_size_multiple: int = 8
    localization_max_size_vox: int = 128  # per axis; larger volumes are resampled more coarsely
    segmentation_max_size_vox: int = 160
    # added around the localized organ box; the crop is then fitted to a valid network size,
    # keeping at least half of it
    box_margin_mm: float = 20.0
    heatmap_threshold: float = 0.5
    coordinate_scale_mm: float = 100.0  # position channels are (mm from box centre) / this
    labels: dict[int, str] = field(default_factory=lambda: dict(LABELS))

    @property
    def localization_channels(self) -> int:
        return NUM_ORGANS

    @property
    def segmentation_classes(self) -> int:
        return NUM_CLASSES

    def signatures(self) -> dict[str, Any]:
        """Human- and machine-readable description of inputs and outputs (channels-last)."""
        return {
            LOCALIZATION_DIR: {
                "endpoint": SERVING_ENDPOINT,
                "inputs": {
                    "image": {
                        "dtype": "float32",
                        "shape": [1, None, None, None, 1],
                        "axes": "NDHWC (z, y, x) on an LPS grid",
                        "value_range": [-1.0, 1.0],
                        "size_rule": f"each spatial size a multiple of {self.localization_size_multiple}",
                    }
                },
                "outputs": {
                    LOCALIZATION_OUTPUT: {
                        "dtype": "float32",
                        "shape": [1, None, None, None, self.localization_channels],
                        "channels": [LABELS[k] for k in sorted(LABELS) if k != 0],
                        "value_range": [0.0, 1.0],
                    }
                },
            },
            SEGMENTATION_DIR: {
                "endpoint": SERVING_ENDPOINT,
                "inputs": {
                    "image": {
                        "dtype": "float32",
                        "shape": [1, None, None, None, SEGMENTATION_INPUT_CHANNELS],
                        "axes": "NDHWC (z, y, x) on an LPS grid",
                        "channels": ["intensity", "z_mm", "y_mm", "x_mm"],
                        "size_rule": f"each spatial size a multiple of {self.segmentation_size_multiple}",
                    }
                },
                "outputs": {
                    SEGMENTATION_OUTPUT: {
                        "dtype": "float32",
                        "shape": [1, None, None, None, self.segmentation_classes],
                        "channels": [LABELS[k] for k in sorted(LABELS)],
                        "value_range": [0.0, 1.0],
                    }
                },
            },
            TF_UTILS_DIR: {"functions": list(TF_UTILS_FUNCTIONS)},
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        d["localization_window_hu"] = list(self.localization_window_hu)
        d["segmentation_window_hu"] = list(self.segmentation_window_hu)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelContract:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown contract fields {sorted(unknown)}")
        kwargs = dict(d)
        kwargs["labels"] = {int(k): v for k, v in d.get("labels", LABELS).items()}
        for key in ("localization_window_hu", "segmentation_window_hu"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)


class ManifestError(ValueError):
    """The models directory or its manifest does not match what this code expects."""


def read_manifest(models_dir: Path) -> dict[str, Any]:
    """Read and check ``models_dir/manifest.json``; raises ManifestError with the reason."""
    path = Path(models_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {models_dir}: not a flare-seg models directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    contract = ModelContract.from_json(manifest.get("contract", {}))
    if contract.labels != LABELS:
        raise ManifestError(f"{path}: label map {contract.labels} differs from this code's {LABELS}")
    for sub in (LOCALIZATION_DIR, SEGMENTATION_DIR, TF_UTILS_DIR):
        if not (Path(models_dir) / sub / "saved_model.pb").is_file():
            raise ManifestError(f"{models_dir}/{sub} is not a SavedModel (no saved_model.pb)")
    return manifest
