"""The two-stage pipeline: localize -> crop the organ box -> segment -> back to the input grid.

One pipeline behind the batch CLI, the HTTP server and Python::

    segmenter = Segmenter.load()      # the packaged models, or Segmenter.load("my_models")
    result = segmenter.segment_file(Path("case_0000.nii.gz"))      # or segment_image(sitk.Image)
    result = segmenter.segment_dicom(Path("dicom_series_dir"))      # a DICOM folder or .zip
    result.write_seg(Path("case.seg.dcm"))                          # DICOM SEG (DICOM input only)
    labels_zyx = segmenter.segment_array(array_zyx, spacing_mm_zyx)  # numpy in, numpy out

Every forward step has its inverse: ``to_canonical``/``undo_canonical`` for orientation,
crop + resample to ~2 mm / resample back + uncrop for the box. Memory: the input is held as
int16 (2 bytes a voxel) and the output as uint8; float copies exist only per z-slab, sized by
the memory budget; class scores exist only on the ~2 mm box grid. Beside the forward pass, only
the voxels around the box that a second pass over a grown region may need are kept, averaged down
to about the segmentation spacing (a 0.8 mm input: a quarter of its bytes over that region).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import tensorflow as tf

from flare_seg.contract import LOCALIZATION_OUTPUT, SEGMENTATION_OUTPUT
from flare_seg.device import select_device
from flare_seg.dicom.archive import extracted_zip, is_zip
from flare_seg.dicom.seg import build_seg, write_seg_atomic
from flare_seg.dicom.volume import DicomSource, DicomVolume, read_dicom_volume
from flare_seg.geometry import (
    AxisMap,
    CanonicalTransform,
    Geometry,
    canonical_axes,
    image_from_array_zyx,
    to_canonical,
    undo_canonical,
)
from flare_seg.grid import (
    GridCrop,
    SlabResampler,
    crop_around_box,
    fit_crop_to_valid_size,
    labels_from_scores,
    plan_shape,
    resample_crop,
    slab_slices,
)
from flare_seg.labels import ORGANS
from flare_seg.preview import write_preview
from flare_seg.resources import PACKAGED_MODELS_DIR
from flare_seg.service.io import CtVolume, NiftiHeader, read_ct_volume, write_mask_atomic
from flare_seg.service.localization import LocalizationPlan, plan_localization
from flare_seg.service.models import LoadedModels, load_models
from flare_seg.service.postprocess import (
    cut_faces,
    drop_stray_components,
    faces_inside,
    organs_cut_by_region,
    region_faces,
)
from flare_seg.statistics import OrganStatistics, organ_statistics

log = logging.getLogger(__name__)

BoxMM = tuple[tuple[float, float, float], tuple[float, float, float]]
if max(ORGANS) > 7:  # ``_organ_boxes`` keeps one bit per label in a uint8
    raise RuntimeError("labels above 7 need a wider bit set in Segmenter._organ_boxes")
INT16_MIN, INT16_MAX = -32768, 32767
# An abdominal CT always holds air (around the body, in the bowel, the lung bases), which stays well
# below this even averaged over the localization grid's voxels; an image without any is not in HU.
NO_AIR_ABOVE_HU = -500.0
# An organ cut by a face of the segmented region inside the scan (the localization's box was too
# tight there: on a real short series the liver went on 12-24 mm beyond it) is segmented again over
# a region grown by this much on that face, from a copy of the voxels this far around the first
# region (plus room for the crop's fit to the network's valid sizes), kept at about the
# segmentation spacing.
REGROW_MM = 40.0
RESERVE_MM = REGROW_MM + 16.0
RESERVE_SLAB_BYTES = 8 * 2**20  # working memory of building that copy


@dataclass(frozen=True)
class SegmentationResult:
    labels_zyx: np.ndarray = field(repr=False)  # uint8 labels on the input's grid, indexed (z, y, x)
    geometry: Geometry  # the input's grid: size, spacing, origin and direction
    volumes_ml: dict[str, float]  # organ name -> mL
    organ_boxes_mm: dict[str, BoxMM | None]  # LPS (x, y, z) min and max corners per organ; None if absent
    roi_box_mm: BoxMM  # LPS box that was segmented (localized organs + margin)
    organs_localized: bool  # False when localization found nothing and the whole volume was used
    timings_s: dict[str, float]
    model_version: str
    # What the caller should know about this result (e.g. an input that does not look like a CT in HU).
    warnings: tuple[str, ...] = ()
    # The NIfTI header of the file that was segmented (None for in-memory input): masks are written
    # with its geometry fields byte for byte.
    source_header: NiftiHeader | None = field(default=None, repr=False)
    # DICOM input: the images the mask was made from (what a DICOM SEG references), and why that
    # series was chosen.
    dicom_source: DicomSource | None = field(default=None, repr=False)
    series: str | None = None

    @functools.cached_property
    def mask(self) -> sitk.Image:
        """The labels as a uint8 image with exactly the input's size, spacing, origin and direction
        (made on first use: a copy of ``labels_zyx``)."""
        return image_from_array_zyx(self.labels_zyx, self.geometry)

    def write_mask(self, path: Path | str) -> None:
        """Write the mask atomically as .nii.gz (or .nii); read back by any NIfTI reader, it has
        exactly the grid of the file that was segmented."""
        write_mask_atomic(self.labels_zyx, Path(path), like=self.source_header, geometry=self.geometry)

    def seg_dataset(self) -> Any:
        """The DICOM SEG of the mask (a ``pydicom.Dataset``): one segment per organ, referencing the
        source images. DICOM input only (``ValueError`` otherwise)."""
        if self.dicom_source is None:
            raise ValueError("a DICOM SEG needs DICOM input: this result was not segmented from DICOM")
        return build_seg(self.labels_zyx, self.dicom_source, model_version=self.model_version)

    def write_seg(self, path: Path | str) -> None:
        """Write the DICOM SEG (see ``seg_dataset``) atomically."""
        write_seg_atomic(self.seg_dataset(), Path(path))

    @property
    def organs(self) -> dict[int, str]:
        """The organs this result is about (all, or the subset asked for): label -> name."""
        return {k: name for k, name in ORGANS.items() if name in self.volumes_ml}

    def statistics(self, ct_zyx: np.ndarray) -> dict[str, OrganStatistics]:
        """Per-organ statistics (``flare_seg.statistics``) on the CT that was segmented, e.g.
        ``volume.array_zyx`` after ``segment_volume(volume)`` (which keeps it)."""
        return organ_statistics(self.labels_zyx, ct_zyx, self.geometry, self.organs)

    def write_preview(self, path: Path | str, ct_zyx: np.ndarray, title: str = "") -> None:
        """The preview PNG (``flare_seg.preview``) of this result on the CT that was segmented."""
        write_preview(Path(path), ct_zyx, self.labels_zyx, self.geometry, self.organs, title, self.volumes_ml)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures (everything but the mask)."""
        return {
            "volumes_ml": self.volumes_ml,
            "organ_boxes_mm": self.organ_boxes_mm,
            "roi_box_mm": self.roi_box_mm,
            "organs_localized": self.organs_localized,
            "warnings": list(self.warnings),
            "timings_s": self.timings_s,
            "model_version": self.model_version,
        }


class Segmenter:
    """Loaded models plus the pipeline; load once, segment many. Not thread-safe: one call at a time."""

    def __init__(self, models: LoadedModels, memory_budget_mb: int = 256) -> None:
        if memory_budget_mb < 64:
            raise ValueError(f"memory_budget_mb must be >= 64, not {memory_budget_mb}")
        self.models = models
        self.contract = models.contract
        self.memory_budget_bytes = int(memory_budget_mb) * 2**20
        self.clean_up = True  # drop stray components of each organ (``service.postprocess``)
        self.regrow = True  # segment again over a grown region when an organ is cut by it (``_regrow``)
        self._warmed_up = False

    @classmethod
    def load(
        cls,
        models_dir: Path | str = PACKAGED_MODELS_DIR,
        memory_budget_mb: int = 256,
        precision: str = "auto",
        device: str = "auto",
    ) -> Segmenter:
        """Load the models of ``models_dir`` (default: the models installed with the package);
        ``precision``: "auto" (mixed float16 on GPUs with float16 tensor cores, float32 elsewhere)
        or "float32"; ``device``: "auto", "cpu" or "gpu" (see ``flare_seg.device``)."""
        select_device(device)
        return cls(load_models(Path(models_dir), precision), memory_budget_mb)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.models.manifest

    @property
    def model_version(self) -> str:
        return self.models.model_version

    # ------------------------------------------------------------------ entry points

    def warm_up(self) -> None:
        """Run every function once, on a small phantom-like volume (128 mm a side).

        The first call of each function pays for TensorFlow's graph optimization, whatever the
        sizes, so a small volume does that work at little cost beyond it: about 1 s against
        2.2 s for a 200 x 384 x 384 mm one, with no slower first real case. Only the first call
        does anything."""
        if self._warmed_up:
            return
        self._warmed_up = True
        arr = np.full((16, 32, 32), -1000, np.int16)
        arr[2:14, 6:26, 4:28] = 40
        level = log.level
        log.setLevel(logging.ERROR)  # the dummy volume's localization warnings are nobody's concern
        try:
            self.segment_array(arr, (8.0, 4.0, 4.0))
        finally:
            log.setLevel(level)

    def segment_file(
        self, path: Path | str, max_voxels: int = 1_500_000_000, organs: Collection[int] | None = None
    ) -> SegmentationResult:
        """Read a NIfTI file (validated, see ``service.io.read_ct_volume``) and segment it
        (``organs``: see ``segment_volume``)."""
        volume = self.read_volume(Path(path), max_voxels)
        return self.segment_volume(volume, release_input=True, organs=organs)

    def segment_dicom(self, path: Path | str, max_voxels: int = 1_500_000_000) -> SegmentationResult:
        """Segment the CT series of a DICOM folder or .zip (the series is chosen: CT images, axial,
        most slices; ``result.series`` says which and why); ``result.write_seg`` then writes the
        DICOM SEG, ``result.write_mask`` a NIfTI mask on the series' grid."""
        return self.segment_dicom_volume(self.read_dicom(path, max_voxels))

    def read_dicom(self, path: Path | str, max_voxels: int = 1_500_000_000) -> DicomVolume:
        """Read the chosen series of a DICOM folder or .zip (extracted into a private temporary
        folder, removed once read)."""
        path = Path(path)
        if path.is_file() and is_zip(path):
            with extracted_zip(path, 2 * max_voxels + (256 << 20)) as root:
                return read_dicom_volume(root, max_voxels, display_name=path.name)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a DICOM folder or a .zip of DICOM files")
        return read_dicom_volume(path, max_voxels)

    def segment_dicom_volume(self, dicom: DicomVolume) -> SegmentationResult:
        """Segment a volume read by ``read_dicom`` (its voxels are released as they are used)."""
        result = self.segment_volume(dicom.volume, release_input=True)
        return replace(
            result,
            dicom_source=dicom.source,
            series=dicom.choice.reason if dicom.choice else None,
            warnings=(*dicom.warnings, *result.warnings),
        )

    def read_volume(
        self,
        path: Path | str,
        max_voxels: int = 1_500_000_000,
        *,
        display_name: str | None = None,
        max_image_bytes: int | None = None,
    ) -> CtVolume:
        """``service.io.read_ct_volume`` as int16 HU (converted while decompressing: 2 bytes a voxel
        whatever the file's type), with the localization input resampled from the slices already
        decompressed while the rest of the file is still being read (on a second thread);
        ``segment_volume`` then starts from it. Same result as reading, then segmenting."""
        stream = _LocalizationStream(self)
        worker = threading.Thread(target=stream.run, name="flare-seg-localization-stream", daemon=True)
        worker.start()
        try:
            volume = read_ct_volume(
                Path(path),
                max_voxels,
                display_name=display_name,
                sink=stream,
                max_image_bytes=max_image_bytes,
                as_int16=True,
            )
        finally:
            stream.close()
            worker.join()
        prepared = stream.result_for(volume.array_zyx)
        if prepared is not None:
            volume.prepared["localization"] = prepared
        return volume

    def segment_array(
        self,
        array_zyx: np.ndarray,
        spacing_mm_zyx: tuple[float, float, float],
        origin_mm_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0),
        direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    ) -> np.ndarray:
        """Labels (z, y, x) uint8 for a HU array indexed (z, y, x) with spacing in (z, y, x) order."""
        if np.ndim(array_zyx) != 3:
            raise ValueError(f"expected a 3D (z, y, x) array, got shape {np.shape(array_zyx)}")
        z, y, x = (float(s) for s in spacing_mm_zyx)
        geometry = Geometry(
            tuple(int(n) for n in np.shape(array_zyx)[::-1]),  # type: ignore[arg-type]
            (x, y, z),
            tuple(float(v) for v in origin_mm_xyz),  # type: ignore[arg-type]
            tuple(float(v) for v in direction),
        )
        return self._segment(np.asarray(array_zyx), geometry).labels_zyx

    def segment_image(self, image: sitk.Image) -> SegmentationResult:
        """Segment a 3D CT image (HU); the mask has exactly the input's geometry."""
        original = Geometry.of(image)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a scalar image, got one with several components per voxel")
        # A view of the image's buffer (``image`` outlives the call); ``_segment`` converts to int16.
        return self._segment(sitk.GetArrayViewFromImage(image), original)

    def segment_volume(
        self, volume: CtVolume, release_input: bool = False, organs: Collection[int] | None = None
    ) -> SegmentationResult:
        """Segment a ``CtVolume`` (voxels (z, y, x) in HU and their geometry), as read by
        ``service.io.read_ct_volume``; the mask has exactly ``volume.geometry``.

        ``release_input=True`` hands the voxels over: ``volume.array_zyx`` is dropped as soon as the
        box is cropped from it, so the input is never in memory beside the segmentation forward pass
        or the output mask (the batch CLI does this).

        ``organs``: only these labels (see ``labels.parse_organs``): the mask holds only them (each
        exactly as in the full segmentation; the others become background) and the figures
        (volumes, boxes) are only theirs.
        """
        prepared = volume.prepared.get("localization")
        chosen = _chosen_organs(organs)
        if not release_input:
            result = self._segment(volume.array_zyx, volume.geometry, prepared, chosen)
        else:
            array, volume.array_zyx = volume.array_zyx, None  # type: ignore[assignment]
            volume.prepared.pop("localization", None)
            holder = [array]
            del array
            result = self._segment(holder, volume.geometry, prepared, chosen)
        return replace(result, source_header=volume.header) if volume.header is not None else result

    def _segment(
        self,
        array_zyx: np.ndarray | list[np.ndarray],
        original: Geometry,
        prepared: _PreparedLocalization | None = None,
        organs: tuple[int, ...] = tuple(ORGANS),
    ) -> SegmentationResult:
        """The pipeline on voxels in the input's own layout (only read). Given as a one-element list,
        the list is emptied once the voxels are no longer needed, freeing them if nobody else holds
        them. ``prepared``: the localization input already resampled while reading.

        Stages: reorient to the canonical grid, localize the organs, crop the box around them,
        segment the box, and map the labels back onto the input's grid."""
        holder = array_zyx if isinstance(array_zyx, list) else None
        if holder is not None:
            array_zyx = holder[0]
        assert isinstance(array_zyx, np.ndarray)
        timings: dict[str, float] = {}
        canonical, frame = _reorient(array_zyx, original, timings)
        vol, spacing = canonical.voxels_zyx, frame.geometry.spacing_mm_zyx

        warnings: list[str] = []
        # The box stays that of all organs even for a subset: the box of a subset's heatmaps alone is
        # tighter than those organs and cuts them (the example's liver: 1307 instead of 1390 mL).
        located = self._localize(vol, spacing, timings, warnings, prepared)
        lo, hi, found = located.lo_zyx, located.hi_zyx, located.found
        if not found and not located.dropped:
            warnings.append("no organ was localized: the whole image was segmented")
        for warning in warnings:
            log.warning("%s", warning)

        crop = self._segmentation_crop(
            located.region_lo_zyx, located.region_hi_zyx, found, frame.geometry.shape_zyx, spacing
        )
        centre = (lo + hi) / 2.0
        reserve = self._reserve(vol, crop, spacing, timings) if self.regrow and found else None
        x = self._segmentation_input(vol, crop, centre, timings)
        if holder is not None:  # the input is not needed any more: free it before the forward pass
            holder.clear()
            del vol, canonical, array_zyx
        scores: list[tf.Tensor | np.ndarray] = [self._segmentation_forward(x, crop, timings)]
        del x
        if self.clean_up:
            scores = [self._clean_up(scores, crop, timings)]
        inner: tuple[list[tf.Tensor | np.ndarray], GridCrop] | None = None
        if reserve is not None:
            regrown = self._regrow(scores, crop, reserve, centre, frame.geometry, organs, timings, warnings)
            del reserve
            if regrown is not None:  # the second pass's labels count only outside the first region
                inner, (scores, crop) = (scores, crop), regrown

        t = time.perf_counter()
        labels_original, organ_boxes, counts = self._back_to_grid(
            scores, crop, frame, original, organs, warnings, inner
        )
        names = {k: ORGANS[k] for k in organs}
        volumes = {name: round(float(counts[k]) * original.voxel_volume_ml, 3) for k, name in names.items()}
        organ_boxes = {name: organ_boxes[name] for name in names.values()}
        timings["postprocess_s"] = time.perf_counter() - t
        geometry = frame.geometry
        roi = _box_mm(geometry, np.asarray(crop.start_zyx, float), np.asarray(crop.stop_zyx, float))
        return SegmentationResult(
            labels_zyx=labels_original,
            geometry=original,
            volumes_ml=volumes,
            organ_boxes_mm=organ_boxes,
            roi_box_mm=roi,
            organs_localized=found,
            timings_s={k: round(v, 4) for k, v in timings.items()},
            model_version=self.model_version,
            warnings=tuple(warnings),
        )

    # ------------------------------------------------------------------ stages

    def _reserve(
        self, vol: np.ndarray, crop: GridCrop, spacing: tuple[float, float, float], timings: dict[str, float]
    ) -> _Reserve:
        """The voxels around the segmentation crop that a second pass may need (see ``_regrow``):
        the crop grown by ``RESERVE_MM`` on every side (within the scan), block-averaged by whole
        factors down to no coarser than the segmentation spacing, as int16."""
        t = time.perf_counter()
        factor = np.maximum(1, np.floor(self.contract.segmentation_spacing_mm / np.asarray(spacing) + 1e-6))
        factor = factor.astype(int)
        grow = np.ceil(RESERVE_MM / np.asarray(spacing)).astype(int)
        shape = np.asarray(vol.shape)
        start = np.maximum(0, np.asarray(crop.start_zyx) - grow)
        stop = np.minimum(shape, np.asarray(crop.stop_zyx) + grow)
        blocks = (stop - start) // factor
        stop = start + blocks * factor  # whole blocks only (at most factor - 1 voxels fewer)
        fz, fy, fx = (int(f) for f in factor)
        out = np.empty(tuple(int(b) for b in blocks), np.int16)
        # int32 sums of a slab and their strided copies: small slabs, this runs beside the input
        per_block_slice = int((stop[1] - start[1]) * (stop[2] - start[2])) * 4 * fz * 2 // fy
        step = slab_slices(int(blocks[0]), per_block_slice, RESERVE_SLAB_BYTES)
        for a in range(0, int(blocks[0]), step):
            b = min(int(blocks[0]), a + step)
            part = vol[start[0] + a * fz : start[0] + b * fz, start[1] : stop[1], start[2] : stop[2]]
            out[a:b] = _block_means(part, (fz, fy, fx))
        timings["reserve_s"] = time.perf_counter() - t
        z0, y0, x0 = (int(v) for v in start)
        return _Reserve(out, (z0, y0, x0), (fz, fy, fx))

    def _regrow(
        self,
        scores: list[tf.Tensor | np.ndarray],
        crop: GridCrop,
        reserve: _Reserve,
        centre_edge_zyx: np.ndarray,
        grid: Geometry,
        organs: tuple[int, ...],
        timings: dict[str, float],
        warnings: list[str],
    ) -> tuple[list[tf.Tensor | np.ndarray], GridCrop] | None:
        """A second pass over a grown region when an organ's labels cross a face of the first one
        inside the scan (``service.postprocess.cut_faces``, on the box grid): the localization's
        box was too tight there (a short series, an unusual field of view). The region is grown by
        ``REGROW_MM`` on those faces and segmented again from ``reserve``, with the same organs'
        box centre. Returns the second pass's scores (a one-element list) and its crop, or None
        when nothing was cut.

        Only what lies beyond the first region is taken from the second pass: inside it, the
        first pass's labels stay (its box is the one the networks are trained on; a different
        crop moves a network's output by chance, and on a label wrongly reaching a face, such as
        soft tissue behind the kidneys labelled kidney, it would only add to the error)."""
        inside = faces_inside(crop.start_zyx, crop.stop_zyx, grid.shape_zyx)
        faces = {
            key: np.argmax(face, axis=-1) for key, face in region_faces(np.asarray(scores[0]), inside).items()
        }
        cuts = [c for c in cut_faces(faces, crop.out_spacing_mm_zyx) if c.label in organs]
        if not cuts:
            return None
        t = time.perf_counter()
        f = np.asarray(reserve.factor_zyx)
        origin = np.asarray(reserve.start_zyx)
        n = np.asarray(reserve.voxels_zyx.shape)
        # the crop in reserve voxels (outwards to whole blocks), grown on the cut faces
        lo = np.clip(np.floor((np.asarray(crop.start_zyx) - origin) / f).astype(int), 0, n)
        hi = np.clip(np.ceil((np.asarray(crop.stop_zyx) - origin) / f).astype(int), 0, n)
        reserve_spacing = tuple(float(s) * int(k) for s, k in zip(grid.spacing_mm_zyx, f, strict=True))
        grow = np.round(REGROW_MM / np.asarray(reserve_spacing)).astype(int)
        for axis, end in {(cut.axis, cut.end) for cut in cuts}:  # once a face, whatever it cuts
            if end == 0:
                lo[axis] = max(0, lo[axis] - grow[axis])
            else:
                hi[axis] = min(int(n[axis]), hi[axis] + grow[axis])
        c = self.contract
        local = fit_crop_to_valid_size(
            tuple(int(v) for v in lo),  # type: ignore[arg-type]
            tuple(int(v) for v in hi - lo),  # type: ignore[arg-type]
            lo.astype(float),
            hi.astype(float),
            tuple(int(v) for v in n),  # type: ignore[arg-type]
            reserve_spacing,  # type: ignore[arg-type]
            c.segmentation_spacing_mm,
            c.segmentation_max_size_vox,
            c.segmentation_size_multiple,
            0.0,
        )
        grown = GridCrop(
            tuple(int(v) for v in origin + np.asarray(local.start_zyx) * f),  # type: ignore[arg-type]
            tuple(int(v) for v in np.asarray(local.size_zyx) * f),  # type: ignore[arg-type]
            local.out_shape_zyx,
            grid.spacing_mm_zyx,
        )
        if np.any(np.asarray(grown.start_zyx) > crop.start_zyx) or np.any(
            np.asarray(grown.stop_zyx) < crop.stop_zyx
        ):  # cannot happen while the reserve holds the grown region; never lose the first pass
            log.debug("grown region %s does not hold the first %s: no second pass", grown, crop)
            return None
        second: dict[str, float] = {}
        centre = (np.asarray(centre_edge_zyx, float) - origin) / f
        x = self._segmentation_input(reserve.voxels_zyx, local, centre, second)
        regrown: list[tf.Tensor | np.ndarray] = [self._segmentation_forward(x, grown, second)]
        del x
        if self.clean_up:
            regrown = [self._clean_up(regrown, grown, second)]
        timings["regrow_s"] = time.perf_counter() - t
        by_organ: dict[str, list[str]] = {}
        for cut in cuts:
            by_organ.setdefault(cut.organ, []).append(cut.side)
        message = (
            "; ".join(
                f"the {name}'s mask reached the edge of the segmented region " + " and ".join(sides)
                for name, sides in by_organ.items()
            )
            + f": the localization's box was too tight, and the region was grown by {REGROW_MM:.0f} mm "
            "there and segmented again"
        )
        log.warning("%s", message)
        warnings.append(message)
        return regrown, grown

    def _segmentation_crop(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        found: bool,
        shape_zyx: tuple[int, int, int],
        spacing: tuple[float, float, float],
    ) -> GridCrop:
        """The segmentation box around the localized organs (lo, hi: canonical edge coordinates),
        with the contract's margin when organs were found; the whole image otherwise."""
        c = self.contract
        margin = c.box_margin_mm if found else 0.0
        start, size = crop_around_box(lo, hi, shape_zyx, spacing, margin)
        # No padding to valid sizes: the crop is trimmed (keeping at least half the margin) or
        # grown with image context to a multiple of the valid size.
        return fit_crop_to_valid_size(
            start,
            size,
            lo,
            hi,
            shape_zyx,
            spacing,
            c.segmentation_spacing_mm,
            c.segmentation_max_size_vox,
            c.segmentation_size_multiple,
            margin / 2.0,
        )

    def _back_to_grid(
        self,
        scores: list[tf.Tensor | np.ndarray],
        crop: GridCrop,
        frame: _CanonicalFrame,
        original: Geometry,
        organs: tuple[int, ...],
        warnings: list[str],
        inner: tuple[list[tf.Tensor | np.ndarray], GridCrop] | None = None,
    ) -> tuple[np.ndarray, dict[str, BoxMM | None], dict[int, int]]:
        """Labels on the input's own grid from the box's class scores (a one-element list, emptied
        as soon as the labels are written), with each organ's LPS box and voxel count; labels not
        in ``organs`` become background. ``inner``: a first pass's scores and crop, inside
        ``crop``, whose labels replace the second pass's there (``_regrow``). Logs and appends to
        ``warnings`` those about organs the segmented region cuts off
        (``service.postprocess.organs_cut_by_region``)."""
        if frame.axes is not None:
            labels_original = np.zeros(original.shape_zyx, np.uint8)
            labels = frame.axes.view(labels_original)  # written in canonical order, stored in the input's
        else:
            labels = np.zeros(frame.geometry.shape_zyx, np.uint8)
        self._scores_to_labels(scores.pop(), crop, labels)
        if inner is not None:  # a first pass over a region inside ``crop``: its labels win there
            self._scores_to_labels(inner[0].pop(), inner[1], labels)
        region = labels[tuple(slice(a, b) for a, b in zip(crop.start_zyx, crop.stop_zyx, strict=True))]
        if len(organs) < len(ORGANS):
            _keep_only(region, organs)
        # Labels exist only in the box; an oblique input's mask is counted on its own grid below.
        organ_boxes, counts = self._organ_boxes(region, crop, frame.geometry)
        grid = frame.geometry
        for warning in organs_cut_by_region(region, crop.start_zyx, grid.shape_zyx, grid.spacing_mm_zyx):
            log.warning("%s", warning)
            warnings.append(warning)
        del region
        if frame.axes is not None:
            return labels_original, organ_boxes, counts
        assert frame.transform is not None  # an oblique input was resampled by ``to_canonical``
        mask = undo_canonical(image_from_array_zyx(labels, frame.geometry), frame.transform)
        del labels
        labels_original = sitk.GetArrayFromImage(mask)
        del mask
        counts = {k: int(np.count_nonzero(labels_original == k)) for k in ORGANS}
        return labels_original, organ_boxes, counts

    def _slab_budget(self) -> int:
        return max(8 * 2**20, self.memory_budget_bytes // 4)

    def _localization_crop(self, shape_zyx: tuple[int, ...], spacing: tuple[float, float, float]) -> GridCrop:
        """The whole canonical grid, resampled to the localization spacing."""
        c = self.contract
        shape = plan_shape(shape_zyx, spacing, c.localization_spacing_mm, c.localization_max_size_vox)  # type: ignore[arg-type]
        return GridCrop((0, 0, 0), tuple(shape_zyx), shape, spacing)  # type: ignore[arg-type]

    def _localize(
        self,
        vol: np.ndarray,
        spacing: tuple[float, float, float],
        timings: dict[str, float],
        warnings: list[str],
        prepared: _PreparedLocalization | None = None,
    ) -> LocalizationPlan:
        """The organs' box and the region to segment, in canonical edge coordinates (see
        ``service.localization``). Appends to ``warnings`` when the image does not look like a CT in
        Hounsfield units or when a heatmap was implausible."""
        t = time.perf_counter()
        c = self.contract
        crop = self._localization_crop(vol.shape, spacing)
        shape = crop.out_shape_zyx
        if prepared is not None and prepared.resampler.crop == crop:
            timings["localization_during_read_s"] = round(prepared.seconds, 4)
            small = prepared.resampler.finish()
        else:
            small = resample_crop(self.models.tf_utils, vol, crop, self._slab_budget())
        lowest = float(small.min())
        if lowest > NO_AIR_ABOVE_HU:
            warnings.append(
                f"the image holds no air (its lowest value is {lowest:.0f} on the localization "
                f"grid, air is -1000 HU): the networks expect a CT in Hounsfield units, and an image "
                f"stored without its rescale intercept, or not a CT, gets a meaningless mask"
            )
        x = self.models.tf_utils.normalize_localization(tf.constant(small))
        timings["localization_preprocess_s"] = time.perf_counter() - t
        t = time.perf_counter()
        heat = self.models.localization(x)[LOCALIZATION_OUTPUT][0, : shape[0], : shape[1], : shape[2]]
        plan = plan_localization(heat.numpy(), crop.out_spacing_mm_zyx, c.heatmap_threshold)
        warnings.extend(plan.warnings)
        timings["localization_forward_s"] = time.perf_counter() - t
        return replace(
            plan,
            lo_zyx=crop.out_edge_to_source_edge(plan.lo_zyx),
            hi_zyx=crop.out_edge_to_source_edge(plan.hi_zyx),
            region_lo_zyx=crop.out_edge_to_source_edge(plan.region_lo_zyx),
            region_hi_zyx=crop.out_edge_to_source_edge(plan.region_hi_zyx),
        )

    def _segmentation_input(
        self, vol: np.ndarray, crop: GridCrop, centre_edge_zyx: np.ndarray, timings: dict[str, float]
    ) -> tf.Tensor:
        """The segmentation network's input (1, D, H, W, channels) for the box ``crop``."""
        t = time.perf_counter()
        box = resample_crop(self.models.tf_utils, vol, crop, self._slab_budget())
        centre_mm = crop.source_edge_to_out_mm(centre_edge_zyx)
        x = self.models.tf_utils.normalize_segmentation(
            tf.constant(box),
            tf.constant(crop.out_spacing_mm_zyx, tf.float32),
            tf.constant(centre_mm, tf.float32),
        )
        timings["crop_resample_s"] = time.perf_counter() - t
        return x

    def _segmentation_forward(self, x: tf.Tensor, crop: GridCrop, timings: dict[str, float]) -> tf.Tensor:
        """Class probabilities (d, h, w, classes) on the box grid."""
        t = time.perf_counter()
        d, h, w = crop.out_shape_zyx
        probabilities = self.models.segmentation(x)[SEGMENTATION_OUTPUT][0, :d, :h, :w]
        _ = probabilities[0, 0, 0, 0].numpy()  # wait for the forward pass (asynchronous on a GPU)
        timings["segmentation_forward_s"] = time.perf_counter() - t
        return probabilities

    def _clean_up(
        self, scores: list[tf.Tensor | np.ndarray], crop: GridCrop, timings: dict[str, float]
    ) -> np.ndarray:
        """The class scores (a one-element list, emptied) as a writable array on the box grid, with
        each organ's stray components dropped (``service.postprocess``)."""
        t = time.perf_counter()
        cleaned = np.array(scores.pop(), np.float32)
        removed = drop_stray_components(cleaned, crop.out_spacing_mm_zyx)
        if removed:
            log.debug("stray components dropped (box voxels): %s", removed)
        timings["clean_up_s"] = time.perf_counter() - t
        return cleaned

    def _scores_to_labels(
        self, probabilities: tf.Tensor | np.ndarray, crop: GridCrop, labels: np.ndarray
    ) -> None:
        """Resample scores onto the crop of the canonical grid slab by slab; argmax into ``labels``."""
        region = labels[tuple(slice(a, b) for a, b in zip(crop.start_zyx, crop.stop_zyx, strict=True))]
        labels_from_scores(self.models.tf_utils, probabilities, region, self._slab_budget())

    @staticmethod
    def _organ_boxes(
        region: np.ndarray, crop: GridCrop, geometry: Geometry
    ) -> tuple[dict[str, BoxMM | None], dict[int, int]]:
        """Per-organ LPS boxes and voxel counts from the labels inside the crop (``region``).

        One pass turns each label into a bit (1 << label); OR-reducing those along the axes gives,
        per slice, row and column, the set of labels present, hence every organ's box at once.
        Each organ's voxels are then counted inside its own box only."""
        bits = np.left_shift(np.uint8(1), region)
        per_z = np.bitwise_or.reduce(bits.reshape(bits.shape[0], -1), axis=1)
        per_yx = np.bitwise_or.reduce(bits, axis=0)
        del bits
        projections = (per_z, np.bitwise_or.reduce(per_yx, axis=1), np.bitwise_or.reduce(per_yx, axis=0))
        boxes: dict[str, BoxMM | None] = {}
        counts: dict[int, int] = {}
        for k, name in ORGANS.items():
            idx = [np.flatnonzero(p & np.uint8(1 << k)) for p in projections]
            if idx[0].size == 0:
                boxes[name], counts[k] = None, 0
                continue
            inside = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
            counts[k] = int(np.count_nonzero(region[inside] == k))
            lo = np.array([i[0] for i in idx], float) + crop.start_zyx
            hi = np.array([i[-1] + 1 for i in idx], float) + crop.start_zyx
            boxes[name] = _box_mm(geometry, lo, hi)
        return boxes, counts


@dataclass(frozen=True)
class _Reserve:
    """The voxels around the segmentation crop kept for a second pass (``Segmenter._reserve``)."""

    voxels_zyx: np.ndarray  # int16, block averages of ``factor_zyx`` canonical voxels
    start_zyx: tuple[int, int, int]  # the canonical voxel of its first block's first voxel
    factor_zyx: tuple[int, int, int]


@dataclass(frozen=True)
class _PreparedLocalization:
    resampler: SlabResampler  # every slice added: ``finish()`` gives the localization input
    seconds: float  # spent on it while the file was being read


class _LocalizationStream:
    """A ``VoxelSink`` that resamples the localization input in-plane from z-slabs of a file as
    soon as they are decompressed (``run`` on a worker thread), so that this work overlaps the
    decompression. Only for files whose slowest axis is the canonical z axis (the usual axial
    stack, flipped or not); other files are left to the pipeline. The slabs are converted and
    resampled exactly as ``_segment`` would, so the result is the same."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.cond = threading.Condition()
        self.array: np.ndarray | None = None
        self.ready = 0
        self.closed = False
        self.failed = False
        self.seconds = 0.0

    # --- VoxelSink, called on the reading thread
    def begin(self, geometry: Geometry, array_zyx: np.ndarray) -> None:
        try:
            if not geometry.is_axis_aligned:
                return
            axes, canonical = canonical_axes(geometry)
            if axes.transpose_zyx[0] != 0:  # slices of the file are not canonical z-slices
                return
            crop = self.segmenter._localization_crop(canonical.shape_zyx, canonical.spacing_mm_zyx)
            resampler = SlabResampler(self.segmenter.models.tf_utils, crop, canonical.shape_zyx[1:])
        except Exception:  # never disturb reading: the pipeline will do this work itself
            log.debug("localization stream disabled", exc_info=True)
            return
        with self.cond:
            self.axes, self.resampler, self.array = axes, resampler, array_zyx
            self.cond.notify()

    def filled(self, slices: int) -> None:
        with self.cond:
            self.ready = slices
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    # --- worker thread
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            self.failed = True
            log.debug("localization stream failed; the pipeline will resample itself", exc_info=True)

    def _run(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.array is not None or self.closed)
            if self.array is None:
                return
            array, axes, resampler = self.array, self.axes, self.resampler
        nz = array.shape[0]
        view = axes.view(array)
        flip = axes.flip_zyx[0]
        step = resampler.slab_slices(self.segmenter._slab_budget())
        a = 0
        while a < nz:
            b = min(nz, a + step)
            with self.cond:
                self.cond.wait_for(lambda: self.ready >= b or self.closed)  # noqa: B023
                if self.ready < b:
                    return  # reading stopped early (an error): nothing to finish
            t = time.perf_counter()
            ca, cb = (nz - b, nz - a) if flip else (a, b)
            resampler.add(view, ca, cb, convert=_as_int16_array)
            self.seconds += time.perf_counter() - t
            a = b

    def result_for(self, array_zyx: np.ndarray | None) -> _PreparedLocalization | None:
        """The prepared input, if complete and computed from exactly ``array_zyx``'s buffer."""
        if self.array is None or self.failed or array_zyx is None or not self.resampler.complete:
            return None
        if not (array_zyx.shape == self.array.shape and np.shares_memory(array_zyx, self.array)):
            return None  # another reader produced the volume (e.g. a multi-member gzip file)
        return _PreparedLocalization(self.resampler, self.seconds)


@dataclass(frozen=True)
class _CanonicalVoxels:
    """The input's voxels on the canonical (LPS) grid, (z, y, x) int16 without a copy, and what
    holds them: the input's own int16 voxels (axis-aligned input) or the resampled image."""

    voxels_zyx: np.ndarray
    image: sitk.Image | None = None  # an oblique input's canonical image, which ``voxels_zyx`` views


@dataclass(frozen=True)
class _CanonicalFrame:
    """The canonical grid, and the way from it back onto the input's own grid."""

    geometry: Geometry
    axes: AxisMap | None  # an axis-aligned input: a lossless view (transpose + flips)
    transform: CanonicalTransform | None = None  # an oblique input: the resampling to undo


def _reorient(
    array_zyx: np.ndarray, original: Geometry, timings: dict[str, float]
) -> tuple[_CanonicalVoxels, _CanonicalFrame]:
    """Check the voxels against their grid and see them on the canonical grid."""
    t = time.perf_counter()
    if array_zyx.ndim != 3 or tuple(array_zyx.shape) != original.shape_zyx:
        raise ValueError(f"voxel array of shape {array_zyx.shape} does not match the grid {original}")
    if min(original.size_xyz) < 1:
        raise ValueError(f"empty image of size {original.size_xyz}")
    source = _as_int16_array(array_zyx)
    if original.is_axis_aligned:
        # Lossless reorientation as a numpy view (transpose + flips): no copy of the volume.
        axes, geometry = canonical_axes(original)
        canonical, frame = _CanonicalVoxels(axes.view(source)), _CanonicalFrame(geometry, axes)
    else:
        image, transform = to_canonical(image_from_array_zyx(source, original))
        del source
        vol = sitk.GetArrayViewFromImage(image)  # (z, y, x) int16, no copy
        canonical = _CanonicalVoxels(vol, image)
        frame = _CanonicalFrame(Geometry.of(image), None, transform)
    timings["reorient_s"] = time.perf_counter() - t
    return canonical, frame


def _chosen_organs(organs: Collection[int] | None) -> tuple[int, ...]:
    if organs is None:
        return tuple(ORGANS)
    chosen = tuple(sorted(set(int(k) for k in organs)))
    unknown = [k for k in chosen if k not in ORGANS]
    if not chosen or unknown:
        raise ValueError(f"organs must be labels among {sorted(ORGANS)}, not {list(organs)}")
    return chosen


def _keep_only(labels: np.ndarray, organs: tuple[int, ...], slab: int = 16) -> None:
    """Set every label not in ``organs`` to background, in place, slab by slab."""
    keep = np.zeros(256, np.uint8)
    keep[list(organs)] = list(organs)
    for a in range(0, labels.shape[0], slab):
        labels[a : a + slab] = keep[labels[a : a + slab]]


def _box_mm(geometry: Geometry, lo_edge_zyx: np.ndarray, hi_edge_zyx: np.ndarray) -> BoxMM:
    """Edge-coordinate box on an identity-direction grid -> LPS (x, y, z) min and max corners in mm."""
    corners = np.stack([lo_edge_zyx[::-1], hi_edge_zyx[::-1]]) - 0.5  # edges -> continuous indices (x, y, z)
    pts = geometry.index_to_physical_xyz(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (tuple(round(float(v), 2) for v in lo), tuple(round(float(v), 2) for v in hi))  # type: ignore[return-value]


def _block_means(part: np.ndarray, factor_zyx: tuple[int, int, int]) -> np.ndarray:
    """int16 means of ``factor_zyx`` blocks of an int16 array whose shape is a multiple of them,
    rounded half up; summed in int32 one axis at a time (strided views, no float copy)."""
    fz, fy, fx = factor_zyx
    sums = part[:, 0::fy].astype(np.int32)
    for j in range(1, fy):
        sums += part[:, j::fy]
    if fx > 1:
        sums = sum((sums[:, :, i::fx] for i in range(1, fx)), sums[:, :, 0::fx].copy())
    if fz > 1:
        d, h, w = sums.shape
        sums = sums.reshape(d // fz, fz, h, w).sum(axis=1, dtype=np.int32)
    n = fz * fy * fx
    return ((sums + n // 2) // n).astype(np.int16)


def _as_int16_array(array: np.ndarray, slab: int = 16) -> np.ndarray:
    """HU as int16 (2 bytes a voxel): int16 passes through; others are clamped and rounded slab by
    slab (NaN becomes air, -1024), never as a whole-volume float temporary."""
    if array.dtype == np.int16:
        return array
    if array.dtype in (np.int8, np.uint8):
        return array.astype(np.int16)
    out = np.empty(array.shape, np.int16)
    lo = 0 if array.dtype.kind == "u" else INT16_MIN
    for a in range(0, array.shape[0], slab):
        part = array[a : a + slab]
        if array.dtype.kind == "f":
            part = np.rint(np.nan_to_num(part, nan=-1024.0, posinf=INT16_MAX, neginf=INT16_MIN))
        out[a : a + slab] = np.clip(part, lo, INT16_MAX)
    return out
