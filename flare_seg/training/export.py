"""Export the trained networks and the traced preprocessing as three SavedModels plus a manifest.

``OUT/localization``, ``OUT/segmentation`` (Keras ExportArchive, endpoint ``serve``; given several
segmentation runs, one network that averages their class probabilities: an ensemble behind the same
signature, so the service does not know the difference),
``OUT/tf_utils_module`` (tf.Module of traced functions) and ``OUT/manifest.json``: the contract
(signatures, dtypes, channels-last shapes, spacings, valid sizes, labels) and the provenance
(training data, configs, validation metrics, and, when given, full-pipeline evaluation figures).
The export is assembled in a sibling temporary folder and swapped in at the end, so an
interrupted export never leaves a half-written models folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml

import flare_seg
from flare_seg.contract import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCALIZATION_DIR,
    LOCALIZATION_OUTPUT,
    MANIFEST_NAME,
    SEGMENTATION_DIR,
    SEGMENTATION_INPUT_CHANNELS,
    SEGMENTATION_OUTPUT,
    SERVING_ENDPOINT,
    TF_UTILS_DIR,
    ModelContract,
)
from flare_seg.training.config import TrainConfig, load_config
from flare_seg.training.tf_utils import TfUtilsModule
from flare_seg.training.train import build_model, initialize_weights, restore_model

log = logging.getLogger(__name__)

# A network whose validation Dice is below this for an organ has not learnt it (or at all).
NEAR_ZERO_DICE = 0.05


def serving_call(model: keras.Model, output_name: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """What an exported network's serving endpoint computes: ``model`` in inference mode, its
    output named ``output_name`` and in float32 whatever the dtype policy."""

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {output_name: tf.cast(model(image, training=False), tf.float32)}

    return serve


class MeanOfNetworks(keras.Model):
    """Networks with one input and output shape whose outputs are averaged (an ensemble).

    The members run one after the other (each waits for the running sum), so on a GPU, where graph
    ops without a data dependency may run at once, the peak memory stays that of one member plus
    the running sum, not that of all members together."""

    def __init__(self, members: Sequence[keras.Model], **kwargs: Any) -> None:
        super().__init__(name="mean_of_networks", **kwargs)
        if not members:
            raise ValueError("an ensemble needs at least one network")
        self.members = list(members)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        total = tf.cast(self.members[0](inputs, training=training), tf.float32)
        for member in self.members[1:]:
            with tf.control_dependencies([total]):
                total = total + tf.cast(member(inputs, training=training), tf.float32)
        return total / float(len(self.members))


def _export_network(model: keras.Model, channels: int, output_name: str, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_ENDPOINT,
        serving_call(model, output_name),
        input_signature=[tf.TensorSpec([1, None, None, None, channels], tf.float32, name="image")],
    )
    archive.write_out(str(path), verbose=False)


def config_from_dict(recorded: dict[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` recorded as a dict (a run's config.yaml, a manifest entry's ``config``)."""
    raw = dict(recorded)
    return load_config(raw.pop("task"), None, **raw)


def _run_config(run_dir: Path) -> TrainConfig:
    return config_from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))


def as_run_list(runs: Path | Sequence[Path]) -> list[Path]:
    """One run (a path) or several as a list of paths."""
    return [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def export_models(
    localization_run: Path,
    segmentation_run: Path | Sequence[Path],
    out_dir: Path,
    contract: ModelContract | None = None,
    evaluation_json: Path | None = None,
    notes: str | None = None,
    real_ct_evaluation_json: Path | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the three SavedModels and the manifest into ``out_dir``; returns the manifest.

    ``segmentation_run``: one run, or several whose networks are exported as their mean (each
    recorded under ``training.segmentation.members`` in the manifest).

    ``evaluation_json``: the full pipeline's figures on unseen phantoms; ``real_ct_evaluation_json``:
    those on real CT, which no training uses (both ``flare-seg evaluate``
    output; recorded as ``evaluation`` and ``evaluation_real_ct``). Everything is written into
    ``<out_dir>.exporting`` first, which then replaces ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False (checked before any work).
    """
    contract = contract or ModelContract()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: give --force to replace the models in it")
    # Every run is read and checked before anything is written.
    networks = {
        name: (_restore_runs(name, as_run_list(runs), channels, contract), channels, output)
        for name, runs, channels, output in (
            (LOCALIZATION_DIR, localization_run, 1, LOCALIZATION_OUTPUT),
            (SEGMENTATION_DIR, segmentation_run, SEGMENTATION_INPUT_CHANNELS, SEGMENTATION_OUTPUT),
        )
    }
    tmp = out_dir.with_name(out_dir.name + ".exporting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        runs: dict[str, Any] = {}
        for name, ((network, entry), channels, output) in networks.items():
            _export_network(network, channels, output, tmp / name)
            _check_reload(network, tmp / name, channels, output, contract)
            runs[name] = entry
        tf.saved_model.save(TfUtilsModule(contract), str(tmp / TF_UTILS_DIR))
        for warning in near_zero_dice_warnings(runs):
            log.warning("%s", warning)
        manifest = _manifest(runs, contract, evaluation_json, notes, real_ct_evaluation_json)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out_dir)
    return manifest


def _restore_runs(
    name: str, run_dirs: list[Path], channels: int, contract: ModelContract
) -> tuple[keras.Model, dict[str, Any]]:
    """The network of training runs (several: their mean) and its manifest entry (several: each
    run's entry under ``members``)."""
    if not run_dirs:
        raise ValueError(f"no {name} run given")
    if len({r.resolve() for r in run_dirs}) < len(run_dirs):
        raise ValueError(f"a {name} run is given twice: {[str(r) for r in run_dirs]}")
    models, entries = [], []
    for run in run_dirs:
        model, entry = _restore_run(name, run)
        models.append(model)
        entries.append(entry)
    if len(models) == 1:
        log.info("%s: step %d, %d parameters", name, entries[0]["checkpoint_step"], models[0].count_params())
        return models[0], entries[0]
    network = MeanOfNetworks(models)
    m = contract.segmentation_size_multiple if channels > 1 else contract.localization_size_multiple
    network(np.zeros((1, m, m, m, channels), np.float32))  # builds it before it is traced
    log.info("%s: the mean of %d networks (%d parameters)", name, len(models), network.count_params())
    return network, {
        "combination": "mean of the members' class probabilities",
        "parameters": int(network.count_params()),
        "members": entries,
    }


def _restore_run(name: str, run: Path) -> tuple[keras.Model, dict[str, Any]]:
    """A training run's network at its latest checkpoint and its manifest entry; ``run`` may also
    be an exported network (``MODELS/segmentation``), rebuilt from its manifest's config."""
    if (run / "saved_model.pb").is_file():
        return _restore_exported(name, run)
    if not (run / "config.yaml").is_file():
        raise ValueError(
            f"{run} is neither a training run (no config.yaml) nor an exported network (MODELS/{name})"
        )
    config = _run_config(run)
    expected = "localization" if name == LOCALIZATION_DIR else "segmentation"
    if config.task != expected:
        raise ValueError(f"{run} is a {config.task} run, expected {expected}")
    model, step = restore_model(run, config)
    return model, {
        "run": run.name,
        "config": yaml.safe_load(config.to_yaml()),
        "checkpoint_step": step,
        "parameters": int(model.count_params()),
        "validation": _read_json(Path(run) / "metrics.json"),
        "data": _read_json(Path(run) / "data.json"),
    }


def _restore_exported(name: str, network_dir: Path) -> tuple[keras.Model, dict[str, Any]]:
    """An exported network (``MODELS/<name>``) as a Keras model, and its entry in that folder's
    manifest (which must describe one network, not an ensemble)."""
    manifest_path = network_dir.parent / MANIFEST_NAME
    if network_dir.name != name or not manifest_path.is_file():
        raise ValueError(f"{network_dir} is not the {name} network of a models folder (MODELS/{name})")
    manifest = json.loads(manifest_path.read_text())
    entry = dict((manifest.get("training") or {}).get(name) or {})
    if "members" in entry:
        raise ValueError(f"{network_dir} is an ensemble: give the training runs of its members instead")
    if "config" not in entry:
        raise ValueError(f"{manifest_path} records no training config for {name}")
    config = config_from_dict(entry["config"])
    model = build_model(config)
    initialize_weights(model, network_dir, config)
    entry["run"] = f"{network_dir} (models {manifest.get('model_version')})"
    return model, entry


def network_entries(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-network entries of a manifest ``training`` entry (an ensemble's members, or itself)."""
    return list(entry.get("members") or [entry])


def _manifest(
    runs: dict[str, Any],
    contract: ModelContract,
    evaluation_json: Path | None,
    notes: str | None,
    real_ct_evaluation_json: Path | None = None,
) -> dict[str, Any]:
    """The manifest: format, versions, contract, signatures, training runs and their data."""
    datasets = []
    for entry in network_entries(runs[SEGMENTATION_DIR]):
        data = entry.get("data") or {}
        dataset = data.get("dataset", {"data_dir": data.get("data_dir")})
        if dataset not in datasets:
            datasets.append(dataset)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_version": dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S"),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "flare_seg_version": flare_seg.__version__,
        "tensorflow_version": tf.__version__,
        "contract": contract.to_json(),
        "signatures": contract.signatures(),
        "training": runs,
        "training_data": datasets[0] if len(datasets) == 1 else {"datasets": datasets},
        "evaluation": _read_json(Path(evaluation_json)) if evaluation_json else None,
        "evaluation_real_ct": _real_ct_evaluation(Path(real_ct_evaluation_json))
        if real_ct_evaluation_json
        else None,
        "notes": notes,
    }


def _real_ct_evaluation(path: Path) -> dict[str, Any]:
    """A real-CT ``evaluation.json``, marked (unless it says otherwise under ``case``) as measured
    only: never trained on."""
    evaluation = dict(_read_json(path) or {})
    evaluation.setdefault("case", f"the real CT of {path.parent} (measured only, never trained on)")
    return evaluation


def _replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` in the place of ``target`` (kept as ``<target>.old`` until then)."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def near_zero_dice_warnings(runs: dict[str, Any]) -> list[str]:
    """One sentence per exported network whose recorded validation Dice is near 0 for some organ."""
    warnings = []
    for name, entry in runs.items():
        for run in network_entries(entry):
            dice = ((run.get("validation") or {}).get("dice")) or {}
            low = {organ: float(d) for organ, d in dice.items() if float(d) < NEAR_ZERO_DICE}
            if low:
                shown = ", ".join(f"{organ} {d:.3f}" for organ, d in low.items())
                which = f"{name} network" if "members" not in entry else f"{name} member {run.get('run')}"
                warnings.append(
                    f"the {which}'s validation Dice is near 0 ({shown}, step "
                    f"{run.get('checkpoint_step')}): these models will not find those organs; train "
                    f"longer or check the training data"
                )
    return warnings


def _check_reload(
    model: keras.Model, path: Path, channels: int, output: str, contract: ModelContract
) -> None:
    """Reload the SavedModel and compare it with the in-memory model on a random input."""
    m = contract.segmentation_size_multiple if channels > 1 else contract.localization_size_multiple
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2 * m, 2 * m, 3 * m, channels)).astype(np.float32)
    expected = model(x, training=False).numpy()
    reloaded = tf.saved_model.load(str(path))  # keep a reference: its functions need its variables
    got = getattr(reloaded, SERVING_ENDPOINT)(tf.constant(x))[output].numpy()
    err = float(np.abs(expected - got).max())
    if err > 1e-4:
        raise RuntimeError(f"reloaded {path.name} differs from the trained model by {err}")
