"""The label map: the one source of truth for label values and organ names."""

from __future__ import annotations

BACKGROUND = 0
LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}
ORGANS: dict[int, str] = {k: v for k, v in LABELS.items() if k != BACKGROUND}
NUM_CLASSES = len(LABELS)  # including background
NUM_ORGANS = len(ORGANS)


def organ_name(label: int) -> str:
    """Name of an organ label; raises ValueError for unknown labels."""
    try:
        return ORGANS[label]
    except KeyError:
        raise ValueError(f"unknown organ label {label}; known: {sorted(ORGANS)}") from None
