"""Generation speed of the embedded benchmark (ablations/data/synthetic.py), in one process.

For each image size, builds the dataset (the texture bank is built once, timed separately), warms up, then
times ``dataset[i]`` over ``--images`` consecutive indices ``--repeats`` times (fresh indices each time, so no
item is timed twice) and prints the median images/s. Training a narrow ResNet on 2 CPU cores consumes roughly
20-60 images/s at 128², so generation should stay above ~600 images/s there to be ≥ 10× faster.

    python benchmarks/synthetic_speed.py --sizes 64 128 256 --images 300 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ablations.data.synthetic import SyntheticShapes


def measure(image_size: int, images: int, repeats: int, warmup: int) -> tuple[float, float, list[float]]:
    start = time.perf_counter()
    dataset = SyntheticShapes(num_samples=warmup + images * repeats, image_size=image_size, seed=0)
    build = time.perf_counter() - start
    for i in range(warmup):
        dataset[i]
    rates = []
    for r in range(repeats):
        first = warmup + r * images
        start = time.perf_counter()
        for i in range(first, first + images):
            dataset[i]
        rates.append(images / (time.perf_counter() - start))
    return build, statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--images", type=int, default=300, help="images per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    # One thread: the number a single DataLoader worker (or the main process) gets, whatever the machine.
    torch.set_num_threads(1)
    print(f"{'size':>6} {'build s':>8} {'median img/s':>13} {'ms/img':>7}  repeats img/s")
    for size in args.sizes:
        build, median, rates = measure(size, args.images, args.repeats, args.warmup)
        shown = " ".join(f"{r:.0f}" for r in rates)
        print(f"{size:>6} {build:>8.3f} {median:>13.0f} {1000 / median:>7.2f}  {shown}")


if __name__ == "__main__":
    main()
