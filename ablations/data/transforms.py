"""Training transforms: the DeepLab v3 §4 recipe, applied jointly to every spatial key of a sample.

A sample is a dict as produced by :mod:`ablations.data`: ``"image"`` a float ``(3, H, W)`` RGB tensor in [0, 1],
and any number of ``torch.int64`` ``(H, W)`` label maps (``"mask"``, ``"size"``, ...). Every label map receives
exactly the geometric transform the image receives, with nearest-neighbour interpolation and ``ignore_index``
padding; other keys pass through untouched.

``random_scale_crop_flip``: scale by one factor drawn uniformly from ``scale_range`` (image bilinear, label maps
nearest), pad bottom/right up to the crop size (image with the ImageNet mean, so that it is 0 after
normalisation; label maps with ``ignore_index``), take a random crop, then flip horizontally with p = 0.5.

Randomness comes from the ``generator`` passed in, or torch's global generator, so a ``torch.manual_seed`` makes
it reproducible. Training passes one generator per sample, seeded from the run's seed and the sample's place in
the training order (``ablations.data.module.TrainingOrder``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablations.data import IGNORE_INDEX

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "pad_to", "random_scale_crop_flip"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        if key != "image" and isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.dim() == 2:
            if value.shape != hw:
                raise ValueError(f"sample[{key!r}] is {tuple(value.shape)} but the image is {tuple(hw)}")
            keys.append(key)
    return image, keys


def _nearest_index(size_in: int, size_out: int) -> torch.Tensor:
    # Half-pixel centres, the same sampling grid as bilinear with align_corners=False, so label maps stay aligned
    # with the image ("nearest-exact"; plain "nearest" would shift labels by up to half an input pixel).
    pos = (torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out)
    return pos.floor_().long().clamp_(max=size_in - 1)


def _resize(sample: dict, image: torch.Tensor, keys: list[str], size: tuple[int, int]) -> dict:
    out = dict(sample)
    out["image"] = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    rows = _nearest_index(image.shape[-2], size[0])
    cols = _nearest_index(image.shape[-1], size[1])
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
    crop_h, crop_w = _pair(crop_size, "crop_size")
    lo, hi = (float(s) for s in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    image, keys = _split(sample)
    h, w = image.shape[-2:]

    scale = lo + (hi - lo) * torch.rand((), generator=generator).item()
    size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    if size != (h, w):
        sample = _resize(sample, image, keys, size)
        image = sample["image"]

    padded = (max(size[0], crop_h), max(size[1], crop_w))
    sample = _pad(sample, image, keys, padded, ignore_index)

    top = int(torch.randint(0, padded[0] - crop_h + 1, (), generator=generator).item())
    left = int(torch.randint(0, padded[1] - crop_w + 1, (), generator=generator).item())
    flipped = flip and torch.rand((), generator=generator).item() < 0.5

    out = dict(sample)
    for key in ["image", *keys]:
        crop = sample[key][..., top : top + crop_h, left : left + crop_w]
        # A crop is a view of the whole scaled image; a fresh compact tensor keeps the data loader from shipping
        # (and keeping alive) the full storage between worker processes.
        out[key] = crop.flip(-1) if flipped else crop.clone(memory_format=torch.contiguous_format)
    return out
