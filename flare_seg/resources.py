"""Files installed with the package: the shipped models and the example CT with its reference mask.

They live inside the package (``flare_seg/saved_models``, ``flare_seg/examples``), so an ordinary,
non-editable install carries them and every command works from any folder.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_MODELS_DIR = PACKAGE_DIR / "saved_models"
EXAMPLES_DIR = PACKAGE_DIR / "examples"
EXAMPLE_IMAGE = EXAMPLES_DIR / "phantom_example_0000.nii.gz"
EXAMPLE_REFERENCE_MASK = EXAMPLES_DIR / "phantom_example.nii.gz"
