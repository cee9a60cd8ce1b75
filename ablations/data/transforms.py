"""Training transforms: the DeepLab v3 §4 recipe, applied jointly to every spatial key of a sample.

A sample is a dict as produced by :mod:`ablations.data`: ``"image"`` a float ``(3, H, W)`` RGB tensor in [0, 1],
and any number of integer (``LABEL_DTYPES``: int64, or uint8, the smallest type that holds ≤ 255 classes and the
ignore label 255) ``(H, W)`` label maps (``"mask"``, ``"size"``, ...). Every label map receives
exactly the geometric transform the image receives, with nearest-neighbour interpolation and ``ignore_index``
padding; other keys pass through untouched.

``random_scale_crop_flip``: scale by one factor drawn uniformly from ``scale_range`` (image bilinear, label maps
nearest), pad bottom/right up to the crop size (image with the ImageNet mean, so that it is 0 after
normalisation; label maps with ``ignore_index``), take a random crop, then flip horizontally with p = 0.5.

Randomness comes from the ``generator`` passed in, or torch's global generator, so a ``torch.manual_seed`` makes
it reproducible. Training passes one generator per sample, seeded from the run's seed and the sample's place in
the training order (``ablations.training.datamodule.TrainingOrder``).

``scale_crop_flip_draws`` is the random part alone (scaled size, crop corner, flip), consuming the generator
exactly as ``random_scale_crop_flip`` does; ``apply_scale_crop_flip`` applies given draws to a batch of same-size
samples on whatever device it is on (the synthetic benchmark rendered on the training device draws on the CPU in
the loader and augments there). For the same draws the two agree: label maps exactly, images exactly on the same
device (the same ``F.interpolate`` call per image) and to rounding across devices.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ablations.data import IGNORE_INDEX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_DTYPES",
    "apply_scale_crop_flip",
    "pad_to",
    "random_scale_crop_flip",
    "scale_crop_flip_draws",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Label maps: integer tensors of these types (uint8 holds ≤ 255 classes plus ignore = 255 at an eighth of int64).
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    h, w = (value, value) if isinstance(value, int) else tuple(value)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them, got {value!r}")
    return h, w


def _split(sample: dict) -> tuple[torch.Tensor, list[str]]:
    """The image and the names of the label maps that must follow it; fails on maps of another size."""
    image = sample.get("image")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
        raise ValueError("sample['image'] must be a floating-point (C, H, W) tensor")
    hw = image.shape[-2:]
    keys = []
    for key, value in sample.items():
        if key != "image" and isinstance(value, torch.Tensor) and value.dtype in LABEL_DTYPES and value.dim() == 2:
            if value.shape != hw:
                raise ValueError(f"sample[{key!r}] is {tuple(value.shape)} but the image is {tuple(hw)}")
            keys.append(key)
    return image, keys


def _nearest_index(size_in: int, size_out: int, device: torch.device | str | None = None) -> torch.Tensor:
    # Half-pixel centres, the same sampling grid as bilinear with align_corners=False, so label maps stay aligned
    # with the image ("nearest-exact"; plain "nearest" would shift labels by up to half an input pixel). float64:
    # (k + ½)·ratio is one IEEE multiplication, so the indices are the same on every device that has float64
    # (built on the label's device, no host copy); MPS has none, so there they are built on the CPU and moved.
    home = torch.device("cpu") if device is None or torch.device(device).type == "mps" else torch.device(device)
    pos = (torch.arange(size_out, dtype=torch.float64, device=home) + 0.5) * (size_in / size_out)
    index = pos.floor_().long().clamp_(max=size_in - 1)
    return index if device is None else index.to(device)


@functools.lru_cache(maxsize=1024)  # a training run asks for a few hundred (size in, size out) pairs, over and over
def _cpu_nearest_index(size_in: int, size_out: int) -> torch.Tensor:
    return _nearest_index(size_in, size_out)  # read only: index_select never writes to its index


def _resize(sample: dict, image: torch.Tensor, keys: list[str], size: tuple[int, int]) -> dict:
    out = dict(sample)
    out["image"] = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    rows = _cpu_nearest_index(image.shape[-2], size[0])
    cols = _cpu_nearest_index(image.shape[-1], size[1])
    for key in keys:
        out[key] = sample[key].index_select(0, rows).index_select(1, cols)
    return out


def _pad(sample: dict, image: torch.Tensor, keys: list[str], size: tuple[int, int], ignore_index: int) -> dict:
    """Pad bottom/right to ``size`` (which must not be smaller than the sample)."""
    h, w = image.shape[-2:]
    if (h, w) == size:
        return sample
    if image.shape[0] != len(IMAGENET_MEAN):
        raise ValueError(f"padding with the ImageNet mean needs a 3-channel image, got {image.shape[0]} channels")
    out = dict(sample)
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    padded = mean.expand(3, *size).clone()
    padded[:, :h, :w] = image
    out["image"] = padded
    for key in keys:
        label = sample[key].new_full(size, ignore_index)
        label[:h, :w] = sample[key]
        out[key] = label
    return out


def pad_to(sample: dict, size: tuple[int, int], *, ignore_index: int = IGNORE_INDEX) -> dict:
    """Pad the image (with the ImageNet mean) and every label map (with ``ignore_index``) on the bottom/right."""
    size = _pair(size, "size")
    image, keys = _split(sample)
    h, w = image.shape[-2:]
    if h > size[0] or w > size[1]:
        raise ValueError(f"cannot pad a {h}x{w} sample to the smaller size {size[0]}x{size[1]} (height x width)")
    return _pad(sample, image, keys, size, ignore_index)


def _check_crop_and_scale(crop_size, scale_range) -> tuple[tuple[int, int], float, float]:
    crop = _pair(crop_size, "crop_size")
    lo, hi = (float(s) for s in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    return crop, lo, hi


def scale_crop_flip_draws(
    h: int,
    w: int,
    *,
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[tuple[int, int], int, int, bool]:
    """The random part of ``random_scale_crop_flip`` for an ``h`` × ``w`` sample: (scaled size, crop top, crop left,
    flipped), drawn from ``generator`` (torch's global generator when None) in the same order, so the same seed
    gives the same crop on either path."""
    (crop_h, crop_w), lo, hi = _check_crop_and_scale(crop_size, scale_range)
    scale = lo + (hi - lo) * torch.rand((), generator=generator).item()
    size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    padded = (max(size[0], crop_h), max(size[1], crop_w))
    top = int(torch.randint(0, padded[0] - crop_h + 1, (), generator=generator).item())
    left = int(torch.randint(0, padded[1] - crop_w + 1, (), generator=generator).item())
    flipped = flip and torch.rand((), generator=generator).item() < 0.5
    return size, top, left, bool(flipped)


def random_scale_crop_flip(
    sample: dict,
    *,
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> dict:
    """Random scale, pad to at least ``crop_size``, random crop to exactly ``crop_size``, random horizontal flip.
    The draws come from ``generator`` (torch's global generator when None)."""
    (crop_h, crop_w), _, _ = _check_crop_and_scale(crop_size, scale_range)
    image, keys = _split(sample)
    h, w = image.shape[-2:]
    size, top, left, flipped = scale_crop_flip_draws(
        h, w, crop_size=crop_size, scale_range=scale_range, flip=flip, generator=generator
    )
    if size != (h, w):
        sample = _resize(sample, image, keys, size)
        image = sample["image"]

    padded = (max(size[0], crop_h), max(size[1], crop_w))
    sample = _pad(sample, image, keys, padded, ignore_index)

    out = dict(sample)
    for key in ["image", *keys]:
        crop = sample[key][..., top : top + crop_h, left : left + crop_w]
        # A crop is a view of the whole scaled image; a fresh compact tensor keeps the data loader from shipping
        # (and keeping alive) the full storage between worker processes.
        out[key] = crop.flip(-1) if flipped else crop.clone(memory_format=torch.contiguous_format)
    return out


def apply_scale_crop_flip(
    batch: dict,
    draws: torch.Tensor | list[tuple[int, int, int, int, int]],
    *,
    crop_size: int | tuple[int, int],
    ignore_index: int = IGNORE_INDEX,
) -> dict:
    """``random_scale_crop_flip`` with given draws, on a batch: ``batch["image"]`` (B, 3, H, W) and label maps
    (B, H, W) on any device; ``draws`` one row (scaled height, scaled width, top, left, flipped) per sample, as
    ``scale_crop_flip_draws`` returns them. Each image is resized by its own bilinear ``F.interpolate`` call (as on
    the CPU path), each label map gathers only its crop's nearest-exact rows and columns; the part of the crop
    beyond the scaled image is the ImageNet mean / ``ignore_index``, as the CPU path pads. Other keys pass through."""
    crop_h, crop_w = _pair(crop_size, "crop_size")
    images = batch.get("image")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("batch['image'] must be a floating-point (B, C, H, W) tensor")
    if images.shape[1] != len(IMAGENET_MEAN):
        raise ValueError(f"padding with the ImageNet mean needs a 3-channel image, got {images.shape[1]} channels")
    count, _, h, w = images.shape
    keys = [
        key
        for key, value in batch.items()
        if key != "image" and isinstance(value, torch.Tensor) and value.dtype in LABEL_DTYPES and value.dim() == 3
    ]
    for key in keys:
        if batch[key].shape != (count, h, w):
            raise ValueError(f"batch[{key!r}] is {tuple(batch[key].shape)} but the images are {(count, h, w)}")
    rows = draws.tolist() if isinstance(draws, torch.Tensor) else [list(d) for d in draws]
    if len(rows) != count or any(len(r) != 5 for r in rows):
        raise ValueError(f"draws must be {count} rows of (height, width, top, left, flipped), got {rows!r}")
    out = dict(batch)
    out["image"] = images.new_empty((count, 3, crop_h, crop_w))
    for channel, mean in enumerate(IMAGENET_MEAN):  # fills with Python scalars: no host-to-device copy
        out["image"][:, channel].fill_(mean)
    for key in keys:
        out[key] = batch[key].new_full((count, crop_h, crop_w), ignore_index)
    for i, (sh, sw, top, left, flipped) in enumerate(rows):
        image = images[i]
        if (sh, sw) != (h, w):
            image = F.interpolate(image[None], size=(sh, sw), mode="bilinear", align_corners=False, antialias=False)[0]
        nr, nc = max(0, min(crop_h, sh - top)), max(0, min(crop_w, sw - left))
        out["image"][i, :, :nr, :nc] = image[:, top : top + nr, left : left + nc]
        if keys:
            r = _nearest_index(h, sh, images.device)[top : top + nr]
            c = _nearest_index(w, sw, images.device)[left : left + nc]
            for key in keys:
                out[key][i, :nr, :nc] = batch[key][i].index_select(0, r).index_select(1, c)
        if flipped:
            for key in ["image", *keys]:
                out[key][i] = out[key][i].flip(-1)
    return out
