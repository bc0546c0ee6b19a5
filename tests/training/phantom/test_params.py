"""Tests of the phantom options and seed validation."""

from __future__ import annotations

import pytest

from flare_seg.training.phantom import PhantomOptions, generate_case
from tests.training.phantom.helpers import SMALL


def test_options_and_seeds_are_validated() -> None:
    with pytest.raises(ValueError, match="size"):
        PhantomOptions(size="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flip_probability"):
        PhantomOptions(flip_probability=1.5)
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1, SMALL)
