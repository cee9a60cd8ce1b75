"""Writers of tiny datasets in each real on-disk format (deterministic, a few KB each).

Each writer creates the layout the official download unpacks to, with the real encodings, under ``root`` and
returns the path a user would set as ``data.root``:

* ``write_voc``: ``VOCdevkit/VOC2012`` with JPEG images, palette ("P") masks carrying the VOC colour palette and
  255 void borders around objects, and ``ImageSets/Segmentation/{train,val,trainval}.txt``; with ``trainaug=True``
  also ``SegmentationClassAug`` ("L" masks, no borders, like SBD) and ``trainaug.txt`` (train ids + SBD-only ids).
* ``write_cityscapes``: ``leftImg8bit``/``gtFine`` per city, labelIds PNGs containing every labelId 0..33 and a few
  255 (license plate, id -1, wraps to 255 in the 8-bit files), plus the color/instanceIds/polygons distractors.
* ``write_ade20k``: ``ADEChallengeData2016/{images,annotations}/{training,validation}``, annotations with 0
  (other) and values in 1..150, always including 0, 1 and 150.
* ``write_folder``: ``images/<split>`` (alternating .jpg and .png) and ``masks/<split>`` "L" PNGs with some 255.

Images are the label colour plus noise, so image structure follows the masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["voc_palette", "write_ade20k", "write_cityscapes", "write_folder", "write_voc"]


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved class index), 256 RGB triples flattened; index 255 is (224, 224, 192)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


_COLOURS = np.array(voc_palette(), dtype=np.int16).reshape(256, 3)


def _image_for(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(-12, 13, size=(*labels.shape, 3), dtype=np.int16)
    return np.clip(_COLOURS[labels] + noise, 0, 255).astype(np.uint8)


def _objects_mask(rng: np.random.Generator, size: tuple[int, int], classes: np.ndarray, border: bool) -> np.ndarray:
    """Background 0 plus 2-3 rectangles of ``classes``; VOC style 1-px 255 outlines around objects if ``border``."""
    h, w = size
    mask = np.zeros(size, dtype=np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        oh, ow = int(rng.integers(h // 5, h // 2 + 1)), int(rng.integers(w // 5, w // 2 + 1))
        top, left = int(rng.integers(1, h - oh)), int(rng.integers(1, w - ow))
        if border:
            mask[top - 1 : top + oh + 1, left - 1 : left + ow + 1] = 255
        mask[top : top + oh, left : left + ow] = rng.choice(classes)
    return mask


def _block_labels(rng: np.random.Generator, size: tuple[int, int], values: np.ndarray, block: int) -> np.ndarray:
    """A grid of ``block``-px squares; the values are spread over the blocks (all of them if there is room)."""
    h, w = size
    grid_h, grid_w = -(-h // block), -(-w // block)
    n = grid_h * grid_w
    picks = rng.permutation(np.resize(values, max(n, len(values))))[:n]
    grid = picks.reshape(grid_h, grid_w).astype(np.uint8)
    return np.kron(grid, np.ones((block, block), dtype=np.uint8))[:h, :w]


def write_voc(
    root: Path,
    *,
    n_train: int = 4,
    n_val: int = 2,
    size: tuple[int, int] = (37, 45),
    trainaug: bool = False,
    num_classes: int = 21,
) -> Path:
    """PASCAL VOC 2012 under ``root/VOCdevkit/VOC2012``; returns ``root``. ``size`` is (height, width).

    Objects take classes 1..num_classes-1, so ``num_classes > 21`` writes out-of-range values on purpose.
    """
    rng = np.random.default_rng(2012)
    base = Path(root) / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    for folder in (base / "JPEGImages", base / "SegmentationClass", lists):
        folder.mkdir(parents=True, exist_ok=True)
    classes = np.arange(1, num_classes)
    train = [f"2007_{i:06d}" for i in range(n_train)]
    val = [f"2008_{i:06d}" for i in range(n_val)]
    sbd_only = [f"2011_{i:06d}" for i in range(3)] if trainaug else []
    palette = voc_palette()
    for sample_id in train + val + sbd_only:
        mask = _objects_mask(rng, size, classes, border=True)
        Image.fromarray(_image_for(mask, rng)).save(base / "JPEGImages" / f"{sample_id}.jpg", quality=92)
        if sample_id not in sbd_only:
            indexed = Image.fromarray(mask)
            indexed.putpalette(palette)  # "L" -> "P" keeping the pixel values: they are the class indices
            indexed.save(base / "SegmentationClass" / f"{sample_id}.png")
        if trainaug:
            aug = base / "SegmentationClassAug"
            aug.mkdir(exist_ok=True)
            # SBD masks have no void borders: the 255 outline becomes background.
            Image.fromarray(np.where(mask == 255, 0, mask).astype(np.uint8)).save(aug / f"{sample_id}.png")
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in train + val))
    if trainaug:
        (lists / "trainaug.txt").write_text("".join(f"{i}\n" for i in train + sbd_only))
    return Path(root)


def write_cityscapes(root: Path, *, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (32, 64)) -> Path:
    """Cityscapes ``leftImg8bit`` + ``gtFine`` (labelIds and distractors); returns ``root``. ``size`` is (H, W)."""
    rng = np.random.default_rng(33)
    root = Path(root)
    label_ids = np.arange(34)  # 0..33: the 19 trainId classes and all the void ones
    cities = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            city = cities[split][i % len(cities[split])]
            name = f"{city}_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            labels = _block_labels(rng, size, label_ids, block=4)
            labels[-2:, -3:] = 255  # license plate (labelId -1) as it lands in an 8-bit PNG
            Image.fromarray(_image_for(labels, rng)).save(img_dir / f"{name}_leftImg8bit.png")
            Image.fromarray(labels).save(gt_dir / f"{name}_gtFine_labelIds.png")
            colour = np.concatenate([_COLOURS[labels].astype(np.uint8), np.full((*size, 1), 255, np.uint8)], -1)
            Image.fromarray(colour).save(gt_dir / f"{name}_gtFine_color.png")
            Image.fromarray(labels.astype(np.uint16) * 1000).save(gt_dir / f"{name}_gtFine_instanceIds.png")
            polygons = {"imgHeight": size[0], "imgWidth": size[1], "objects": []}
            (gt_dir / f"{name}_gtFine_polygons.json").write_text(json.dumps(polygons))
    return root


def write_ade20k(root: Path, *, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (40, 48)) -> Path:
    """ADE20K SceneParsing under ``root/ADEChallengeData2016``; returns ``root``. ``size`` is (H, W)."""
    rng = np.random.default_rng(150)
    base = Path(root) / "ADEChallengeData2016"
    for folder, prefix, count in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        images, annotations = base / "images" / folder, base / "annotations" / folder
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            labels = _block_labels(rng, size, np.arange(151), block=4)
            labels[0, :3] = (0, 1, 150)  # the edges of the label mapping, in every file
            name = f"{prefix}_{i + 1:08d}"
            Image.fromarray(_image_for(labels, rng)).save(images / f"{name}.jpg", quality=92)
            Image.fromarray(labels).save(annotations / f"{name}.png")
    (base / "sceneCategories.txt").write_text("ADE_train_00000001 bathroom\n")
    return Path(root)


def write_folder(
    root: Path, *, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (33, 41), num_classes: int = 5
) -> Path:
    """Generic ``images/<split>`` + ``masks/<split>`` ("L" index PNGs with some 255); returns ``root``."""
    rng = np.random.default_rng(5)
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        images, masks = root / "images" / split, root / "masks" / split
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            labels = _block_labels(rng, size, np.arange(num_classes), block=5)
            labels[:, -2:] = 255  # an ignored strip, as annotation tools leave unlabelled margins
            suffix = ".jpg" if i % 2 == 0 else ".png"
            Image.fromarray(_image_for(labels, rng)).save(images / f"sample_{i:03d}{suffix}")
            Image.fromarray(labels).save(masks / f"sample_{i:03d}.png")
    return root
