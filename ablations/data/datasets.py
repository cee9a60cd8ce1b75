"""Real segmentation datasets, read from the layouts their official downloads unpack to.

Every dataset (``VOCSegmentation``, ``Cityscapes``, ``ADE20K``, ``FolderSegmentation``) yields the sample format
of :mod:`ablations.data` and checks itself in ``__init__`` — before any training starts — so that a wrong path or
a broken file fails in seconds with one message naming it, not hours later inside a data-loader worker. Checks
(``check=``): ``"none"`` (layout, non-empty split), ``"headers"`` (also image and mask sizes from the headers),
``"full"`` (default; also decodes everything and checks mask values after the label mapping).

The layouts under ``data.root``, file by file: ``docs/training.md`` (Datasets).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ablations.data import IGNORE_INDEX

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN",
    "DATASETS",
    "VOC_CLASSES",
    "Cityscapes",
    "DatasetError",
    "FolderSegmentation",
    "VOCSegmentation",
]

CHECKS = ("none", "headers", "full")

# PNG (zlib) and JPEG decoding release the GIL, so two threads use both cores of a small machine.
_CHECK_THREADS = 2


class DatasetError(ValueError):
    """Bad dataset on disk; the message names the file or setting and what was expected."""


VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# The official cityscapesScripts labels.py mapping; every labelId not listed (unlabeled, ego vehicle, rectification
# border, out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
# trailer, license plate) is ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- helpers


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise DatasetError(f"{name}={value!r} is not supported; expected one of {', '.join(map(repr, allowed))}")


def _existing_root(root: str | Path) -> Path:
    if root is None or str(root) == "":
        raise DatasetError("data.root is not set; expected the path of the dataset folder")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"data.root: {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"data.root: {path} is not a folder")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"wrong dataset layout: expected {path} ({what})")
    return path


def _identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.int64)


def _ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0..2, 5, 255"``: the allowed values, readable in an error message."""
    out: list[str] = []
    run: list[int] = []
    for v in sorted(values):
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            out.append(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
        run = [v]
    if run:
        out.append(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(out)


def _read_mask(path: Path) -> np.ndarray:
    """Raw mask values as ``uint8`` (H, W). Palette PNGs are NOT converted: their pixel values are the indices."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if len(im.getbands()) != 1 or mode == "F":
                raise DatasetError(
                    f"mask {path} has mode {mode!r}; expected a single-channel index PNG (mode 'L' or 'P') whose "
                    "pixel values are class indices (a colour-coded mask must be converted to indices first)"
                )
            arr = np.array(im)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"mask {path} cannot be decoded: {err}") from err
    if arr.dtype != np.uint8:
        # 16/32-bit index PNGs are accepted as long as every value fits the 8-bit label space.
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise DatasetError(
                f"mask {path} has values {int(arr.min())}..{int(arr.max())}; expected class indices in 0..255"
            )
        arr = arr.astype(np.uint8)
    return arr


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"image {path} cannot be decoded: {err}") from err


def _header_size(path: Path, what: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # lazy: reads the header only
            return im.size
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"{what} {path} is not a readable image: {err}") from err


def _decoded_size(path: Path) -> tuple[int, int]:
    """The size of an image after decoding all of it (``check=full``): a truncated or corrupt file fails here."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DatasetError(f"image {path} cannot be decoded ({detail}); check=full decodes every image") from err


def _size_mismatch(image: Path, image_size: tuple[int, int], mask: Path, mask_size: tuple[int, int]) -> str:
    return (
        f"image and mask sizes differ: image {image} is {image_size[0]}x{image_size[1]} but mask {mask} is "
        f"{mask_size[0]}x{mask_size[1]} (width x height); expected the same size"
    )


def _pairs_present(pairs: list[tuple[Path, Path]], split: str, where: Path | str) -> list[tuple[Path, Path]]:
    """Fail on an empty split, then on listed files that do not exist (first missing named, all counted)."""
    if not pairs:
        raise DatasetError(f"split {split!r} is empty: found no samples in {where}")
    absent = [[p for p in pair if not p.is_file()] for pair in pairs]
    missing = [p for paths in absent for p in paths]
    if missing:
        bad_pairs = sum(1 for paths in absent if paths)
        raise DatasetError(
            f"{bad_pairs} of {len(pairs)} samples of split {split!r} (from {where}) have a missing image or mask "
            f"({len(missing)} files missing); first missing: {missing[0]}"
        )
    return pairs


# -------------------------------------------------------------------------------------------------------------- base


class _IndexPNGDataset(Dataset):
    """Shared loading and checking: (image, index-PNG mask) pairs plus a 256-entry raw-value -> label table."""

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index = IGNORE_INDEX
    splits: tuple[str, ...] = ()

    def __init__(self, root: Path, split: str, files: list[tuple[Path, Path]], lut: np.ndarray, check: str) -> None:
        self.root = root
        self.split = split
        self.files = files
        # int64 so that the lookup itself produces the final mask dtype in one pass.
        self._lut = lut.astype(np.int64)
        self._verify(check)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path, mask_path = self.files[index]
        image = _read_image(image_path)
        raw = _read_mask(mask_path)
        if image.shape[:2] != raw.shape:
            # check="none" skipped this in __init__; a clear error beats a shape error deep in the transforms.
            image_size, mask_size = (image.shape[1], image.shape[0]), (raw.shape[1], raw.shape[0])
            raise DatasetError(_size_mismatch(image_path, image_size, mask_path, mask_size))
        tensor = torch.from_numpy(image).permute(2, 0, 1)
        return {
            "image": tensor.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0),
            "mask": torch.from_numpy(self._lut[raw]),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"

    # The raw file values that, after the label mapping, are neither a class nor ignore.
    def _bad_raw_values(self) -> np.ndarray:
        mapped = self._lut
        return (mapped != IGNORE_INDEX) & ((mapped < 0) | (mapped >= self.num_classes))

    def _verify(self, check: str) -> None:
        if check == "none":
            return
        full = check == "full"
        bad_raw = self._bad_raw_values()
        check_values = full and bool(bad_raw.any())
        allowed = _ranges(np.flatnonzero(~bad_raw).tolist())

        def inspect(pair: tuple[Path, Path]) -> str | None:
            image_path, mask_path = pair
            # full: decodes every pixel, so a truncated or corrupt image stops here, not mid-training
            image_size = _decoded_size(image_path) if full else _header_size(image_path, "image")
            if full:
                raw = _read_mask(mask_path)  # decodes: catches truncated files and multi-channel masks too
                mask_size = (raw.shape[1], raw.shape[0])
            else:
                mask_size = _header_size(mask_path, "mask")
            if image_size != mask_size:
                return _size_mismatch(image_path, image_size, mask_path, mask_size)
            if check_values:
                counts = np.bincount(raw.ravel(), minlength=256)
                bad = np.flatnonzero((counts > 0) & bad_raw)
                if bad.size:
                    shown = ", ".join(map(str, bad[:10].tolist())) + (", ..." if bad.size > 10 else "")
                    return (
                        f"mask {mask_path} has values outside the label range: {shown} "
                        f"({int(counts[bad].sum())} pixels); allowed: {allowed} "
                        f"({self.num_classes} classes, 255 = ignore)"
                    )
            return None

        with ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
            problems = [p for p in pool.map(inspect, self.files) if p is not None]
        if problems:
            more = (
                f" [{len(problems) - 1} more of {len(self.files)} samples have problems]" if len(problems) > 1 else ""
            )
            raise DatasetError(problems[0] + more)


# --------------------------------------------------------------------------------------------------------------- VOC


class VOCSegmentation(_IndexPNGDataset):
    """PASCAL VOC 2012 segmentation; split ``"trainaug"`` is the 10,582-image SBD-augmented training set."""

    num_classes = 21
    class_names = VOC_CLASSES
    splits = ("train", "val", "trainval", "trainaug")

    def __init__(self, root: str | Path, split: str = "train", *, check: str = "full") -> None:
        _check_choice("check", check, CHECKS)
        _check_choice("split", split, self.splits)
        root = _existing_root(root)
        base = self._find_base(root)
        lists = base / "ImageSets" / "Segmentation"
        images = _require_dir(base / "JPEGImages", "the VOC images")
        if split == "trainaug":
            list_file = next((lists / n for n in ("trainaug.txt", "train_aug.txt") if (lists / n).is_file()), None)
            masks = base / "SegmentationClassAug"
            if list_file is None or not masks.is_dir():
                missing = masks if list_file is not None else lists / "trainaug.txt"
                raise DatasetError(
                    f"split 'trainaug' needs the SBD-augmented set: {missing} is missing (the id list may also be "
                    f"named train_aug.txt; the masks go in {masks}/<id>.png). Get it from "
                    "SBD (http://home.bharathh.info/pubs/codes/SBD/download.html) converted to index PNGs, or the "
                    "widely mirrored SegmentationClassAug.zip + train_aug.txt (the DeepLab / mmsegmentation "
                    "'VOC aug' instructions); or use split='train'"
                )
        else:
            list_file = lists / f"{split}.txt"
            if not list_file.is_file():
                raise DatasetError(f"wrong dataset layout: expected {list_file} (the id list of split {split!r})")
            masks = _require_dir(base / "SegmentationClass", "the VOC class masks")
        ids = self._read_ids(list_file)
        files = [(images / f"{i}.jpg", masks / f"{i}.png") for i in ids]
        super().__init__(root, split, _pairs_present(files, split, list_file), _identity_lut(), check)

    @staticmethod
    def _find_base(root: Path) -> Path:
        for base in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
            if (base / "JPEGImages").is_dir():
                return base
        raise DatasetError(
            f"wrong dataset layout: expected {root / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'} (data.root may also be "
            "the VOC2012 folder itself, holding JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/)"
        )

    @staticmethod
    def _read_ids(list_file: Path) -> list[str]:
        ids = []
        for line in list_file.read_text().splitlines():
            tokens = line.split()
            if tokens:
                # Some train_aug.txt copies list "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" pairs.
                ids.append(Path(tokens[0]).stem)
        return ids


# -------------------------------------------------------------------------------------------------------- Cityscapes


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


class Cityscapes(_IndexPNGDataset):
    """Cityscapes fine annotations; labelIds are mapped to the 19 trainIds (everything else -> 255)."""

    num_classes = 19
    class_names = CITYSCAPES_CLASSES
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str = "train", *, check: str = "full") -> None:
        _check_choice("check", check, CHECKS)
        _check_choice("split", split, self.splits)
        root = _existing_root(root)
        images = _require_dir(root / "leftImg8bit" / split, f"the Cityscapes images of split {split!r}")
        masks = _require_dir(root / "gtFine" / split, f"the Cityscapes fine annotations of split {split!r}")
        suffix = "_leftImg8bit.png"
        files = [
            (p, masks / p.parent.name / (p.name[: -len(suffix)] + "_gtFine_labelIds.png"))
            for p in sorted(images.glob(f"*/*{suffix}"))
        ]
        where = f"{images}/<city>/*{suffix}"
        super().__init__(root, split, _pairs_present(files, split, where), _cityscapes_lut(), check)


# ----------------------------------------------------------------------------------------------------------- ADE20K


def _ade_lut() -> np.ndarray:
    # mmsegmentation's reduce_zero_label: 0 (other) -> 255, v -> v - 1, and 255 stays ignore.
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE_INDEX
    lut[255] = IGNORE_INDEX
    return lut


class ADE20K(_IndexPNGDataset):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes; annotation 0 (other) is ignored."""

    num_classes = 150
    class_names = ADE20K_CLASSES
    splits = ("train", "val")
    _folders: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}

    def __init__(self, root: str | Path, split: str = "train", *, check: str = "full") -> None:
        _check_choice("check", check, CHECKS)
        _check_choice("split", split, self.splits)
        root = _existing_root(root)
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        sub = self._folders[split]
        if not (base / "images").is_dir():
            raise DatasetError(
                f"wrong dataset layout: expected {root / 'ADEChallengeData2016' / 'images' / sub} (data.root may "
                "also be the ADEChallengeData2016 folder itself, holding images/ and annotations/)"
            )
        images = _require_dir(base / "images" / sub, f"the ADE20K images of split {split!r}")
        masks = _require_dir(base / "annotations" / sub, f"the ADE20K annotations of split {split!r}")
        files = [(p, masks / f"{p.stem}.png") for p in sorted(images.glob("*.jpg"))]
        super().__init__(root, split, _pairs_present(files, split, f"{images}/*.jpg"), _ade_lut(), check)


# ----------------------------------------------------------------------------------------------------------- folders


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class FolderSegmentation(_IndexPNGDataset):
    """Any dataset as ``images/<split>/*`` + ``masks/<split>/<stem>.png`` index PNGs, with ``num_classes`` given."""

    def __init__(self, root: str | Path, split: str = "train", *, num_classes: int, check: str = "full") -> None:
        _check_choice("check", check, CHECKS)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= 255:
            raise DatasetError(f"num_classes={num_classes!r} is not supported; expected an integer in 1..255")
        root = _existing_root(root)
        images_root = _require_dir(root / "images", "one sub-folder of images per split")
        if not isinstance(split, str) or not split or "/" in split or "\\" in split:
            raise DatasetError(f"split={split!r} is not supported; expected the name of a folder in {images_root}")
        images = root / "images" / split
        if not images.is_dir():
            found = sorted(p.name for p in images_root.iterdir() if p.is_dir())
            raise DatasetError(
                f"split={split!r} not found: expected {images}; splits present: {', '.join(found) or 'none'}"
            )
        masks = _require_dir(root / "masks" / split, f"the index-PNG masks of split {split!r}")
        paths = sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        stems: dict[str, Path] = {}
        for p in paths:
            if p.stem in stems:
                raise DatasetError(f"images {stems[p.stem]} and {p} share the mask {masks / (p.stem + '.png')}")
            stems[p.stem] = p
        files = [(p, masks / f"{p.stem}.png") for p in paths]
        self.num_classes = num_classes
        self.class_names = tuple(f"class{i}" for i in range(num_classes))
        where = f"{images}/*{{{','.join(_IMAGE_SUFFIXES)}}}"
        super().__init__(root, split, _pairs_present(files, split, where), _identity_lut(), check)


DATASETS: dict[str, type[_IndexPNGDataset]] = {
    "voc": VOCSegmentation,
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "folder": FolderSegmentation,
}
