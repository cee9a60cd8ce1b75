"""SyntheticShapes: the embedded benchmark — procedurally generated, no files, deterministic, fast.

The class of an object is its global shape (or, with ``class_by="size"``, its size bucket), never its texture:
labelling a large object needs context as wide as it, thin and small ones need resolution. An item is a *scene*
(every random draw, from ``np.random.default_rng([seed, split_id, i])``) rasterised here in NumPy or, for a batch on
any device, by :mod:`ablations.data.render` from the same primitive table (``PRIMITIVE_KINDS``).

The specification (classes and their formulas, sizes and buckets, composition, the texture bank, rendering,
determinism) is ``docs/synthetic-benchmark.md``; keep it and this code in step.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ablations.data import IGNORE_INDEX, SIZE_BUCKETS, SYNTHETIC_SHAPES

CLASS_NAMES: tuple[str, ...] = ("background", *SYNTHETIC_SHAPES)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
DISTRACTOR_KINDS: tuple[str, ...] = ("blob", "arc", "stroke", "segment")

# Size buckets on the equivalent side √area as a fraction of the image side (see the module docstring).
SMALL_SIDE = 1 / 10
MEDIUM_SIDE = 1 / 4
# Range of the log-uniform equivalent side, as fractions of the image side (the minimum is also ≥ MIN_PIXELS).
MIN_SIDE = 1 / 32
MAX_SIDE = 0.65
MAX_CLUTTER_SIDE = 0.4
MIN_PIXELS = 4.0
# At foreground_cue = 1 background colours lie in [0, 0.4] and clutter/object colours in [0.6, 1].
FOREGROUND_CUE_GAP = 0.6

_SIN36 = math.sin(math.pi / 5)
_COS36 = math.cos(math.pi / 5)
_TWO_PI = 2 * math.pi


def size_bucket(area: float, image_area: float) -> int:
    """Size bucket (1 small, 2 medium, 3 large) of an object of full area ``area`` in an image of ``image_area``."""
    fraction = area / image_area
    if fraction < SMALL_SIDE**2:
        return 1
    if fraction < MEDIUM_SIDE**2:
        return 2
    return 3


@dataclass(frozen=True)
class ObjectSpec:
    """One painted object, in paint order (later ones occlude earlier ones)."""

    label: int  # mask label: index into the dataset's class_names (= CLASS_NAMES unless shapes= is given)
    texture: int  # texture id in the shared bank
    center: tuple[float, float]  # (y, x) in pixels
    radius: float  # circumradius R in pixels
    angle: float  # rotation in radians
    area: float  # full analytic area in pixels² (before occlusion and border cropping)
    bucket: int  # 1 small, 2 medium, 3 large


@dataclass(frozen=True)
class SyntheticSample:
    """Everything :meth:`SyntheticShapes.render` knows about one item."""

    image: torch.Tensor  # float32 (3, H, W)
    mask: torch.Tensor  # int64 (H, W)
    size: torch.Tensor  # int64 (H, W)
    instance: torch.Tensor  # int64 (H, W): 0 background/clutter, i + 1 for objects[i]
    objects: tuple[ObjectSpec, ...]


# --------------------------------------------------------------------------------------------------------------
# Scenes: an item's random draws as fixed-size arrays, which a rasteriser turns into pixels (this file's NumPy
# one, or ablations.data.render's torch one, on any device and a whole batch at once).

# Primitive kinds (0 pads the arrays). A primitive's params row holds its centre (0 cy, 1 cx, pixels), then:
#   wave      2 cos θ, 3 sin θ, 4 amplitude, 5 angular frequency, 6 phase, 7 threshold:
#             u > threshold + amplitude·sin(v·frequency + phase) (the second background region)
#   round     2 cos θ, 3 sin θ, 4 R², 5 inner² (−1: none), 6 chord c (+∞: none): r² ≤ R², r² ≥ inner², u ≤ c
#             (disk, ring, disk segment)
#   arc       2 cos θ, 3 sin θ, 4 outer², 5 inner², 6 half span: the annulus and |atan2(v, u)| ≤ half span
#   box       2 cos θ, 3 sin θ, 4 a, 5 b: |u| ≤ a, |v| ≤ b (square, bar, one stroke segment)
#   triangle  2 cos θ, 3 sin θ, 4 low, 5 high: v ≥ low, v/2 + (√3/2)|u| ≤ high
#   cross     2 cos θ, 3 sin θ, 4 half-width, 5 half-length: min(|u|, |v|) ≤ half-width, max ≤ half-length
#   star      4 θ, 5 α, 6 d: ρ cos(ψ − α) ≤ d, ψ the polar angle − θ folded into [0, π/5]
#   blob      2-5 amplitudes of harmonics 2-5, 6-9 their phases, 10 radius: ρ ≤ radius·(1 + Σ a cos(kφ + phase))
# with (u, v) = (dx cos θ + dy sin θ, dy cos θ − dx sin θ), r² = dy² + dx², ρ = √r², φ = atan2(dy, dx).
PRIMITIVE_KINDS: tuple[str, ...] = ("none", "wave", "round", "arc", "box", "triangle", "cross", "star", "blob")
NONE, WAVE, ROUND, ARC, BOX, TRIANGLE, CROSS, STAR, BLOB = range(len(PRIMITIVE_KINDS))
NUM_PARAMS = 12

_Primitive = tuple[int, int, tuple[int, int, int, int], tuple[float, ...]]  # kind, layer, box, params


@dataclass(frozen=True, eq=False)
class Scene:
    """One item's random draws, zero-padded to fixed sizes (P = ``max_primitives``, L = ``max_layers``) so that a
    DataLoader's default collate stacks them. Primitives are in paint order; a layer's id is its row, and ids grow
    in paint order, so the visible layer of a pixel is the largest id among the primitives that cover it."""

    kind: np.ndarray  # int64 (P,): index into PRIMITIVE_KINDS, 0 = padding
    layer: np.ndarray  # int64 (P,): the layer it paints (a stroke's 2-3 segments share one)
    box: np.ndarray  # int64 (P, 4): y0, y1, x0, x1 of the pixels it is tested on (clipped to the image)
    params: np.ndarray  # float64 (P, NUM_PARAMS): see PRIMITIVE_KINDS
    texture: np.ndarray  # int64 (L,): texture id in the bank
    offset: np.ndarray  # int64 (L, 2): (y, x) offset into the texture
    colour: np.ndarray  # float64 (L, 2, 3): c0, c1 (the pixel is c0 + (c1 − c0)·t)
    label: np.ndarray  # int64 (L,): mask label
    bucket: np.ndarray  # int64 (L,): size bucket
    instance: np.ndarray  # int64 (L,): 0 background/clutter, i + 1 for objects[i]

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a loader ships to the torch rasteriser: geometry and appearance, params and colours as float32 (the
        precision it computes in; NumPy applies the same float64 parameters at float32 too, the wave aside)."""
        return {
            "kind": torch.from_numpy(self.kind),
            "layer": torch.from_numpy(self.layer),
            "box": torch.from_numpy(self.box),
            "params": torch.from_numpy(self.params.astype(np.float32)),
            "texture": torch.from_numpy(self.texture),
            "offset": torch.from_numpy(self.offset),
            "colour": torch.from_numpy(self.colour.astype(np.float32)),
            "label": torch.from_numpy(self.label),
            "bucket": torch.from_numpy(self.bucket),
        }


# --------------------------------------------------------------------------------------------------------------
# Texture bank


def _lowpass_noise(rng: np.random.Generator, size: int, cycles: float) -> np.ndarray:
    """Periodic Gaussian-filtered white noise; ``cycles`` is the filter's σ in cycles per image."""
    spectrum = np.fft.rfft2(rng.standard_normal((size, size)))
    fy = np.fft.fftfreq(size, 1 / size)[:, None]
    fx = np.fft.rfftfreq(size, 1 / size)[None, :]
    spectrum *= np.exp(-(fy**2 + fx**2) / (2 * cycles**2))
    return np.fft.irfft2(spectrum, s=(size, size))


def _frequency(rng: np.random.Generator, low: float, high: float) -> tuple[int, int]:
    """A whole-cycle frequency vector with norm in [low, high] at a random orientation (keeps the tile periodic)."""
    norm = rng.uniform(low, high)
    angle = rng.uniform(0, math.pi)
    fy, fx = round(norm * math.sin(angle)), round(norm * math.cos(angle))
    return (fy, fx) if (fy, fx) != (0, 0) else (0, max(1, round(norm)))


@functools.lru_cache(maxsize=8)  # a sweep builds the same datasets once per trial; callers copy (np.tile)
def texture_bank(seed: int, size: int, count: int) -> np.ndarray:
    """``count`` periodic greyscale textures, float32 (count, size, size) in [0, 1], deterministic from ``seed``."""
    rng = np.random.default_rng([seed, 0x7E47])
    grid = np.arange(size, dtype=np.float64) / size
    y, x = grid[:, None], grid[None, :]
    bank = np.empty((count, size, size), dtype=np.float32)
    for k in range(count):
        family = k % 7
        if family == 0:  # near-flat: faint smooth shading, so some objects are (almost) single-coloured
            tex = _lowpass_noise(rng, size, 2.0)
        elif family == 1:  # stripes, from soft sine to square wave
            fy, fx = _frequency(rng, 4, 16)
            tex = np.tanh(rng.uniform(1, 8) * np.sin(_TWO_PI * (fy * y + fx * x)))
        elif family == 2:  # checkerboard on a rotated whole-cycle lattice
            fy, fx = _frequency(rng, 3, 10)
            tex = np.sign(np.sin(_TWO_PI * (fy * y + fx * x)) * np.sin(_TWO_PI * (fx * y - fy * x)) + 1e-9)
        elif family == 3:  # dot lattice
            fy, fx = _frequency(rng, 4, 12)
            waves = np.cos(_TWO_PI * (fy * y + fx * x)) + np.cos(_TWO_PI * (fx * y - fy * x))
            tex = np.tanh(4 * (waves - rng.uniform(0.4, 1.4)))
        elif family == 4:
            tex = _lowpass_noise(rng, size, rng.uniform(2, 8))
        elif family == 5:
            tex = _lowpass_noise(rng, size, rng.uniform(16, 40))
        else:  # marble: stripes whose phase is warped by smooth noise
            fy, fx = _frequency(rng, 2, 8)
            warp = _lowpass_noise(rng, size, 3.0)
            warp /= np.abs(warp).max() + 1e-12
            tex = np.sin(_TWO_PI * (fy * y + fx * x) + rng.uniform(2, 6) * warp)
        tex = (tex - tex.min()) / (np.ptp(tex) + 1e-12)
        if family == 0:
            tex = 0.5 + 0.15 * (tex - 0.5)
        bank[k] = tex
    bank.setflags(write=False)  # shared by every dataset of this seed and size (the cache above)
    return bank


# --------------------------------------------------------------------------------------------------------------
# The dataset


class ItemCache:
    """Rendered items kept in memory across the datasets of one process, keyed by the dataset's parameters (its
    ``repr``) and the index: an item is a pure function of both, so a sweep's trials (which build a new dataset
    each, with the same data config) render each item once. Least recently used items go first beyond
    ``ABLATIONS_ITEM_CACHE_MB`` (default 1024; 0 turns the cache off). Callers get a new dict of the same
    tensors, which nothing downstream writes to (the transforms and the collate make new tensors)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, dict] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def budget() -> int:
        text = os.environ.get("ABLATIONS_ITEM_CACHE_MB", "1024")
        try:
            return max(0, int(float(text) * 2**20))
        except ValueError:
            raise ValueError(f"ABLATIONS_ITEM_CACHE_MB={text!r}: allowed a number of MiB ≥ 0 (0 = off)") from None

    def get(self, key: tuple) -> dict[str, torch.Tensor] | None:
        if not self.budget():  # off: everything is rendered afresh
            return None
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
        if item is None:
            return None
        # Label maps are kept as uint8 (an eighth of int64's bytes) and handed back in the type they came in.
        return {k: v.to(torch.int64) if k in item.get(_WIDE, ()) else v for k, v in item.items() if k != _WIDE}

    def put(self, key: tuple, item: dict[str, torch.Tensor]) -> None:
        budget = self.budget()
        wide = tuple(
            k
            for k, v in item.items()
            if v.dtype == torch.int64 and v.numel() and 0 <= int(v.min()) <= int(v.max()) < 256
        )
        item = {k: v.to(torch.uint8) if k in wide else v for k, v in item.items()}
        size = sum(t.numel() * t.element_size() for t in item.values())
        item[_WIDE] = wide
        if size > budget:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = item
            self._bytes += size
            while self._bytes > budget:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for k, t in old.items() if k != _WIDE)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


_WIDE = "__int64__"  # the keys of an item's label maps that were int64 before the cache narrowed them
ITEMS = ItemCache()


def _check_int(name: str, value: object, minimum: int, allowed: str) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name}={value!r}: must be an integer ({allowed})") from None
    if isinstance(value, bool) or number < minimum:
        raise ValueError(f"{name}={value!r}: allowed {allowed}")
    return number


class SyntheticShapes(Dataset):
    """Shapes-on-clutter segmentation benchmark; items are ``{"image", "mask", "size"}`` (see module docstring)."""

    CLASS_NAMES: tuple[str, ...] = CLASS_NAMES
    ignore_index = IGNORE_INDEX
    size_buckets: tuple[str, ...] = SIZE_BUCKETS

    def __init__(
        self,
        *,
        split: str = "train",
        num_samples: int = 1000,
        image_size: int = 128,
        seed: int = 0,
        max_objects: int = 8,
        max_distractors: int = 6,
        num_textures: int = 24,
        background_contrast: float = 1.0,
        foreground_cue: float = 0.0,
        shapes: tuple[str, ...] | None = None,
        class_by: str = "shape",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: allowed {sorted(SPLITS)}")
        self.split = split
        self.num_samples = _check_int("num_samples", num_samples, 1, "an integer ≥ 1")
        self.image_size = _check_int("image_size", image_size, 16, "an integer ≥ 16 (pixels)")
        self.seed = _check_int("seed", seed, 0, "an integer ≥ 0")
        self.max_objects = _check_int("max_objects", max_objects, 1, "an integer ≥ 1")
        self.max_distractors = _check_int("max_distractors", max_distractors, 0, "an integer ≥ 0")
        self.num_textures = _check_int("num_textures", num_textures, 1, "an integer ≥ 1")
        if not 0.0 <= background_contrast <= 1.0:
            raise ValueError(f"background_contrast={background_contrast!r}: allowed 0 ≤ contrast ≤ 1")
        self.background_contrast = float(background_contrast)
        if not 0.0 <= foreground_cue <= 1.0:
            raise ValueError(f"foreground_cue={foreground_cue!r}: allowed 0 ≤ cue ≤ 1")
        self.foreground_cue = float(foreground_cue)
        # A subset of the shapes makes an easier instrument (fewer, more distinct classes) for CPU-minute runs;
        # mask labels are 1..k in the order given. All seven (the default) keeps the random stream unchanged.
        shapes = tuple(shapes) if shapes is not None else CLASS_NAMES[1:]
        unknown = [name for name in shapes if name not in CLASS_NAMES[1:]]
        if not shapes or unknown or len(set(shapes)) != len(shapes):
            raise ValueError(f"shapes={list(shapes)!r}: distinct names from {list(CLASS_NAMES[1:])}")
        self.shapes = shapes
        self._shape_ids = np.array([CLASS_NAMES.index(name) for name in shapes], dtype=np.int64)
        # class_by="size": an object's label is its size bucket, not its shape (same images, same random stream).
        # A pixel deep inside a large object then needs context as wide as the object to be named, at any shape.
        if class_by not in ("shape", "size"):
            raise ValueError(f"class_by={class_by!r}: allowed 'shape' or 'size'")
        self.class_by = class_by
        self.num_classes = 1 + (len(SIZE_BUCKETS) - 1 if class_by == "size" else len(shapes))
        self.class_names = ("background", *(SIZE_BUCKETS[1:] if class_by == "size" else shapes))
        self._split_id = SPLITS[split]

        side = self.image_size
        # Tiling the periodic textures 2×2 lets a crop at any offset in [0, side) be read with flat indices
        # base[layer] + pixel, with no wrap-around arithmetic per pixel.
        bank = texture_bank(self.seed, side, self.num_textures)
        self._bank = np.round(np.tile(bank, (1, 2, 2)) * 255).astype(np.uint8).ravel()
        self._tex_stride = 4 * side * side
        rows = np.arange(side, dtype=np.int32)
        self._pixel_offset = rows[:, None] * (2 * side) + rows[None, :]
        self._centers = np.arange(side, dtype=np.float32) + 0.5
        self._levels = np.arange(256, dtype=np.float32) / 255
        self._min_side = max(MIN_PIXELS, MIN_SIDE * side)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(split={self.split!r}, num_samples={self.num_samples}, image_size={self.image_size}, "
            f"seed={self.seed}, max_objects={self.max_objects}, max_distractors={self.max_distractors}, "
            f"num_textures={self.num_textures}, background_contrast={self.background_contrast}, "
            f"foreground_cue={self.foreground_cue}, shapes={self.shapes!r}, class_by={self.class_by!r})"
        )

    @property
    def max_primitives(self) -> int:
        """Primitives a scene can hold: the background boundary, up to 3 segments per clutter fragment (strokes),
        one per object."""
        return 1 + 3 * self.max_distractors + self.max_objects

    @property
    def max_layers(self) -> int:
        """Layers a scene can hold: two background regions, the clutter fragments, the objects."""
        return 2 + self.max_distractors + self.max_objects

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._check_index(index)
        key = (repr(self), index)
        cached = ITEMS.get(key)
        if cached is not None:
            return dict(cached)
        scene = self.scene(index)
        layers = self.rasterise(scene)
        item = {
            "image": torch.from_numpy(self._colour(layers, scene)),
            "mask": torch.from_numpy(scene.label[layers]),
            "size": torch.from_numpy(scene.bucket[layers]),
        }
        ITEMS.put(key, item)
        return dict(item)

    def render(self, index: int) -> SyntheticSample:
        """The item plus an instance map and every object's parameters, for per-object analysis and tests."""
        scene, objects = self._draw(self._check_index(index))
        layers = self.rasterise(scene)
        return SyntheticSample(
            image=torch.from_numpy(self._colour(layers, scene)),
            mask=torch.from_numpy(scene.label[layers]),
            size=torch.from_numpy(scene.bucket[layers]),
            instance=torch.from_numpy(scene.instance[layers]),
            objects=objects,
        )

    def scene(self, index: int) -> Scene:
        """Item ``index``'s random draws as a :class:`Scene` (no pixels yet)."""
        return self._draw(self._check_index(index))[0]

    def _check_index(self, index: int) -> int:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"index={index!r}: must be an integer") from None
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index={i}: allowed 0 ≤ index < num_samples={self.num_samples}")
        return i

    # ----------------------------------------------------------------------------------------------------------
    # The scene draw: every random number an item takes, in the stream's fixed order; geometry becomes primitives.

    def _draw(self, index: int) -> tuple[Scene, tuple[ObjectSpec, ...]]:
        rng = np.random.default_rng([self.seed, self._split_id, index])
        side = self.image_size
        h = float(side)
        primitives: list[_Primitive] = []

        # 1. Background: region 0, and with probability 0.6 region 1 beyond a wavy boundary.
        b = rng.random(5)
        num_background = 1
        if b[0] < 0.6:
            theta = _TWO_PI * b[1]
            # The frequency, phase and threshold stay NumPy float64 scalars in the original arithmetic, so the
            # boundary is evaluated in float64 (see _inside).
            wave = (0.08 * h, float(_TWO_PI * (1 + 3 * b[2]) / h), float(_TWO_PI * b[3]), float((b[4] - 0.5) * 0.6 * h))
            primitives.append((WAVE, 1, (0, side, 0, side), (h / 2, h / 2, math.cos(theta), math.sin(theta), *wave)))
            num_background = 2

        # 2. Clutter, labelled background.
        num_clutter = int(rng.integers((self.max_distractors + 1) // 2, self.max_distractors + 1))
        kinds = rng.integers(len(DISTRACTOR_KINDS), size=num_clutter)
        clutter_side = self._log_uniform(rng, num_clutter, MAX_CLUTTER_SIDE * h)
        clutter_params = rng.random((num_clutter, 12))
        for k in range(num_clutter):
            self._clutter(primitives, num_background + k, int(kinds[k]), float(clutter_side[k]), clutter_params[k])

        # 3. Objects, painted mostly large-first (log-area + N(0, 1) jitter).
        num_objects = int(rng.integers(1, self.max_objects + 1))
        classes = rng.integers(0, len(self._shape_ids), size=num_objects)  # index into the shapes in use
        sides = self._log_uniform(rng, num_objects, MAX_SIDE * h)
        params = rng.random((num_objects, 5))
        order = np.argsort(-(2 * np.log(sides) + rng.standard_normal(num_objects)), kind="stable")

        first_object = num_background + num_clutter
        num_layers = first_object + num_objects
        textures = rng.integers(self.num_textures, size=num_layers)
        offsets = rng.integers(side, size=(num_layers, 2))
        colours = self._colours(rng, num_layers, num_background)
        # Background regions at reduced texture contrast (after every draw, so the random stream is unchanged):
        # "high-contrast texture" then hints at object-or-clutter, while rejecting clutter and naming the class
        # still take the shape. 1.0 makes background and objects indistinguishable locally.
        colours[:num_background, 1] = colours[:num_background, 0] + self.background_contrast * (
            colours[:num_background, 1] - colours[:num_background, 0]
        )
        if self.foreground_cue:  # backgrounds darker, clutter and objects brighter (same rule for every class)
            gap = FOREGROUND_CUE_GAP * self.foreground_cue
            colours[:num_background] *= 1 - gap
            colours[num_background:] = gap + (1 - gap) * colours[num_background:]

        labels = np.zeros(num_layers, dtype=np.int64)
        buckets = np.zeros(num_layers, dtype=np.int64)
        instances = np.zeros(num_layers, dtype=np.int64)
        objects = []
        for rank, o in enumerate(order.tolist()):
            j = first_object + rank
            shape, label = int(self._shape_ids[classes[o]]), int(classes[o]) + 1
            spec = self._object(primitives, j, shape, label, float(sides[o]), params[o], int(textures[j]))
            labels[j] = spec.bucket if self.class_by == "size" else label
            buckets[j], instances[j] = spec.bucket, rank + 1
            objects.append(spec)

        count = self.max_primitives
        kind = np.zeros(count, dtype=np.int64)
        layer = np.zeros(count, dtype=np.int64)
        box = np.zeros((count, 4), dtype=np.int64)
        values = np.zeros((count, NUM_PARAMS), dtype=np.float64)
        for i, (k, j, bounds, p) in enumerate(primitives):
            kind[i], layer[i], box[i], values[i, : len(p)] = k, j, bounds, p

        def pad(array: np.ndarray) -> np.ndarray:
            out = np.zeros((self.max_layers, *array.shape[1:]), dtype=array.dtype)
            out[: len(array)] = array
            return out

        scene = Scene(
            kind=kind,
            layer=layer,
            box=box,
            params=values,
            texture=pad(textures.astype(np.int64)),
            offset=pad(offsets.astype(np.int64)),
            colour=pad(colours),
            label=pad(labels),
            bucket=pad(buckets),
            instance=pad(instances),
        )
        return scene, tuple(objects)

    def _log_uniform(self, rng: np.random.Generator, n: int, high: float) -> np.ndarray:
        low = min(self._min_side, high)
        return np.exp(rng.uniform(math.log(low), math.log(high), size=n))

    @staticmethod
    def _colours(rng: np.random.Generator, num_layers: int, num_background: int) -> np.ndarray:
        """(num_layers, 2, 3) colour pairs; foreground pairs contrast with every background region (same rule for
        every class, so colour carries no class information)."""
        candidates = rng.random((num_layers, 8, 2, 3))
        colours = candidates[:, 0].copy()
        means = candidates.mean(axis=2)  # (layers, 8, 3)
        background = means[:num_background, 0]  # (num_background, 3)
        distance = np.linalg.norm(means[num_background:, :, None, :] - background[None, None], axis=-1)
        ok = (distance >= 0.2).all(axis=-1)  # (fg layers, 8)
        pick = np.where(ok.any(axis=1), ok.argmax(axis=1), 0)
        colours[num_background:] = candidates[num_background:][np.arange(num_layers - num_background), pick]
        return colours

    def _box(self, cy: float, cx: float, extent: float) -> tuple[int, int, int, int] | None:
        """Bounding box (y0, y1, x0, x1), clipped to the image, of the square of half-side ``extent`` about
        (cy, cx); None if it misses the image."""
        side = self.image_size
        y0, y1 = max(int(cy - extent), 0), min(int(cy + extent) + 2, side)
        x0, x1 = max(int(cx - extent), 0), min(int(cx + extent) + 2, side)
        if y0 >= y1 or x0 >= x1:
            return None
        return y0, y1, x0, x1

    def _object(
        self, primitives: list[_Primitive], layer: int, shape: int, label: int, side: float, p: np.ndarray, texture: int
    ) -> ObjectSpec:
        """Add shape ``shape`` (an index into CLASS_NAMES) as ``layer``; ``label`` is its mask label."""
        h = float(self.image_size)
        area = side * side
        angle = _TWO_PI * float(p[0])
        q = float(p[1])  # the shape parameter
        # k: area / R² for this class and parameter (exact formulas, see the module docstring).
        if shape == 1:
            k = math.pi
        elif shape == 2:
            k = 2.0
        elif shape == 3:
            k = 3 * math.sqrt(3) / 4
        elif shape == 4:
            rho = 0.5 + 0.3 * q
            k = math.pi * (1 - rho * rho)
        elif shape == 5:
            beta = 0.12 + 0.18 * q
            k = 8 * beta - 4 * beta * beta
        elif shape == 6:
            rho = 0.38 + 0.12 * q
            k = 5 * rho * _SIN36
        else:
            phi = math.atan(1 / (2.5 + 2.5 * q))
            k = 2 * math.sin(2 * phi)
        radius = min(math.sqrt(area / k), h / 2)
        area = k * radius * radius
        # Keep large objects' centres at least min(R, H/2)/2 from the border so a good part stays in view.
        margin = min(radius, h / 2) / 2
        cy = margin + (h - 2 * margin) * float(p[2])
        cx = margin + (h - 2 * margin) * float(p[3])
        spec = ObjectSpec(label, texture, (cy, cx), radius, angle, area, size_bucket(area, h * h))

        box = self._box(cy, cx, radius)
        if box is None:
            return spec
        c, s = math.cos(angle), math.sin(angle)
        if shape == 1:
            primitive = (ROUND, (cy, cx, 1.0, 0.0, radius * radius, -1.0, math.inf))
        elif shape == 4:
            primitive = (ROUND, (cy, cx, 1.0, 0.0, radius * radius, (rho * radius) ** 2, math.inf))
        elif shape == 6:
            # The star's edge from the outer vertex (R, 0) to the inner vertex at angle π/5, as ρ cos(ψ − α) ≤ d.
            inner = rho * radius
            by, bx = inner * _SIN36, inner * _COS36
            alpha = math.atan2(radius - bx, by)
            d = radius * by / math.hypot(by, radius - bx)
            primitive = (STAR, (cy, cx, c, s, angle, alpha, d))
        elif shape == 2:  # max(|u|, |v|) ≤ R/√2 is |u| ≤ R/√2 and |v| ≤ R/√2, bit for bit
            primitive = (BOX, (cy, cx, c, s, radius / math.sqrt(2), radius / math.sqrt(2)))
        elif shape == 3:
            primitive = (TRIANGLE, (cy, cx, c, s, -radius / 2, radius / 2))
        elif shape == 5:
            primitive = (CROSS, (cy, cx, c, s, beta * radius, radius))
        else:
            primitive = (BOX, (cy, cx, c, s, radius * math.cos(phi), radius * math.sin(phi)))
        primitives.append((primitive[0], layer, box, primitive[1]))
        return spec

    def _clutter(self, primitives: list[_Primitive], layer: int, kind: int, side: float, p: np.ndarray) -> None:
        h = float(self.image_size)
        cy, cx, angle = h * float(p[0]), h * float(p[1]), _TWO_PI * float(p[2])
        if kind == 2:  # stroke: a 2-3 segment polyline, each segment a thin rectangle with square caps
            width = 1.0 + (max(1.0, h / 40) - 1.0) * float(p[3])
            half_w = width / 2
            for s in range(2 + (p[4] < 0.5)):
                length = side * (0.6 + 0.8 * float(p[5 + s]))
                ey, ex = cy + length * math.sin(angle), cx + length * math.cos(angle)
                my, mx = (cy + ey) / 2, (cx + ex) / 2
                box = self._box(my, mx, length / 2 + width)
                if box is not None:
                    values = (my, mx, math.cos(angle), math.sin(angle), length / 2 + half_w, half_w)
                    primitives.append((BOX, layer, box, values))
                cy, cx = ey, ex
                angle += (0.3 + 0.5 * float(p[8 + s])) * math.pi * (1 if p[11] < 0.5 else -1)
            return
        radius = side / math.sqrt(math.pi)
        box = self._box(cy, cx, 1.5 * radius)
        if box is None:
            return
        c, s = math.cos(angle), math.sin(angle)
        if kind == 0:  # blob: radius modulated by harmonics 2-5 (amplitudes sum ≤ 0.45), never a clean shape
            amplitudes = [0.1125 * float(p[harmonic + 1]) for harmonic in range(2, 6)]
            phases = [_TWO_PI * float(p[harmonic + 5]) for harmonic in range(2, 6)]
            primitives.append((BLOB, layer, box, (cy, cx, *amplitudes, *phases, radius)))
        elif kind == 1:  # arc: a partial thin ring, span 0.3π-0.9π
            outer = 1.2 * radius
            wall = max(1.0, outer * (0.08 + 0.12 * float(p[3])))
            half_span = math.pi * (0.15 + 0.3 * float(p[4]))
            primitives.append((ARC, layer, box, (cy, cx, c, s, outer * outer, (outer - wall) ** 2, half_span)))
        else:  # disk segment: a disk cut by a chord at u ≤ cR, c ∈ [−0.5, 0.2] (≤ 60 % of the disk)
            chord = radius * (-0.5 + 0.7 * float(p[3]))
            primitives.append((ROUND, layer, box, (cy, cx, c, s, radius * radius, -1.0, chord)))

    # ----------------------------------------------------------------------------------------------------------
    # The NumPy rasteriser: each primitive writes its layer id into the layer map, inside its box only; _colour
    # turns ids into pixels in one pass.

    def rasterise(self, scene: Scene) -> np.ndarray:
        """The layer map, int32 (H, W), of ``scene``: primitives in paint order, later layers occlude."""
        side = self.image_size
        layers = np.zeros((side, side), dtype=np.int32)
        rows = zip(scene.kind.tolist(), scene.layer.tolist(), scene.box.tolist(), scene.params.tolist(), strict=True)
        for kind, layer, (y0, y1, x0, x1), p in rows:
            if kind == NONE:
                continue
            dy = self._centers[y0:y1, None] - p[0]  # float32 offsets of the pixel centres (p[] are Python floats)
            dx = self._centers[None, x0:x1] - p[1]
            np.putmask(layers[y0:y1, x0:x1], _inside(kind, p, dy, dx), layer)
        return layers

    def _colour(self, layers: np.ndarray, scene: Scene) -> np.ndarray:
        """float32 (3, H, W) image from the layer map and each layer's texture id, texture offset and colours."""
        side = self.image_size
        base = scene.texture * self._tex_stride + scene.offset[:, 0] * (2 * side) + scene.offset[:, 1]
        levels = self._bank[base.astype(np.int32)[layers] + self._pixel_offset]
        # A 256-level colour table per layer turns colouring into one gather that lands in (3, H, W) directly.
        c0, c1 = scene.colour[:, 0], scene.colour[:, 1]  # (layers, 3)
        table = c0.T[:, :, None] + (c1 - c0).T[:, :, None] * self._levels  # (3, layers, 256)
        table = table.astype(np.float32).reshape(3, -1)
        key = layers * 256
        key += levels
        return np.take(table, key, axis=1)


def _inside(kind: int, p: list[float], dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """A primitive's inside test on pixel-centre offsets ``dy`` (h, 1) and ``dx`` (1, w) from its centre, in
    float32 (the parameters are Python floats, which NumPy applies at the array's precision), except the
    background boundary's wave, in float64. ``ablations.data.render`` evaluates the same formulas in torch."""
    c, s = p[2], p[3]
    if kind == STAR:
        psi = np.mod(np.arctan2(dy, dx) - p[4], _TWO_PI / 5)
        psi = np.minimum(psi, _TWO_PI / 5 - psi)
        return np.hypot(dy, dx) * np.cos(psi - p[5]) <= p[6]
    if kind == BLOB:
        phi = np.arctan2(dy, dx)
        boundary = 1.0
        for k, harmonic in enumerate(range(2, 6)):
            boundary = boundary + p[2 + k] * np.cos(harmonic * phi + p[6 + k])
        return np.hypot(dy, dx) <= p[10] * boundary
    if kind == ROUND:
        r2 = dy * dy + dx * dx
        inside = r2 <= p[4]
        if p[5] >= 0:
            inside &= r2 >= p[5]
        if p[6] < math.inf:
            inside &= dx * c + dy * s <= p[6]
        return inside
    u, v = dx * c + dy * s, dy * c - dx * s  # the primitive's frame, rotated by its angle
    if kind == WAVE:
        return u > p[7] + p[4] * np.sin(v.astype(np.float64) * p[5] + p[6])
    if kind == ARC:
        r2 = dy * dy + dx * dx
        return (r2 <= p[4]) & (r2 >= p[5]) & (np.abs(np.arctan2(v, u)) <= p[6])
    au, av = np.abs(u), np.abs(v)
    if kind == BOX:
        return (au <= p[4]) & (av <= p[5])
    if kind == TRIANGLE:
        return (v >= p[4]) & (0.5 * v + (math.sqrt(3) / 2) * au <= p[5])
    if kind == CROSS:
        return (np.minimum(au, av) <= p[4]) & (np.maximum(au, av) <= p[5])
    raise ValueError(f"primitive kind={kind!r}: allowed 1..{len(PRIMITIVE_KINDS) - 1} ({PRIMITIVE_KINDS[1:]})")
