"""Whether an image's grid is plausible for an abdominal CT, from its header alone.

An axis of fewer than ``MIN_VOXELS_PER_AXIS`` voxels (a slice, a line) or a voxel spacing outside
``MIN_SPACING_MM`` .. ``MAX_SPACING_MM`` (a header in metres or micrometres, a corrupt pixdim) would
be segmented into a meaningless mask with absurd volumes; such images are refused with a reason.
"""

from __future__ import annotations

MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
MIN_VOXELS_PER_AXIS = 4


def implausible_grid_reason(
    dims_xyz: tuple[int, int, int], spacing_mm_xyz: tuple[float, float, float]
) -> str | None:
    """Why the grid is not a plausible CT, in words, or None when it is. Sizes and spacings (x, y, z)."""
    thin = [axis for axis, n in zip("xyz", dims_xyz, strict=True) if n < MIN_VOXELS_PER_AXIS]
    if thin:
        return (
            f"image size {dims_xyz} (x, y, z) has fewer than {MIN_VOXELS_PER_AXIS} voxels along "
            f"{', '.join(thin)}; expected a 3D CT volume"
        )
    odd = [
        f"{axis} {s:g} mm"
        for axis, s in zip("xyz", spacing_mm_xyz, strict=True)
        if not MIN_SPACING_MM <= s <= MAX_SPACING_MM
    ]
    if odd:
        return (
            f"implausible voxel spacing ({', '.join(odd)}); a CT's spacing lies between "
            f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm (is the header's unit wrong?)"
        )
    return None
