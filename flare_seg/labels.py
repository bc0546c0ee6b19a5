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


def parse_organs(text: str) -> tuple[int, ...]:
    """Labels of a comma-separated list of organ names (``"liver,spleen"`` -> ``(1, 3)``), in label
    order, without repeats; raises ValueError naming an unknown organ."""
    by_name = {name: label for label, name in ORGANS.items()}
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"no organ given; choose from {', '.join(ORGANS.values())}")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown organ {unknown[0]!r}; choose from {', '.join(ORGANS.values())}")
    return tuple(sorted({by_name[n] for n in names}))
