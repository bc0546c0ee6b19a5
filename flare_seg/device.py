"""Choosing where the networks run: ``--device auto|cpu|gpu`` (or ``FLARE_SEG_DEVICE``).

``auto`` uses a GPU when TensorFlow sees one; ``cpu`` hides the GPUs from TensorFlow; ``gpu``
requires one and fails with a clear error when there is none. Call ``select_device`` before the
first TensorFlow operation of the process (TensorFlow fixes its visible devices then).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")


class DeviceError(ValueError):
    """The requested device is not available."""


def select_device(device: str) -> str:
    """Apply the choice; returns what will be used ("cpu" or "gpu").

    Raises:
        DeviceError: ``device`` is "gpu" and TensorFlow sees no GPU, or the name is unknown.
    """
    if device not in DEVICES:
        raise DeviceError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else ""
        raise DeviceError(
            f"--device gpu: TensorFlow sees no GPU{why}; check the NVIDIA driver and the CUDA build "
            f"of TensorFlow (in Docker: --gpus all), or use --device cpu"
        )
    if device == "cpu" and gpus:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError as e:  # TensorFlow already initialized its devices
            raise DeviceError(f"--device cpu: too late to hide the GPUs ({e})") from None
        log.info("device: cpu (%d GPU(s) hidden)", len(gpus))
        return "cpu"
    used = "gpu" if gpus else "cpu"
    (log.debug if device == "auto" else log.info)("device: %s", used)
    return used
