"""Synthetic abdominal CT phantoms labelled with liver, kidney, spleen and pancreas.

Anatomy is defined in a patient frame in millimetres along the LPS axes (+x to the patient's Left, +y
to Posterior, +z to Superior). Its origin lies on the midline, at the centre of the abdominal cavity,
at the height of the right hemidiaphragm dome. Each structure is an implicit surface (an approximate
signed distance in mm, negative inside). It is sampled on a coarse isotropic grid aligned with the
patient frame, inside its own bounding box, then interpolated trilinearly onto the acquisition grid
and painted in priority order. The acquisition grid has a random spacing, origin and direction (axis
flips, optionally an oblique tilt) and a random field of view. Intensities follow a random contrast
phase, are blurred, get noise, and are stored as int16 HU. The label map is a single uint8 volume
that shares the image's geometry exactly.

Painting order: the body layer (air, skin, fat, muscle wall, cavity fat, lungs, ribs, table), then
bones, vessels and other structures the organs wrap around, then the organs in priority order
(kidneys, spleen, pancreas, liver; each claims only free voxels and reserves a fat halo), then bowel
and muscles in whatever is left. Organs therefore never overlap.

Axis conventions: SimpleITK sizes, spacings, origins and indices are (x, y, z); the numpy arrays
passed to and read from SimpleITK are indexed [z, y, x]. `acquisition.Grid` maps (x, y, z) indices
to anatomy points and turns anatomy boxes into numpy (z, y, x) slices; `acquisition.resample` and
`coarse.Coarse` hold (z, y, x) arrays. Anatomy-frame points are LPS mm relative to the patient origin
above; physical points are LPS mm in the scanner frame (anatomy + `Grid.anatomy_origin_xyz`).

Modules, in the order of the generation steps:
    params       what is asked (PhantomOptions) and recorded (PhantomInfo); mask codes; random streams
    coarse       coarse anatomy-aligned grids and linear interpolation
    shapes       implicit surfaces, frames, warps, tubes
    appearance   tissue HU per contrast phase, texture fields, noise
    body         outline, wall layers, diaphragm, lungs, ribs, iliac wings, table
    canvas       Part (one structure) and the canvas it is painted on
    skeleton, vessels, organs, soft_tissue, bowel    the structures
    anatomy      the list of structures (STRUCTURES) and the builder that samples them
    acquisition  grid, field of view, orientation, resampling, blur, reconstruction circle
    variety, pelvis, lesions, arms, fissures    optional variety (PhantomOptions): a bony pelvis,
                 wider intensities, organ size and shape, osteopenic bone, organ lesions, arms down,
                 fat-filled liver fissures
    generate     one case: sample, paint, reconstruct
    dataset      FLARE21-layout datasets and dataset.json
"""

from flare_seg.training.phantom.acquisition import FIELDS_OF_VIEW
from flare_seg.training.phantom.appearance import HU_RANGES, PHASES
from flare_seg.training.phantom.dataset import case_name, case_seed, write_dataset
from flare_seg.training.phantom.generate import generate_case, generate_case_with_info
from flare_seg.training.phantom.params import (
    DEFAULT_OPTIONS,
    KIDNEY,
    LIVER,
    PANCREAS,
    SPLEEN,
    PhantomInfo,
    PhantomOptions,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "FIELDS_OF_VIEW",
    "HU_RANGES",
    "KIDNEY",
    "LIVER",
    "PANCREAS",
    "PHASES",
    "SPLEEN",
    "PhantomInfo",
    "PhantomOptions",
    "case_name",
    "case_seed",
    "generate_case",
    "generate_case_with_info",
    "write_dataset",
]
