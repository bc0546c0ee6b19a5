"""Benchmark: time and memory of the two-stage pipeline on a full-size phantom CT.

Prints per-stage seconds, voxels per second and the process's peak resident memory relative to
the size of the input volume (int16) and of a hypothetical full-resolution float32 volume with
one channel per label, which the pipeline must never hold.

    python benchmarks/bench_pipeline.py [--models-dir saved_models] [--seed 990001] [--budget-mb 512 2048]
"""

from __future__ import annotations

import argparse
import resource
import time

import SimpleITK as sitk

from flare_seg.labels import NUM_CLASSES
from flare_seg.service.pipeline import Segmenter
from flare_seg.training.phantom import PhantomOptions, generate_case


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="saved_models")
    parser.add_argument("--seed", type=int, default=990001)
    parser.add_argument("--budget-mb", type=int, nargs="+", default=[2048])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    t = time.perf_counter()
    image, _ = generate_case(args.seed, PhantomOptions(size="full", flip_probability=1.0))
    print(f"phantom generated in {time.perf_counter() - t:.1f} s")
    n = image.GetNumberOfPixels()
    int16_mb = n * 2 / 2**20
    multi_float_mb = n * 4 * NUM_CLASSES / 2**20
    print(
        f"input size {image.GetSize()} spacing {tuple(round(s, 2) for s in image.GetSpacing())} "
        f"= {n / 1e6:.1f} M voxels; int16 {int16_mb:.0f} MiB; "
        f"float32 x {NUM_CLASSES} labels {multi_float_mb:.0f} MiB"
    )
    base = peak_rss_mb()
    print(f"peak RSS before loading models: {base:.0f} MiB")
    for budget in args.budget_mb:
        segmenter = Segmenter.load(args.models_dir, memory_budget_mb=budget)
        segmenter.warm_up()
        before = peak_rss_mb()
        for r in range(args.repeats):
            t = time.perf_counter()
            result = segmenter.segment_image(image)
            total = time.perf_counter() - t
            stages = "  ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items())
            print(f"budget {budget} MiB run {r}: {total:.2f} s ({n / total / 1e6:.1f} M voxels/s)  {stages}")
        after = peak_rss_mb()
        print(
            f"budget {budget} MiB: peak RSS {after:.0f} MiB (+{after - before:.0f} MiB during inference, "
            f"{(after - base) / int16_mb:.2f}x the int16 input)"
        )
        del segmenter
    assert isinstance(result.mask, sitk.Image)


if __name__ == "__main__":
    main()
