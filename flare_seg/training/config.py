"""Training configuration: defaults <- YAML file <- command-line overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from flare_seg.labels import ORGANS
from flare_seg.training.augment import Appearance

Task = Literal["localization", "segmentation"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; written to ``RUN_DIR/config.yaml``."""

    task: Task
    steps: int = 2000
    learning_rate: float = 1e-3
    final_learning_rate: float = 5e-5
    filters: tuple[int, ...] = (8, 16, 32, 48)
    sc_filters: int = 16  # segmentation: spatial configuration branch width
    sc_downsample: int = 4  # segmentation: spatial configuration branch scale factor
    # segmentation: how the local and spatial terms make the logits: "product" (local * tanh(spatial),
    # the original SpatialConfiguration-Net) or "sum" (local + spatial, the spatial term starting at
    # zero; see flare_seg.training.networks)
    sc_combine: Literal["product", "sum"] = "product"
    patch_size_vox: int = 64  # segmentation: cubic training patch at ~2 mm
    batch_per_device: int = 1
    foreground_fraction: float = 0.8  # segmentation: patches centred on an organ voxel
    centre_jitter_mm: float = 8.0  # segmentation: simulated localization error of the box centre
    # segmentation: position channels scaled by U(1 - s, 1 + s) about the box centre, per axis, so
    # that the network does not learn one organ layout in millimetres (bodies differ in size and
    # proportion; the box's extent depends on the field of view)
    position_scale_jitter: float = 0.0
    # segmentation: relative frequency of each organ as the centre of foreground patches, by name
    # (unnamed organs weigh 1), e.g. {pancreas: 2.0} for a hard, small organ
    organ_sampling_weights: dict[str, float] = field(default_factory=dict)
    intensity_scale: float = 0.08  # augmentation: HU * U(1 - s, 1 + s)
    intensity_shift_hu: float = 15.0  # augmentation: HU + U(-s, s)
    noise_hu: float = 10.0  # augmentation: + N(0, U(0, s))
    # augmentation: probability of compressing soft-tissue contrast (-100..600 HU), which turns a
    # contrast-enhanced scan into one that looks unenhanced, so organs must be told apart by shape
    # and position rather than by their enhancement
    contrast_compression_prob: float = 0.0
    # both tasks: probability of cutting a sample's scan to a shorter field of view (top, bottom or
    # both; at least ``fov_min_mm`` long): real scans start below the diaphragm, mid-liver or at the
    # kidneys and end anywhere from above the kidneys to the pelvis. Localization samples are cut
    # anywhere; segmentation patches at a face through the organs, where they end (see
    # ``train.segmentation_patch``)
    fov_crop_prob: float = 0.0
    fov_min_mm: float = 100.0
    # augmentation: appearance randomization (flare_seg.training.augment.Appearance fields: prob,
    # organ_shift_hu, tissue_curve_hu, blur_sigma_vox, bias_field_hu, correlated_noise_hu)
    appearance: dict[str, float] = field(default_factory=dict)
    # initial weights of a fresh run (no checkpoint yet): an exported network (e.g.
    # saved_models/localization) or another run's directory (its latest checkpoint)
    init_from: str | None = None
    val_cases: int = 3  # last cases (by name) held out for validation
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250
    mixed_precision: Literal["auto", "on", "off"] = "auto"  # auto: on when a GPU is present
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in ("localization", "segmentation"):
            raise ValueError(f"task must be localization or segmentation, not {self.task!r}")
        if self.steps < 1 or self.batch_per_device < 1:
            raise ValueError("steps and batch_per_device must be >= 1")
        if self.patch_size_vox % 8 or self.patch_size_vox < 16:
            raise ValueError(f"patch_size_vox must be a multiple of 8 and >= 16, not {self.patch_size_vox}")
        if not 0.0 <= self.fov_crop_prob <= 1.0 or self.fov_min_mm <= 0.0:
            raise ValueError(
                "fov_crop_prob must be in [0, 1] and fov_min_mm > 0, "
                f"not {self.fov_crop_prob}, {self.fov_min_mm}"
            )
        if not 0.0 <= self.position_scale_jitter < 0.5:
            raise ValueError(f"position_scale_jitter must be in [0, 0.5), not {self.position_scale_jitter}")
        if self.sc_combine not in ("product", "sum"):
            raise ValueError(f"sc_combine must be product or sum, not {self.sc_combine!r}")
        if not self.filters or any(f < 1 for f in self.filters):
            raise ValueError(f"filters must be positive, not {self.filters}")
        organs = set(ORGANS.values())
        unknown = set(self.organ_sampling_weights) - organs
        if unknown:
            raise ValueError(f"organ_sampling_weights: unknown {sorted(unknown)}, not in {sorted(organs)}")
        if any(not (float(w) >= 0.0) for w in self.organ_sampling_weights.values()):
            raise ValueError(f"organ_sampling_weights must be >= 0, not {self.organ_sampling_weights}")
        try:
            Appearance(**self.appearance)
        except TypeError as exc:
            raise ValueError(f"appearance: {exc}") from None

    def to_yaml(self) -> str:
        d = asdict(self)
        d["filters"] = list(self.filters)
        return yaml.safe_dump(d, sort_keys=False)


DEFAULTS: dict[str, dict[str, Any]] = {
    "localization": {"steps": 1500, "filters": (8, 16, 32, 32), "learning_rate": 2e-3},
    "segmentation": {"steps": 3000, "filters": (8, 16, 32, 48)},
}


def load_config(task: Task, path: Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults for ``task``, then the YAML file's keys, then non-None ``overrides``."""
    values: dict[str, Any] = dict(DEFAULTS[task])
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is None:  # an empty file (a failed write, a wrong path's placeholder) is no run
            raise ValueError(f"{path} holds no settings")
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        if loaded.get("task", task) != task:
            raise ValueError(f"{path} is a {loaded['task']} config, not {task}")
        values.update({k: v for k, v in loaded.items() if k != "task"})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(unknown)}")
    if "filters" in values:
        values["filters"] = tuple(int(f) for f in values["filters"])
    return replace(TrainConfig(task=task), **values)


# Settings that a resumed run may change without it being another run: how long it trains (a
# longer ``--steps`` extends it) and how often it logs and saves.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "checkpoint_every"})


def changed_settings(previous_yaml: str, config: TrainConfig) -> list[str]:
    """The settings of ``config`` that differ from a run's saved ``config.yaml`` text, other than
    those in ``RESUMABLE_CHANGES``, as ``name: old -> new``."""
    previous = yaml.safe_load(previous_yaml) or {}
    current = yaml.safe_load(config.to_yaml())
    names = sorted((set(previous) | set(current)) - RESUMABLE_CHANGES)
    changed = [n for n in names if previous.get(n) != current.get(n)]
    return [f"{n}: {previous.get(n)!r} -> {current.get(n)!r}" for n in changed]
