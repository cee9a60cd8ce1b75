"""The embedded benchmark rasterised in torch, a whole batch at once, on the device the scenes are on.

Why: at 513² the NumPy generator (one item at a time on CPU loader workers) and the CPU scale/crop/flip limit a GPU
run, and each batch would move float32 images and int64 label maps. Here a loader ships only each item's
:class:`~ablations.data.synthetic.Scene` (a few hundred numbers, ``Scene.tensors``), and the training device
draws the pixels: per primitive kind, the inside test on a window of pixel centres covering each primitive's
bounding box (as NumPy tests only the box), the layer map as the maximum layer id over the primitives that cover a
pixel (ids grow in paint order, so later layers occlude), then one gather from the 2×2-tiled uint8 texture bank
(a device tensor, built once per dataset and cached per device) and the colour c0 + (c1 − c0)·level/255 in
float32. The same item comes out for a seed and index whatever else is in the batch or its order.

Tolerance against the NumPy path (``SyntheticShapes.__getitem__``), measured by ``tests/test_render.py``:

* Where the layer maps agree, image values agree to 1e-6 (both build a 256-level colour table per layer, NumPy in
  float64 then rounded to float32, torch in float32: a few 1e-8 apart).
* The layer, label and size maps are equal except at boundary pixels whose inside test is within rounding: the
  tests run in float32 with the same operations in the same order, so disks, rings, squares, bars, triangles,
  crosses and strokes agree bit for bit, but atan2/sin/cos/hypot (stars, arcs, blobs) may differ in the last bit
  between NumPy and torch, and the wavy background boundary is float64 in NumPy and float32 here. The pinned bound
  is ≤ 0.1 % of pixels (``tests/test_render.py``). Measured on a CPU (torch 2.14, NumPy 2.4): 0 differing pixels
  of 8.4 M (512 items at 128²) and of 16.8 M (64 items at 513², default and faithful-profile settings), image
  values ≤ 1.2e-7 apart. Between CPU and CUDA torch the same caveat holds for the transcendental functions.
"""

from __future__ import annotations

import math

import torch

from ablations.data.synthetic import (
    ARC,
    BLOB,
    BOX,
    CROSS,
    NUM_PARAMS,
    PRIMITIVE_KINDS,
    ROUND,
    STAR,
    TRIANGLE,
    WAVE,
    SyntheticShapes,
)

__all__ = ["SCENE_KEYS", "SceneRenderer"]

_TWO_PI = 2 * math.pi
# The keys of Scene.tensors(), stacked by a loader's default collate to (B, ...).
SCENE_KEYS = ("kind", "layer", "box", "params", "texture", "offset", "colour", "label", "bucket")
# Elements of one inside-test chunk (primitives × window pixels): about 16 MB per float32 temporary on a CPU,
# 64 MB on an accelerator, so 513² batches of 16 stay within memory on either.
CPU_CHUNK = 1 << 22
DEVICE_CHUNK = 1 << 24
# A chunk's window is at most this many times a member's box area: fewer, larger chunks launch fewer kernels
# (what a GPU wants), more, tighter ones test fewer pixels (what a CPU wants); 4 is about even on both.
WINDOW_WASTE = 4


class SceneRenderer:
    """Rasterises batches of scenes of one :class:`SyntheticShapes` (its image size and texture bank)."""

    def __init__(self, dataset: SyntheticShapes, *, chunk_elements: int | None = None) -> None:
        self.image_size = dataset.image_size
        self._bank = torch.from_numpy(dataset._bank)  # uint8, (K, 2H, 2W) flattened
        self._tex_stride = dataset._tex_stride
        self.chunk_elements = chunk_elements
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _levels(self, device: torch.device) -> torch.Tensor:
        """level/255 for the 256 texture levels, float32 (as NumPy's table: float32 level / 255)."""
        return torch.arange(256, dtype=torch.float32, device=device) / 255

    def _device_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The texture bank and each pixel's offset into a tiled texture, on ``device`` (built once per device)."""
        if device not in self._cache:
            side = self.image_size
            rows = torch.arange(side, dtype=torch.int64)
            pixel = (rows[:, None] * (2 * side) + rows[None, :]).reshape(-1)
            self._cache[device] = (self._bank.to(device), pixel.to(device))
        return self._cache[device]

    def __call__(
        self,
        scenes: dict[str, torch.Tensor],
        *,
        size: bool = False,
        plan: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"image": float32 (B, 3, H, W), "mask": uint8 (B, H, W)}`` and, with ``size``, ``"size"`` uint8.
        ``plan``: host copies of ``scenes["kind"]`` and ``scenes["box"]``, if at hand (saves a device-to-host copy)."""
        layers = self.layers(scenes, plan=plan).reshape(len(scenes["kind"]), -1)  # (B, H·W)
        bank, pixel = self._device_tables(layers.device)
        side = self.image_size
        batch = layers.shape[0]
        offset = scenes["offset"]
        base = scenes["texture"] * self._tex_stride + offset[..., 0] * (2 * side) + offset[..., 1]  # (B, L)
        levels = bank[base.gather(1, layers) + pixel]  # (B, H·W) uint8
        # As NumPy: a 256-level colour table per layer, c0 + (c1 − c0)·level/255 (here in float32), then one gather
        # per pixel and channel, which lands in (B, 3, H·W) directly.
        colour = scenes["colour"].to(torch.float32)  # (B, L, 2, 3)
        c0 = colour[:, :, 0].transpose(1, 2)[..., None]  # (B, 3, L, 1)
        table = c0 + (colour[:, :, 1].transpose(1, 2)[..., None] - c0) * self._levels(layers.device)
        key = (layers * 256 + levels)[:, None, :].expand(batch, 3, layers.shape[1])
        image = table.reshape(batch, 3, -1).gather(2, key)
        out = {
            "image": image.reshape(batch, 3, side, side),
            "mask": scenes["label"].gather(1, layers).to(torch.uint8).reshape(batch, side, side),
        }
        if size:
            out["size"] = scenes["bucket"].gather(1, layers).to(torch.uint8).reshape(batch, side, side)
        return out

    def layers(
        self, scenes: dict[str, torch.Tensor], *, plan: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The layer maps, int64 (B, H, W): per pixel the largest layer id whose primitive covers it."""
        kind = scenes["kind"]
        device = kind.device
        batch, count = kind.shape
        side = self.image_size
        flat = torch.zeros(batch * side * side, dtype=torch.int64, device=device)
        params = scenes["params"].reshape(-1, NUM_PARAMS).to(torch.float32)
        layer = scenes["layer"].reshape(-1)
        box = scenes["box"].reshape(-1, 4)
        item = torch.arange(batch, device=device).repeat_interleave(count)
        # The plan (which primitives, in which windows) is made on the host, from the copies given or one made here.
        kind_cpu, box_cpu = plan if plan is not None else (kind, box)
        kind_cpu, box_cpu = kind_cpu.reshape(-1).cpu(), box_cpu.reshape(-1, 4).cpu()
        heights, widths = (box_cpu[:, 1] - box_cpu[:, 0]).tolist(), (box_cpu[:, 3] - box_cpu[:, 2]).tolist()
        budget = self.chunk_elements or (CPU_CHUNK if device.type == "cpu" else DEVICE_CHUNK)
        order: list[int] = []  # primitive indices, chunk after chunk
        chunks: list[tuple[int, int, int, int, int]] = []  # kind, first, end (in order), window rows, cols
        for k in range(1, len(PRIMITIVE_KINDS)):
            chosen = (kind_cpu == k).nonzero().flatten().tolist()
            # Largest boxes first; a chunk ends where its window (largest height × largest width) would exceed
            # WINDOW_WASTE times the next box, so small primitives are not tested on a large one's window.
            chosen.sort(key=lambda i: -heights[i] * widths[i])
            start = 0
            while start < len(chosen):
                rows, cols, end = heights[chosen[start]], widths[chosen[start]], start + 1
                while end < len(chosen):
                    h, w = heights[chosen[end]], widths[chosen[end]]
                    r, c = max(rows, h), max(cols, w)
                    if (end + 1 - start) * r * c > budget or r * c > WINDOW_WASTE * h * w:
                        break
                    rows, cols, end = r, c, end + 1
                chunks.append((k, len(order), len(order) + end - start, rows, cols))
                order += chosen[start:end]
                start = end
        # One host-to-device copy of the plan per batch (a copy per chunk would wait for the device each time).
        order_device = torch.tensor(order, dtype=torch.int64).to(device)
        for k, first, end, rows, cols in chunks:
            index = order_device[first:end]
            self._paint(flat, k, index, rows, cols, params[index], layer[index], box[index], item[index])
        return flat.reshape(batch, side, side)

    def _paint(self, flat, kind, index, rows, cols, p, layer, box, item) -> None:
        """Test ``len(index)`` primitives of one kind on windows of rows × cols pixels at their boxes' corners and
        write their layer ids into the flat layer maps (maximum: the later layer wins)."""
        side = self.image_size
        device = flat.device
        ys = box[:, 0:1] + torch.arange(rows, device=device)  # (n, rows)
        xs = box[:, 2:3] + torch.arange(cols, device=device)  # (n, cols)
        # Pixel centres minus the centre, in float32 as NumPy's (float32 centres − the centre as float32). Rows
        # and columns past a box's end are NaN, which fails every inside test (cheaper than a mask per pixel).
        dy = (ys.to(torch.float32) + 0.5 - p[:, 0:1]).masked_fill_(ys >= box[:, 1:2], math.nan)[:, :, None]
        dx = (xs.to(torch.float32) + 0.5 - p[:, 1:2]).masked_fill_(xs >= box[:, 3:4], math.nan)[:, None, :]
        value = torch.where(_inside(kind, p[:, :, None, None], dy, dx), layer[:, None, None], 0)
        target = (
            item[:, None, None] * (side * side)
            + ys.clamp(max=side - 1)[:, :, None] * side
            + xs.clamp(max=side - 1)[:, None, :]
        )
        flat.scatter_reduce_(0, target.reshape(-1), value.reshape(-1), reduce="amax")


def _inside(kind: int, p: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The inside tests of ``ablations.data.synthetic._inside`` in torch, float32; ``p`` is (n, NUM_PARAMS, 1, 1),
    ``dy`` (n, h, 1), ``dx`` (n, 1, w)."""
    c, s = p[:, 2], p[:, 3]
    if kind == STAR:
        psi = torch.remainder(torch.atan2(dy, dx) - p[:, 4], _TWO_PI / 5)
        psi = torch.minimum(psi, _TWO_PI / 5 - psi)
        return torch.hypot(dy, dx) * torch.cos(psi - p[:, 5]) <= p[:, 6]
    if kind == BLOB:
        phi = torch.atan2(dy, dx)
        boundary = 1.0
        for k, harmonic in enumerate(range(2, 6)):
            boundary = boundary + p[:, 2 + k] * torch.cos(harmonic * phi + p[:, 6 + k])
        return torch.hypot(dy, dx) <= p[:, 10] * boundary
    if kind == ROUND:  # inner² = −1 and chord = +∞ make those tests true, as NumPy skips them
        r2 = dy * dy + dx * dx
        return (r2 <= p[:, 4]) & (r2 >= p[:, 5]) & (dx * c + dy * s <= p[:, 6])
    u, v = dx * c + dy * s, dy * c - dx * s
    if kind == WAVE:
        return u > p[:, 7] + p[:, 4] * torch.sin(v * p[:, 5] + p[:, 6])
    if kind == ARC:
        r2 = dy * dy + dx * dx
        return (r2 <= p[:, 4]) & (r2 >= p[:, 5]) & (torch.atan2(v, u).abs() <= p[:, 6])
    au, av = u.abs(), v.abs()
    if kind == BOX:
        return (au <= p[:, 4]) & (av <= p[:, 5])
    if kind == TRIANGLE:
        return (v >= p[:, 4]) & (0.5 * v + (math.sqrt(3) / 2) * au <= p[:, 5])
    if kind == CROSS:
        return (torch.minimum(au, av) <= p[:, 4]) & (torch.maximum(au, av) <= p[:, 5])
    raise ValueError(f"primitive kind={kind!r}: allowed 1..{len(PRIMITIVE_KINDS) - 1} ({PRIMITIVE_KINDS[1:]})")
