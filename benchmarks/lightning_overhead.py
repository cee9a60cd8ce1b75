"""Lightning's overhead: training throughput of the Trainer against a plain PyTorch loop, in one process.

Both run the same ``SegmentationSystem`` (same model, loss, SGD + poly schedule) on the same in-memory
batches, so data loading is out of the picture; the Lightning side includes everything it adds per step
(hooks, ``self.log`` of loss and learning rate, the progress bookkeeping), with checkpointing, validation and
the logger off. The two alternate ``--repeats`` times; each measures wall time over ``--steps`` steps after
``--warmup`` steps, with device synchronisation on a GPU. Prints the median images/s of each and the ratio.

    python benchmarks/lightning_overhead.py --profile quick --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch

from ablations.config import load_config
from ablations.hardware import synchronize
from ablations.training.system import SegmentationSystem


def make_batches(config, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    d, classes = config.data, config.head.num_classes
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(d.batch_size, 3, d.crop_size, d.crop_size, generator=generator).to(device),
            "mask": torch.randint(0, classes, (d.batch_size, d.crop_size, d.crop_size), generator=generator).to(device),
        }
        for _ in range(n)
    ]


def plain_loop(config, batches, device, *, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    system = SegmentationSystem(config.to_dict(), tuple(map(str, range(config.head.num_classes)))).to(device).train()
    optimizers = system.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    from ablations.training.system import segmentation_loss

    start = None
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        loss = segmentation_loss(system(batch["image"]), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    synchronize(device)
    return steps * config.data.batch_size / (time.perf_counter() - start)


class _Clock(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            synchronize(module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        synchronize(module.device)
        self.end = time.perf_counter()


def lightning_loop(config, batches, device, *, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    system = SegmentationSystem(config.to_dict(), tuple(map(str, range(config.head.num_classes))))
    clock = _Clock(warmup)
    trainer = pl.Trainer(
        max_steps=warmup + steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    # batch_size=None: the loader yields the prepared batches as they are (already on the device).
    loader = torch.utils.data.DataLoader(batches * (1 + (warmup + steps) // len(batches)), batch_size=None)
    trainer.fit(system, train_dataloaders=loader)
    return steps * config.data.batch_size / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config(overrides=args.overrides, profile=args.profile)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = make_batches(config, 4, device)
    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(config, batches, device, warmup=args.warmup, steps=args.steps))
        lightning.append(lightning_loop(config, batches, device, warmup=args.warmup, steps=args.steps))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {name}; {config.backbone.name} ×{config.backbone.width}, batch {config.data.batch_size}, "
        f"crop {config.data.crop_size}; {args.repeats} × {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"plain PyTorch  images/s: {' '.join(f'{v:.1f}' for v in plain)}  median {statistics.median(plain):.1f}")
    print(
        f"Lightning      images/s: {' '.join(f'{v:.1f}' for v in lightning)}  median {statistics.median(lightning):.1f}"
    )
    print(f"Lightning / plain throughput ratio: {statistics.median(lightning) / statistics.median(plain):.3f}")


if __name__ == "__main__":
    main()
