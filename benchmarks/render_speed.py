"""Training images/s of the embedded benchmark's two data paths (``data.render``), per image size.

* numpy: what one CPU loader worker does per training image: ``SyntheticShapes[i]`` (NumPy) and the CPU
  transform (``training_sample``: drop the size map, uint8 mask, ``random_scale_crop_flip``), one at a time.
* torch: the device path: per batch of ``--batch`` items, the scene draw and augmentation draws on the CPU
  (``SceneItems``), the default collate, then ``SceneRenderer`` and ``apply_scale_crop_flip`` on ``--device``.
  On a CPU the whole is timed (the ratio to numpy is what ``data.render: auto`` is chosen by); with
  ``--device cuda`` the draw (CPU, overlapped with training by the loader in a real run) and the device part
  (timed with ``torch.cuda.synchronize``) are reported separately, after a warm-up.

Each figure is the median of ``--repeats`` timings over fresh indices (no item timed twice), crop = image side,
scale 0.5-2 and flip as in the profiles. ``--threads`` (default 1: what a loader worker gets) applies to both.

    python benchmarks/render_speed.py --sizes 96 513
    python benchmarks/render_speed.py --sizes 513 --device cuda --batches 10
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch.utils.data import default_collate

from ablations.data.render import SceneRenderer
from ablations.data.synthetic import SyntheticShapes
from ablations.data.transforms import apply_scale_crop_flip
from ablations.hardware import cpu_name
from ablations.training.datamodule import SceneItems, training_sample

SCALES = (0.5, 2.0)


def numpy_path(size: int, images: int, repeats: int, warmup: int) -> list[float]:
    dataset = SyntheticShapes(num_samples=warmup + images * repeats, image_size=size, seed=0)
    transform = functools.partial(training_sample, crop_size=size, scale_range=SCALES, flip=True)
    rates = []
    for r in range(-1, repeats):  # r = -1: the warm-up
        first, count = (0, warmup) if r < 0 else (warmup + r * images, images)
        start = time.perf_counter()
        for i in range(first, first + count):
            transform(dataset[i], generator=torch.Generator().manual_seed(i))
        if r >= 0:
            rates.append(count / (time.perf_counter() - start))
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_path(size: int, batch: int, batches: int, repeats: int, device: torch.device) -> tuple[list, list]:
    """(images/s of the CPU draw, images/s of the device render + augment) per repeat."""
    dataset = SyntheticShapes(num_samples=batch * batches * (repeats + 1), image_size=size, seed=0)
    items = SceneItems(dataset, {"crop_size": size, "scale_range": SCALES, "flip": True})
    renderer = SceneRenderer(dataset)
    draw_rates, device_rates = [], []
    for r in range(-1, repeats):  # r = -1: the warm-up (texture bank to the device, kernels, allocator)
        first = (r + 1) * batch * batches
        drawn, draw_s = [], 0.0
        for b in range(batches):
            start = time.perf_counter()
            scenes = default_collate([items[(i, i)] for i in range(first + b * batch, first + (b + 1) * batch)])
            drawn.append((scenes, scenes["kind"], scenes["box"], scenes["augment"].tolist()))
            draw_s += time.perf_counter() - start
        moved = [({k: v.to(device) for k, v in s.items()}, kind, box, aug) for s, kind, box, aug in drawn]
        _sync(device)
        start = time.perf_counter()
        for scenes, kind, box, augment in moved:
            out = renderer(scenes, plan=(kind, box))
            apply_scale_crop_flip(out, augment, crop_size=size)
        _sync(device)
        device_s = time.perf_counter() - start
        if r >= 0:
            draw_rates.append(batch * batches / draw_s)
            device_rates.append(batch * batches / device_s)
    return draw_rates, device_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 513])
    parser.add_argument("--device", default="cpu", help="where the torch path renders: cpu | cuda | cuda:N")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2, help="batches per timed repeat of the torch path")
    parser.add_argument("--images", type=int, default=0, help="images per repeat of numpy (0: as the torch path)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{cpu_name()}; torch {torch.__version__}, {args.threads} thread(s); torch path on {where}")
    print(f"{'size':>5} {'numpy img/s':>12} {'draw img/s':>11} {'render+aug img/s':>17} {'torch img/s':>12} "
          f"{'torch/numpy':>12}")  # fmt: skip
    for size in args.sizes:
        images = args.images or args.batch * args.batches
        numpy_rate = statistics.median(numpy_path(size, images, args.repeats, warmup=min(images, 8)))
        draws, renders = torch_path(size, args.batch, args.batches, args.repeats, device)
        draw, render = statistics.median(draws), statistics.median(renders)
        # Serial (draw then render, as on a CPU in one process); on a GPU the loader overlaps the draw.
        overall = 1 / (1 / draw + 1 / render) if device.type == "cpu" else min(draw, render)
        print(f"{size:>5} {numpy_rate:>12.1f} {draw:>11.1f} {render:>17.1f} {overall:>12.1f} "
              f"{overall / numpy_rate:>12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
