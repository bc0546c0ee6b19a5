"""Float16 twins of trained networks: what float16 inference costs in accuracy, measurable on a CPU.

On a GPU with float16 tensor cores the service runs the networks under TensorFlow's automatic mixed
precision (``--precision auto``): weights and activations in float16, convolutions in float16,
softmax and the outputs in float32. A twin built here under Keras's ``mixed_float16`` policy, with
the trained weights, rounds the same tensors to float16, so running it through the pipeline in
place of the float32 networks (``float16_models``) and comparing the masks shows the accuracy cost
without a GPU. Average pooling stays float32 in the twin because CPUs have no float16 ``AvgPool3D``
kernel; the next convolution rounds its output to float16 anyway. On a CPU the twin is slow
(float16 convolutions are not vectorized there): it is a check, not a way to run inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from flare_seg.contract import LOCALIZATION_OUTPUT, SEGMENTATION_OUTPUT


def float16_twin(model: keras.Model, config: Any) -> keras.Model:
    """The network of ``config`` (a ``TrainConfig``) built under ``mixed_float16`` with ``model``'s
    weights (pooling in float32); its outputs are float32 like the original's."""
    from flare_seg.training.train import build_model

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        twin = build_model(config, pool_dtype="float32")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    twin.set_weights(model.get_weights())
    return twin


def serving_function(model: keras.Model, output_name: str) -> Any:
    """``model`` called like an exported network's ``serve`` endpoint."""
    from flare_seg.training.export import serving_call

    signature = [tf.TensorSpec([1, None, None, None, None], tf.float32)]
    return tf.function(serving_call(model, output_name), input_signature=signature)


def float16_models(models: Any, localization_run: Path, segmentation_run: Path | Sequence[Path]) -> Any:
    """``models`` (service ``LoadedModels`` exported from these runs or exported networks; several
    segmentation runs for an ensemble) with both networks replaced by their float16 twins; give it
    to ``Segmenter`` to segment in emulated float16."""
    from flare_seg.training.export import MeanOfNetworks, _restore_run, as_run_list, config_from_dict

    twins: dict[str, Any] = {}
    for name, runs in (("localization", localization_run), ("segmentation", segmentation_run)):
        members = []
        for run in as_run_list(runs):
            model, entry = _restore_run(name, run)  # a run, or an exported network
            members.append(float16_twin(model, config_from_dict(entry["config"])))
        twins[name] = members[0] if len(members) == 1 else MeanOfNetworks(members)
    return dataclasses.replace(
        models,
        localization=serving_function(twins["localization"], LOCALIZATION_OUTPUT),
        segmentation=serving_function(twins["segmentation"], SEGMENTATION_OUTPUT),
        precision="emulated_float16",
    )
