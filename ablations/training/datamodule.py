"""The LightningDataModule: builds the configured dataset, checks it before training, applies the recipe.

Two data paths (``data.render``). *cpu*: loader workers produce pixels (the synthetic benchmark in NumPy, real
datasets decoded from disk) and augment them on the CPU. *device* (the synthetic benchmark only; ``auto`` picks it
when the run trains on a CUDA GPU): the loaders ship each item's scene (``SyntheticShapes.scene``, a few hundred
numbers) and, for training, its scale/crop/flip draws, drawn on the CPU from the same per-sample seed; then
:meth:`SegmentationDataModule.on_after_batch_transfer`, which Lightning runs on the training device, renders the
batch there (``ablations.data.render``) and augments it (``apply_scale_crop_flip``). Both paths train on the same
stream (which item, which crop, in which order); pixels agree to the renderer's stated tolerance. Training batches
carry no size map (only evaluation uses it), and masks travel as uint8 where the classes fit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ablations.config import ConfigError, ExperimentConfig
from ablations.data import IGNORE_INDEX
from ablations.data.synthetic import ITEMS, SyntheticShapes
from ablations.data.transforms import apply_scale_crop_flip, pad_to, random_scale_crop_flip, scale_crop_flip_draws


def build_dataset(config: ExperimentConfig, split: str) -> Dataset:
    """The dataset ``config.data`` names, for ``split`` ("train" or "val" roles map to the configured splits)."""
    d = config.data
    if d.name == "synthetic":
        from ablations.data.synthetic import SyntheticShapes

        samples = d.train_samples if split == d.train_split else d.val_samples
        return SyntheticShapes(
            split=split,
            num_samples=samples,
            image_size=d.image_size,
            seed=d.seed,
            max_objects=d.max_objects,
            max_distractors=d.max_distractors,
            background_contrast=d.background_contrast,
            foreground_cue=d.foreground_cue,
            shapes=d.shapes,
            class_by=d.class_by,
        )
    from ablations.data.datasets import DATASETS, DatasetError

    if d.root is None:
        raise DatasetError(f"data.root is not set: data.name={d.name!r} reads a dataset from disk; give its folder")
    if d.name == "folder":
        return DATASETS["folder"](d.root, split, num_classes=config.head.num_classes, check=d.check)
    return DATASETS[d.name](d.root, split, check=d.check)


def _mix(*numbers: int) -> int:
    """A 63-bit seed from integers, the same in every process and Python version (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TrainingOrder(Sampler):
    """The training stream as a pure function of the run's seed: each epoch a permutation of the split drawn from
    (seed, epoch), and with every index the seed of that sample's augmentation, drawn from (seed, epoch, place).

    So the stream (which images, which crops, in which order) depends neither on the number of loader workers
    nor on the process (pixel values may differ in the last bit between thread counts): a run resumed from a
    checkpoint at step k (:meth:`resume_at`) trains on the same crops, in the same order, as the run that was
    interrupted. With several ranks each takes every ``world_size``-th place of the permutation.
    """

    def __init__(self, size: int, *, seed: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch, self._skip = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(range(self.rank, self.size, self.world_size)) // self.batch_size

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def resume_at(self, step: int) -> None:
        """The next iteration starts after ``step`` optimiser steps (an epoch, then a place inside it)."""
        self.epoch, within = divmod(step, self.steps_per_epoch)
        self._skip = within * self.batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        places = range(self.rank, self.size, self.world_size)[: len(self)]
        skip, self._skip = self._skip, 0
        for place in places[skip:]:
            yield order[place], _mix(self.seed, self.epoch, place)


class TrainingLoader(DataLoader):
    """A DataLoader whose position Lightning saves in every checkpoint and restores on resume (Lightning treats
    a loader with ``state_dict``/``load_state_dict`` as resumable): the steps already trained."""

    def __init__(self, *args, steps_done: Callable[[], int] = lambda: 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps_done = steps_done

    def state_dict(self) -> dict[str, int]:
        return {"steps": int(self.steps_done())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(int(state["steps"]))


class Transformed(Dataset):
    """A dataset with a training transform. Given ``(index, seed)`` (``TrainingOrder``), the transform draws from
    a generator seeded with ``seed``; given an index, from torch's global generator."""

    def __init__(self, dataset: Dataset, transform: Callable[..., dict]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(item, tuple):
            index, seed = item
            key = self._cache_key(index, seed)
            cached = ITEMS.get(key) if key is not None else None
            if cached is not None:
                return dict(cached)
            sample = self.transform(self.dataset[index], generator=torch.Generator().manual_seed(seed))
            if key is not None:
                ITEMS.put(key, sample)
                return dict(sample)
            return sample
        return self.transform(self.dataset[item])

    def _cache_key(self, index: int, seed: int) -> tuple | None:
        """A seeded training sample is a pure function of the item, the seed and the recipe: a sweep's arms with
        the same training seed draw the same stream, so on the embedded benchmark it is kept in the process's item
        cache (``ablations.data.synthetic.ITEMS``) and the next arm reuses it instead of rendering and augmenting
        it again. Real datasets are read afresh (their files may change under a long sweep)."""
        if not isinstance(self.dataset, SyntheticShapes) or not isinstance(self.transform, functools.partial):
            return None
        recipe = (self.transform.func.__qualname__, tuple(sorted(self.transform.keywords.items())))
        return (repr(self.dataset), int(index), "train", int(seed), repr(recipe))


def training_sample(
    sample: dict[str, torch.Tensor], *, small_labels: bool = True, generator: torch.Generator | None = None, **recipe
) -> dict[str, torch.Tensor]:
    """The CPU path's training transform: drop the size map (training never reads it), ship the mask as uint8 when
    the classes and ignore fit (``small_labels``; an eighth of int64's bytes), then ``random_scale_crop_flip``."""
    sample = {key: value for key, value in sample.items() if key != "size"}
    if small_labels and sample["mask"].dtype != torch.uint8:
        sample["mask"] = sample["mask"].to(torch.uint8)
    return random_scale_crop_flip(sample, generator=generator, **recipe)


class SceneItems(Dataset):
    """The synthetic benchmark as scenes for the device path (``Scene.tensors``). Given ``(index, seed)``
    (``TrainingOrder``) with a ``recipe``, each item also carries ``"augment"``: the scale/crop/flip draws
    (scaled height, width, top, left, flipped) from a generator seeded with ``seed``, exactly as the CPU path draws
    them; given an index, from torch's global generator."""

    def __init__(self, dataset, recipe: dict[str, Any] | None = None) -> None:
        self.dataset, self.recipe = dataset, recipe

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, generator = (
            (item[0], torch.Generator().manual_seed(item[1])) if isinstance(item, tuple) else (item, None)
        )
        out = self.dataset.scene(index).tensors()
        if self.recipe is not None:
            side = self.dataset.image_size
            (height, width), top, left, flipped = scale_crop_flip_draws(side, side, generator=generator, **self.recipe)
            out["augment"] = torch.tensor([height, width, top, left, int(flipped)], dtype=torch.int64)
        return out


class _HostPlan:
    """CPU copies of what the renderer plans from (primitive kinds and boxes, the augmentation draws), taken before
    Lightning moves a batch: not a tensor or a collection, so the transfer leaves it on the host and the device path
    needs no device-to-host copy (a synchronisation) per step."""

    __slots__ = ("augment", "box", "kind")

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.kind, self.box = batch["kind"], batch["box"]  # the transfer copies them; these stay where they are
        self.augment = batch["augment"].tolist() if "augment" in batch else None


def pad_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch images of different sizes by padding to the largest (image mean, ignore label)."""
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)
    padded = [pad_to(s, (height, width), ignore_index=IGNORE_INDEX) for s in samples]
    return {key: torch.stack([s[key] for s in padded]) for key in padded[0]}


class SegmentationDataModule(pl.LightningDataModule):
    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        self.config = config
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.renderer = None  # the synthetic benchmark's torch rasteriser (ablations.data.render), once set up

    def setup(self, stage: str | None = None) -> None:
        """Build and check both splits (idempotent); raises before any training step on a bad dataset."""
        if self.train_set is not None:
            return
        d, classes = self.config.data, self.config.head.num_classes
        train_set, val_set = build_dataset(self.config, d.train_split), build_dataset(self.config, d.val_split)
        if train_set.num_classes != classes:
            raise ConfigError(
                f"head.num_classes={classes}: the {d.name} dataset has {train_set.num_classes} classes; "
                "leave head.num_classes unset to take the dataset's"
            )
        if len(train_set) < d.batch_size:
            raise ConfigError(
                f"data.batch_size={d.batch_size}: larger than the {len(train_set)} images of split {d.train_split!r} "
                "(incomplete batches are dropped, so no step could run)"
            )
        self.train_set, self.val_set = train_set, val_set
        if d.name == "synthetic":
            from ablations.data.render import SceneRenderer

            self.renderer = SceneRenderer(train_set)  # train and val share the image size and the texture bank

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.train_set.class_names)

    @property
    def has_size_buckets(self) -> bool:
        return self.config.data.name == "synthetic"

    @property
    def renders_on_device(self) -> bool:
        """Whether the loaders ship scenes that :meth:`on_after_batch_transfer` renders (``data.render``): ``device``,
        or ``auto`` for the synthetic benchmark on a run that trains on a CUDA GPU. On a CPU ``auto`` keeps NumPy on
        the loader workers: on the 2-core AMD EPYC the torch path made 0.8-1.1× NumPy's images/s per core at 96² and
        0.5-0.8× at 513² (``benchmarks/render_speed.py``)."""
        d = self.config.data
        if d.name != "synthetic" or d.render == "cpu":
            return False
        if d.render == "device":
            return True
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        d = self.config.data
        recipe = {"crop_size": d.crop_size, "scale_range": (d.scale_min, d.scale_max), "flip": d.flip}
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        order = TrainingOrder(
            len(self.train_set), seed=self.config.train.seed, batch_size=d.batch_size, rank=rank, world_size=world
        )
        if self.renders_on_device:
            items: Dataset = SceneItems(self.train_set, recipe)
        else:
            # uint8 masks where the labels are known to fit (the generator's; a real mask with data.check=none may
            # hold any value, which a cast would wrap into a valid-looking class instead of failing).
            small = d.name == "synthetic" and self.train_set.num_classes < IGNORE_INDEX
            transform = functools.partial(training_sample, small_labels=small, ignore_index=IGNORE_INDEX, **recipe)
            items = Transformed(self.train_set, transform)
        # drop_last: a last batch of one image would break BatchNorm (torchvision #2151) and skew the step count.
        return TrainingLoader(
            items,
            batch_size=d.batch_size,
            sampler=order,
            drop_last=True,
            steps_done=(lambda: trainer.global_step) if trainer is not None else (lambda: 0),
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        d = self.config.data
        batch = d.val_batch_size or (d.batch_size if d.name == "synthetic" else 1)
        sampler = None
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # Lightning's default DistributedSampler pads the split so every rank gets as many images; the
            # padding images would count twice in the summed confusion matrix. This one gives each image to one
            # rank exactly once (ranks may differ by one batch, which evaluation allows).
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(
                self.val_set, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        device = self.renders_on_device
        return DataLoader(
            SceneItems(self.val_set) if device else self.val_set,
            batch_size=batch,
            shuffle=False,
            sampler=sampler,
            collate_fn=None if device else pad_collate,  # scenes have fixed sizes: the default collate stacks them
            **self._loader_options(),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Still on the host: a scene batch keeps host copies of its plan (``_HostPlan``) through the transfer."""
        if isinstance(batch, dict) and "kind" in batch:
            batch["plan"] = _HostPlan(batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the training device: a batch of scenes becomes pixels here (device path); other batches pass through.
        Training batches are augmented and carry no size map; evaluation batches keep it (the size metrics)."""
        if not (isinstance(batch, dict) and "kind" in batch):
            return batch
        plan = batch.pop("plan", None)
        training = "augment" in batch
        out = self.renderer(batch, size=not training, plan=None if plan is None else (plan.kind, plan.box))
        if training:
            draws = plan.augment if plan is not None else batch["augment"]
            out = apply_scale_crop_flip(out, draws, crop_size=self.config.data.crop_size, ignore_index=IGNORE_INDEX)
        return out

    def _loader_options(self) -> dict[str, Any]:
        workers = self.config.data.num_workers
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
            # Worker seeds come from the loader's own generator, so that starting a loader does not advance torch's
            # global one (which draws dropout masks: a resumed run must see the same as an uninterrupted run).
            "generator": torch.Generator().manual_seed(self.config.train.seed),
        }
