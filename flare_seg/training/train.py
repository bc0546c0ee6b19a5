"""Training loops for the localization net and the SpatialConfiguration-Net.

A run directory holds ``config.yaml``, ``data.json`` (which cases trained and validated),
``checkpoints/`` (model, optimizer and step; a rerun resumes from the latest) and
``metrics.json`` (validation figures at the end). ``tf.distribute.MirroredStrategy`` is used when
more than one GPU is visible; mixed precision when a GPU is present (config ``mixed_precision``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import keras
import numpy as np
import tensorflow as tf
import yaml

from flare_seg.contract import MANIFEST_NAME, SEGMENTATION_INPUT_CHANNELS, ModelContract
from flare_seg.labels import NUM_CLASSES, NUM_ORGANS, ORGANS
from flare_seg.progress import Progress
from flare_seg.service.localization import extend_cut_box
from flare_seg.training import tf_utils
from flare_seg.training.augment import Appearance, randomize_appearance
from flare_seg.training.config import TrainConfig, changed_settings
from flare_seg.training.data import ORGAN_COLUMNS, OrganSlices, PreparedCase, list_cases, prepare_dataset
from flare_seg.training.interrupt import StopOnSignal, TrainingInterrupted
from flare_seg.training.networks import (
    COMBINATIONS,
    Combine,
    localization_net,
    spatial_configuration_net,
)
from flare_seg.training.widen import widen_unet

log = logging.getLogger(__name__)

AIR_HU = -1024.0
FEW_TRAINING_CASES = 5  # fewer training cases than this after the validation split: a warning


def build_model(config: TrainConfig, pool_dtype: str | None = None) -> keras.Model:
    """The network of ``config``; ``pool_dtype`` overrides the global dtype policy of its pooling."""
    if config.task == "localization":
        return localization_net(NUM_ORGANS, config.filters, pool_dtype=pool_dtype)
    return spatial_configuration_net(
        NUM_CLASSES,
        SEGMENTATION_INPUT_CHANNELS,
        filters=config.filters,
        sc_filters=config.sc_filters,
        sc_downsample=config.sc_downsample,
        pool_dtype=pool_dtype,
        combine=config.sc_combine,
    )


def checkpoint_for(
    model: keras.Model, optimizer: Any | None = None
) -> tuple[tf.train.Checkpoint, tf.Variable]:
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    objects: dict[str, Any] = {"model": model, "step": step}
    if optimizer is not None:
        objects["optimizer"] = optimizer
    return tf.train.Checkpoint(**objects), step


def restore_model(run_dir: Path, config: TrainConfig) -> tuple[keras.Model, int]:
    """The model of a run with its latest checkpoint's weights, and that checkpoint's step."""
    model = build_model(config)
    ckpt, step = checkpoint_for(model)
    latest = tf.train.latest_checkpoint(str(Path(run_dir) / "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}/checkpoints: train first")
    ckpt.restore(latest).expect_partial()
    return model, int(step.numpy())


def initialize_weights(model: keras.Model, source: Path, config: TrainConfig) -> None:
    """Copy weights into ``model`` from an exported network (a SavedModel folder such as
    ``saved_models/localization``) or from a run directory's latest checkpoint, matched by name;
    every weight must be found with the same shape.

    A segmentation network with ``sc_combine: sum`` may start from a ``product`` one whose spatial
    term is saturated (a constant +-1 per class, see ``flare_seg.training.networks``): the constant
    is folded into the local scores, which gives the same logits, and the spatial branch starts
    afresh at zero.

    A network with wider U-Net levels (``filters``) than the source's starts as the source's
    network widened without changing its outputs (``flare_seg.training.widen``)."""
    source_combine = _source_combine(source, config)
    source_config = replace(config, sc_combine=source_combine) if config.task == "segmentation" else config
    recorded_filters = _recorded_config(source).get("filters")
    if recorded_filters is not None:
        source_config = replace(source_config, filters=tuple(int(f) for f in recorded_filters))
    if (source / "checkpoints").is_dir():
        trained, _ = restore_model(source, source_config)
        values = {w.path: w.numpy() for w in trained.weights}
    elif (source / "saved_model.pb").is_file():
        loaded = tf.saved_model.load(str(source))
        if len(loaded.variables) != len(model.weights):
            raise ValueError(
                f"init_from {source}: it holds {len(loaded.variables)} weights where this network has "
                f"{len(model.weights)} (an ensemble of several networks, or another architecture): "
                f"start from one of its training runs instead"
            )
        values = {v.name.split(":")[0]: v.numpy() for v in loaded.variables}
    else:
        raise FileNotFoundError(f"init_from {source}: neither an exported network nor a run directory")
    if source_config.filters != config.filters:
        prefix, head = ("loc", "heatmaps") if config.task == "localization" else ("la", "local_appearance")
        try:
            values = widen_unet(values, prefix, head, source_config.filters, config.filters, config.seed)
        except ValueError as err:
            raise ValueError(f"init_from {source}: {err}") from None
        log.info(
            "widened %s from filters %s to %s", source, list(source_config.filters), list(config.filters)
        )
    keep_spatial = True
    if config.task == "segmentation" and source_combine != config.sc_combine:
        if (source_combine, config.sc_combine) != ("product", "sum"):
            raise ValueError(
                f"init_from {source}: a {source_combine} network cannot start a {config.sc_combine} "
                "one (only product -> sum is supported)"
            )
        values = _fold_saturated_spatial(values, source_config, source)
        keep_spatial = False
    for weight in model.weights:
        if not keep_spatial and weight.path.startswith("sc_"):
            continue  # the spatial branch of a sum network starts afresh (sc_out at zero)
        value = values.get(weight.path)
        if value is None or value.shape != tuple(weight.shape):
            found = None if value is None else value.shape
            raise ValueError(
                f"init_from {source}: weight {weight.path} {tuple(weight.shape)} not found ({found})"
            )
        weight.assign(value)


def _source_combine(source: Path, config: TrainConfig) -> Combine:
    """How the segmentation network at ``source`` (a run or an exported network) combines its
    branches, from its recorded config; networks recorded before the choice existed are products."""
    if config.task != "segmentation":
        return config.sc_combine
    combine = _recorded_config(source).get("sc_combine", "product")
    if combine not in COMBINATIONS:
        raise ValueError(f"init_from {source}: unknown sc_combine {combine!r} in its recorded config")
    return cast(Combine, combine)


def _recorded_config(source: Path) -> dict[str, Any]:
    """The training config recorded with ``source`` (a run or an exported network); {} if none."""
    if (source / "config.yaml").is_file():
        return yaml.safe_load((source / "config.yaml").read_text()) or {}
    if (source.parent / MANIFEST_NAME).is_file():
        manifest = json.loads((source.parent / MANIFEST_NAME).read_text())
        return ((manifest.get("training") or {}).get(source.name) or {}).get("config") or {}
    return {}


SATURATED = 0.999  # |tanh| above this everywhere: the product network's spatial term is a constant


def _fold_saturated_spatial(
    values: dict[str, np.ndarray], product_config: TrainConfig, source: Path
) -> dict[str, np.ndarray]:
    """``values`` of a product network with its constant spatial term multiplied into the local
    scores' 1x1 convolution; an error where the term is not a constant +-1 (it carries
    information that a sum network would lose)."""
    product = build_model(product_config)
    for weight in product.weights:
        weight.assign(values[weight.path])
    branch = keras.Model(product.input, product.get_layer("spatial_configuration").output)
    shape = (1, 32, 32, 32, product.input.shape[-1])
    noise = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
    probes = [np.zeros(shape, np.float32), noise]
    spatial = np.concatenate([branch(x).numpy().reshape(-1, NUM_CLASSES) for x in probes])
    sign = np.sign(spatial[0])
    if np.any(np.abs(spatial) < SATURATED) or np.any(np.sign(spatial) != sign):
        raise ValueError(
            f"init_from {source}: its spatial configuration term is not a constant +-1 "
            f"(range {spatial.min():.3f}..{spatial.max():.3f}), so it cannot be folded into a sum network"
        )
    folded = dict(values)
    for name in ("local_appearance/kernel", "local_appearance/bias"):
        folded[name] = values[name] * sign.astype(values[name].dtype)
    return folded


# ----------------------------------------------------------------------------- losses


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, channels: slice = slice(None)) -> tf.Tensor:
    """1 - mean soft Dice over the selected channels (computed over the whole batch volume)."""
    t, p = y_true[..., channels], y_pred[..., channels]
    axes = tf.range(tf.rank(t) - 1)
    inter = tf.reduce_sum(t * p, axis=axes)
    denom = tf.reduce_sum(t, axis=axes) + tf.reduce_sum(p, axis=axes)
    return 1.0 - tf.reduce_mean((2.0 * inter + 1.0) / (denom + 1.0))


def localization_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true[..., tf.newaxis], y_pred[..., tf.newaxis]))
    return bce + soft_dice_loss(y_true, y_pred)


def segmentation_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    ce = tf.reduce_mean(keras.losses.categorical_crossentropy(y_true, y_pred))
    return ce + soft_dice_loss(y_true, y_pred, slice(1, None))


# ----------------------------------------------------------------------------- samplers


def compress_contrast(hu: np.ndarray, offset_hu: float, slope: float) -> np.ndarray:
    """Monotone piecewise-linear HU map: unchanged below -100 and above 600 HU; 20 HU goes to
    20 + ``offset_hu`` and 250 HU to 20 + ``offset_hu`` + 230 * ``slope`` (slope < 1 compresses the
    enhanced soft-tissue range the way an unenhanced scan looks)."""
    knots_x = [-100.0, 20.0, 250.0, 600.0]
    knots_y = [-100.0, 20.0 + offset_hu, 20.0 + offset_hu + 230.0 * slope, 600.0]
    inside = (hu > knots_x[0]) & (hu < knots_x[-1])
    out = hu.copy()
    out[inside] = np.interp(hu[inside], knots_x, knots_y)
    return out


def _augment_hu(
    rng: np.random.Generator, hu: np.ndarray, config: TrainConfig, labels: np.ndarray | None = None
) -> np.ndarray:
    hu = randomize_appearance(rng, hu, labels, Appearance(**config.appearance))
    if rng.random() < config.contrast_compression_prob:
        hu = compress_contrast(hu, rng.uniform(0.0, 30.0), rng.uniform(0.12, 0.5))
    scale = rng.uniform(1 - config.intensity_scale, 1 + config.intensity_scale)
    shift = rng.uniform(-config.intensity_shift_hu, config.intensity_shift_hu)
    noise = rng.normal(0.0, rng.uniform(0.0, config.noise_hu), hu.shape).astype(np.float32)
    return (hu * scale + shift + noise).astype(np.float32)


def crop_field_of_view(
    rng: np.random.Generator, image: np.ndarray, target: np.ndarray, min_slices: int
) -> tuple[np.ndarray, np.ndarray]:
    """The slices [a, b) of a whole-body volume and its targets, as a scan of a shorter field of
    view: b - a uniform between ``min_slices`` and all of them, placed uniformly (the top cut, the
    bottom, or both). Cut organs keep their targets on the slices that remain."""
    d = image.shape[0]
    if d <= min_slices:
        return image, target
    length = int(rng.integers(min_slices, d + 1))
    start = int(rng.integers(0, d - length + 1))
    return image[start : start + length], target[start : start + length]


def localization_samples(
    cases: list[PreparedCase], config: TrainConfig, contract: ModelContract, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (input (D,H,W,1), target (D,H,W,organs)) pairs, padded to valid sizes; with
    ``config.fov_crop_prob``, of a shorter field of view (``crop_field_of_view``)."""
    rng = np.random.default_rng(seed)
    min_slices = max(1, round(config.fov_min_mm / contract.localization_spacing_mm))
    while True:
        case = cases[rng.integers(len(cases))]
        image, occupancy = case.loc_image, case.loc_target
        if config.fov_crop_prob > 0 and rng.random() < config.fov_crop_prob:
            image, occupancy = crop_field_of_view(rng, image, occupancy, min_slices)
        organs = np.where(occupancy.max(axis=-1) > 0.5, occupancy.argmax(axis=-1) + 1, 0)
        hu = _augment_hu(rng, image, config, organs)
        x = tf_utils.normalize_localization(tf.constant(hu), contract)[0]
        target = np.zeros((*x.shape[:3], occupancy.shape[-1]), np.float32)
        d, h, w = occupancy.shape[:3]
        target[:d, :h, :w] = occupancy
        yield x.numpy(), target


def sample_scan_cut(rng: np.random.Generator, case: PreparedCase, min_mm: float) -> tuple[int, int]:
    """Slices [z0, z1) of a case's cached box kept as a shorter scan whose top face, bottom face
    or both cut through the organs (uniformly within their box), keeping at least ``min_mm`` of
    it (or all of it when it is shorter) and at least 16 slices."""
    d = case.seg_image.shape[0]
    sz = float(case.seg_spacing_mm_zyx[0])
    b0, b1 = (float(v) / sz for v in case.organ_box_mm[:, 0])
    keep = min(max(min_mm / sz, 16.0), b1 - b0)
    z0, z1 = 0.0, float(d)
    kind = int(rng.integers(3))  # 0: the top cut, 1: the bottom, 2: both
    if kind == 0:
        z1 = rng.uniform(b0 + keep, b1)
    elif kind == 1:
        z0 = rng.uniform(b0, b1 - keep)
    else:
        z0 = rng.uniform(b0, b1 - keep)
        z1 = rng.uniform(z0 + keep, max(b1, z0 + keep))
    lo, hi = max(0, int(np.floor(z0))), min(d, int(np.ceil(z1)))
    if hi - lo < 16:
        lo, hi = max(0, min(lo, hi - 16)), min(d, max(hi, lo + 16))
    return lo, hi


def visible_organ_box_mm(slices: OrganSlices, z0: int, z1: int, spacing_mm_zyx: np.ndarray) -> np.ndarray:
    """The organs' box (2, 3) in mm from the grid's leading edge as inference computes it for a
    scan of slices [z0, z1) of a case (``slices``: its ``PreparedCase.organ_slices``): each organ's
    box on those slices, extended past a face it reaches to its typical length (``extend_cut_box``)."""
    offset = np.array([z0, 0, 0], float)
    los, his = [], []
    for k, name in ORGANS.items():
        box = slices.organ_box_edges(k, z0, z1)
        if box is None:
            continue
        lo, hi = extend_cut_box(name, box[0], box[1], spacing_mm_zyx, (z1 - z0, np.inf, np.inf))
        los.append(lo + offset)
        his.append(hi + offset)
    return np.stack([np.min(los, axis=0), np.max(his, axis=0)]) * np.asarray(spacing_mm_zyx, float)


def segmentation_patch(
    rng: np.random.Generator, case: PreparedCase, config: TrainConfig, contract: ModelContract
) -> tuple[np.ndarray, np.ndarray]:
    """One training patch: (P,P,P,4) network input and (P,P,P) labels, around an organ voxel or
    anywhere. With ``config.fov_crop_prob``, the case is first cut to a shorter scan
    (``sample_scan_cut``): the patch then ends at a face it crosses, as the network's input ends
    at the scan's face at inference (its depth a multiple of 8, at least 16), and the box centre
    is the one inference computes for that scan (``visible_organ_box_mm``)."""
    p = config.patch_size_vox
    shape = np.asarray(case.seg_image.shape)
    spacing = case.seg_spacing_mm_zyx
    z0, z1 = 0, int(shape[0])
    box_mm = case.organ_box_mm
    if config.fov_crop_prob > 0 and rng.random() < config.fov_crop_prob:
        z0, z1 = sample_scan_cut(rng, case, config.fov_min_mm)
        box_mm = visible_organ_box_mm(case.organ_slices, z0, z1, spacing)
    counts = case.organ_slices.counts[z0:z1]
    if rng.random() < config.foreground_fraction:
        present = [k for k in ORGANS if counts[:, ORGAN_COLUMNS[k]].any()]
        weights = np.array([config.organ_sampling_weights.get(ORGANS[k], 1.0) for k in present], float)
        if weights.sum() <= 0.0:
            weights = np.ones(len(present))
        k = present[rng.choice(len(present), p=weights / weights.sum())]
        # a voxel of the organ, uniformly: its slice in proportion to the organ's voxels there
        per_slice = counts[:, ORGAN_COLUMNS[k]]
        z = z0 + int(rng.choice(len(per_slice), p=per_slice / per_slice.sum()))
        yx = np.argwhere(case.seg_labels[z] == k)
        centre = np.array([z, *yx[rng.integers(len(yx))]]) + rng.integers(-p // 4, p // 4 + 1, 3)
    else:
        centre = rng.integers([z0, 0, 0], [z1, shape[1], shape[2]])
    start = centre - p // 2
    depth = p
    zs, ze = int(start[0]), int(start[0]) + p
    cut_below, cut_above = z0 > 0 and zs < z0, z1 < shape[0] and ze > z1
    if cut_below or cut_above:
        zs, ze = max(zs, z0) if cut_below else zs, min(ze, z1) if cut_above else ze
        depth = max(16, (ze - zs) // 8 * 8)
        if cut_below:  # the face stays where it is; the patch is trimmed on its other side
            start[0] = zs
        else:
            start[0] = ze - depth
    hu = np.full((depth, p, p), AIR_HU, np.float32)
    labels = np.zeros((depth, p, p), np.uint8)
    lo = np.maximum(start, [z0, 0, 0])
    hi = np.minimum(start + np.array([depth, p, p]), [z1, shape[1], shape[2]])
    if np.all(hi > lo):
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
        src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        hu[dst] = case.seg_image[src]
        labels[dst] = case.seg_labels[src]
    box_centre_mm = box_mm.mean(axis=0) + rng.normal(0.0, config.centre_jitter_mm, 3)
    centre_in_patch_mm = box_centre_mm - start * spacing
    # Position channels are (index + 0.5) * spacing - centre: scaling both scales the positions
    # about the box centre, leaving the image as it is.
    scale = np.ones(3)
    if config.position_scale_jitter > 0.0:
        scale = rng.uniform(1.0 - config.position_scale_jitter, 1.0 + config.position_scale_jitter, 3)
    x = tf_utils.normalize_segmentation(
        tf.constant(_augment_hu(rng, hu, config, labels)),
        tf.constant(spacing * scale, tf.float32),
        tf.constant(centre_in_patch_mm * scale, tf.float32),
        contract,
    )[0]
    return x.numpy(), labels


def segmentation_samples(
    cases: list[PreparedCase], config: TrainConfig, contract: ModelContract, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    eye = np.eye(NUM_CLASSES, dtype=np.float32)
    while True:
        x, labels = segmentation_patch(rng, cases[rng.integers(len(cases))], config, contract)
        yield x, eye[labels]


# ----------------------------------------------------------------------------- validation


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def validate_localization(
    model: keras.Model, cases: list[PreparedCase], contract: ModelContract
) -> dict[str, Any]:
    """Per-organ Dice of thresholded heatmaps at ~6 mm, and the organ box's corner error in voxels."""
    dices: dict[str, list[float]] = {name: [] for name in ORGANS.values()}
    box_err = []
    for case in cases:
        x = tf_utils.normalize_localization(tf.constant(case.loc_image), contract)
        d, h, w = case.loc_image.shape
        heat = model(x, training=False).numpy()[0, :d, :h, :w]
        for i, name in enumerate(ORGANS.values()):
            dices[name].append(
                _dice(heat[..., i] > contract.heatmap_threshold, case.loc_target[..., i] > 0.5)
            )
        s, e, found = tf_utils.box_from_heatmaps(tf.constant(heat), tf.constant(contract.heatmap_threshold))
        ts, te, _ = tf_utils.box_from_heatmaps(tf.constant(case.loc_target), tf.constant(0.5))
        if bool(found):
            box_err.append(float(np.abs(np.concatenate([s - ts, e - te])).max()))
    return {
        "dice": {k: float(np.mean(v)) for k, v in dices.items()},
        "max_box_corner_error_vox": float(np.max(box_err)) if box_err else None,
        "box_corner_error_vox": box_err,
        "cases": [c.name for c in cases],
    }


def validate_segmentation(
    model: keras.Model, cases: list[PreparedCase], contract: ModelContract
) -> dict[str, Any]:
    """Per-organ Dice at ~2 mm on each validation case's cached box, with the true box centre."""
    dices: dict[str, list[float]] = {name: [] for name in ORGANS.values()}
    for case in cases:
        x = tf_utils.normalize_segmentation(
            tf.constant(case.seg_image),
            tf.constant(case.seg_spacing_mm_zyx),
            tf.constant(case.organ_box_mm.mean(axis=0), tf.float32),
            contract,
        )
        d, h, w = case.seg_image.shape
        pred = np.argmax(model(x, training=False).numpy()[0, :d, :h, :w], axis=-1)
        for k, name in ORGANS.items():
            dices[name].append(_dice(pred == k, case.seg_labels == k))
    return {"dice": {k: float(np.mean(v)) for k, v in dices.items()}, "cases": [c.name for c in cases]}


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps: int
    metrics: dict[str, Any]


def _strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def train(
    data_dir: Path,
    run_dir: Path,
    config: TrainConfig,
    contract: ModelContract | None = None,
    *,
    cache_dir: Path | None = None,
) -> RunResult:
    """Train ``config.task`` on a FLARE21-layout dataset into ``run_dir`` (resuming if it has checkpoints).

    The resampled cases are cached in ``cache_dir`` (default ``run_dir/cache``; never inside the
    dataset, which may be read-only). SIGINT or SIGTERM saves a checkpoint after the current step
    and raises ``TrainingInterrupted``.

    Stages: record the config, prepare and split the cases, build (or restore) the model and its
    optimizer, run the steps from the task's sample stream, validate and record the metrics."""
    contract = contract or ModelContract()
    run_dir = Path(run_dir)
    _record_config(run_dir, config)
    keras.utils.set_random_seed(config.seed)
    cache = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    train_cases, val_cases = _prepare_cases(Path(data_dir), run_dir, config, contract, cache)
    state = _training_state(run_dir, config)
    seed = config.seed + int(state.step_var.numpy())
    samples, loss_fn, signature = _task_samples(train_cases, config, contract, seed)
    global_batch = config.batch_per_device * state.strategy.num_replicas_in_sync
    stopping = threading.Event()
    dataset = tf.data.Dataset.from_generator(lambda: _until(stopping, samples), output_signature=signature)
    dataset = dataset.padded_batch(global_batch).prefetch(2)
    batches = iter(state.strategy.experimental_distribute_dataset(dataset))
    try:
        _run_steps(state, _distributed_step(state, loss_fn), batches, config)
    finally:
        _close_stream(stopping, batches)

    validate = validate_localization if config.task == "localization" else validate_segmentation
    metrics = validate(state.model, val_cases, contract) if val_cases else {}
    metrics["steps"] = int(state.step_var.numpy())
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("%s validation: %s", config.task, json.dumps(metrics.get("dice", {})))
    keras.mixed_precision.set_global_policy("float32")
    return RunResult(run_dir, int(state.step_var.numpy()), metrics)


def _until(stopping: threading.Event, samples: Iterator[Any]) -> Iterator[Any]:
    """``samples`` until ``stopping`` is set."""
    for sample in samples:
        if stopping.is_set():
            return
        yield sample


def _close_stream(stopping: threading.Event, batches: Iterator[Any]) -> None:
    """End the sample stream and read it to its end, so that no producer thread is inside the
    Python generator when the iterator is freed: TensorFlow's iterator destructor waits for its
    producer threads while holding the interpreter lock, which a producer inside the generator needs,
    and the process would hang (seen after SIGTERM during a segmentation run)."""
    stopping.set()
    with contextlib.suppress(StopIteration, tf.errors.OutOfRangeError):
        for _ in batches:
            pass


def _record_config(run_dir: Path, config: TrainConfig) -> None:
    """Write ``config.yaml``, warning when a run with checkpoints resumes under another config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_config = run_dir / "config.yaml"
    if saved_config.exists() and tf.train.latest_checkpoint(str(run_dir / "checkpoints")):
        previous = saved_config.read_text()
        changed = changed_settings(previous, config)
        if changed:
            log.warning(
                "resuming %s with a changed config (%s); the new one is recorded", run_dir, "; ".join(changed)
            )
        old_steps = (yaml.safe_load(previous) or {}).get("steps")
        if old_steps is not None and old_steps != config.steps:
            log.info("resuming %s: %d steps in all instead of %d", run_dir, config.steps, old_steps)
    saved_config.write_text(config.to_yaml())


def _prepare_cases(
    data_dir: Path, run_dir: Path, config: TrainConfig, contract: ModelContract, cache_dir: Path
) -> tuple[list[PreparedCase], list[PreparedCase]]:
    """The prepared training and validation cases (the last ``val_cases``); recorded in ``data.json``.
    Warns when fewer than ``FEW_TRAINING_CASES`` are left for training."""
    cases = list_cases(data_dir)
    if len(cases) <= config.val_cases:
        raise ValueError(f"{len(cases)} cases: need more than val_cases={config.val_cases}")
    module = tf_utils.TfUtilsModule(contract)
    t0 = time.time()
    prepared = prepare_dataset(
        data_dir,
        cache_dir,
        contract,
        module,
        progress=lambda i, n, name: log.info("prepared %d/%d %s", i, n, name),
    )
    log.info("prepared %d cases in %.0f s", len(prepared), time.time() - t0)
    split = len(prepared) - config.val_cases
    train_cases, val_cases = prepared[:split], prepared[split:]
    if len(train_cases) < FEW_TRAINING_CASES:
        log.warning(
            "only %d of %d cases are left for training after holding out val_cases=%d for validation: "
            "the network will hardly generalize; add cases or lower val_cases",
            len(train_cases),
            len(prepared),
            config.val_cases,
        )
    dataset_meta = _dataset_provenance(data_dir, train_cases, val_cases)
    (run_dir / "data.json").write_text(json.dumps(dataset_meta, indent=2))
    return train_cases, val_cases


@dataclass(frozen=True)
class _TrainingState:
    """A run's model, optimizer, step counter and checkpoints, under its distribution strategy."""

    strategy: tf.distribute.Strategy
    model: keras.Model
    optimizer: Any  # Adam, wrapped in a LossScaleOptimizer under mixed precision
    step_var: tf.Variable
    manager: tf.train.CheckpointManager
    mixed: bool  # mixed float16 precision


def _training_state(run_dir: Path, config: TrainConfig) -> _TrainingState:
    """Build the model and optimizer (mixed precision on a GPU if the config says so), restored from
    the run's latest checkpoint when it has one."""
    gpus = tf.config.list_physical_devices("GPU")
    mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = _strategy()
    with strategy.scope():
        model = build_model(config)
        schedule = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, config.steps, alpha=config.final_learning_rate / config.learning_rate
        )
        optimizer: Any = keras.optimizers.Adam(schedule)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        ckpt, step_var = checkpoint_for(model, optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "checkpoints"), max_to_keep=3)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        log.info("resumed from %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    elif config.init_from:
        initialize_weights(model, Path(config.init_from), config)
        log.info("initialized %s from %s", config.task, config.init_from)
    return _TrainingState(strategy, model, optimizer, step_var, manager, mixed)


LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _task_samples(
    train_cases: list[PreparedCase], config: TrainConfig, contract: ModelContract, seed: int
) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], LossFn, tuple[tf.TensorSpec, tf.TensorSpec]]:
    """The task's endless (input, target) stream, its loss, and the shapes of one sample."""
    in_shape: tuple[int | None, ...]
    if config.task == "localization":
        samples = localization_samples(train_cases, config, contract, seed)
        loss_fn = localization_loss
        in_shape, out_c = (None, None, None, 1), NUM_ORGANS
    else:
        samples = segmentation_samples(train_cases, config, contract, seed)
        loss_fn = segmentation_loss
        p = config.patch_size_vox
        # a patch that ends at a simulated scan face is shallower (fov_crop_prob)
        depth = None if config.fov_crop_prob > 0 else p
        in_shape, out_c = (depth, p, p, SEGMENTATION_INPUT_CHANNELS), NUM_CLASSES
    out_shape = (*in_shape[:3], out_c)
    return samples, loss_fn, (tf.TensorSpec(in_shape, tf.float32), tf.TensorSpec(out_shape, tf.float32))


def _distributed_step(state: _TrainingState, loss_fn: LossFn) -> Callable[[Any, Any], tf.Tensor]:
    """One optimizer step on a distributed batch; returns the loss summed over the replicas."""
    model, optimizer, strategy, mixed = state.model, state.optimizer, state.strategy, state.mixed
    replicas = strategy.num_replicas_in_sync

    def step_fn(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = loss_fn(y, tf.cast(pred, tf.float32)) / replicas
            scaled = optimizer.scale_loss(loss) if mixed else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function(reduce_retracing=True)
    def distributed_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        losses = strategy.run(step_fn, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return distributed_step


def _run_steps(
    state: _TrainingState,
    distributed_step: Callable[[Any, Any], tf.Tensor],
    batches: Iterator[tuple[Any, Any]],
    config: TrainConfig,
) -> None:
    """From the restored step to ``config.steps``: show the loss and speed (a bar on a terminal;
    otherwise a line after the first step, every ``log_every`` steps and at least every 30 s),
    checkpoint every ``checkpoint_every`` steps and at the end. On SIGINT/SIGTERM: checkpoint
    after the current step, then ``TrainingInterrupted``."""
    start_step = int(state.step_var.numpy())
    log.info("%s: steps %d to %d (the first compiles the graph)", config.task, start_step + 1, config.steps)
    recent: list[float] = []
    with (
        StopOnSignal() as stop,
        Progress(config.steps, config.task, "step", initial=start_step, logger=log) as progress,
    ):
        for step in range(start_step, config.steps):
            x, y = next(batches)
            recent.append(float(distributed_step(x, y)))
            state.step_var.assign(step + 1)
            due = (step + 1) % config.log_every == 0
            progress.update(log_now=due, loss=float(np.mean(recent)))
            if due:
                recent = []
            if stop.requested:
                state.manager.save(checkpoint_number=step + 1)
                raise TrainingInterrupted(Path(state.manager.directory).parent, step + 1, stop.signal_name)
            if (step + 1) % config.checkpoint_every == 0:
                state.manager.save(checkpoint_number=step + 1)
    state.manager.save(checkpoint_number=int(state.step_var.numpy()))


def _dataset_provenance(
    data_dir: Path, train_cases: list[PreparedCase], val_cases: list[PreparedCase]
) -> dict:
    meta: dict[str, Any] = {
        "data_dir": str(data_dir.resolve()),
        "train_cases": [c.name for c in train_cases],
        "val_cases": [c.name for c in val_cases],
    }
    described = data_dir / "dataset.json"
    if described.is_file():
        try:
            meta["dataset"] = json.loads(described.read_text())
            meta["dataset"].pop("cases", None)
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", described)
    return meta
