"""Receptive fields, gridding holes, the HDC rule, parameters and multiply-adds.

The pure functions work on per-axis layer lists ``(kernel, stride, dilation)`` and rate sequences; their
worked examples are in ``../shared/reference/papers.md`` §4 and §8 and pinned by the tests.

* Receptive field: RF_0 = 1, RF_l = RF_{l−1} + (k_e − 1)·J_{l−1}, J_l = J_{l−1}·s_l, with the effective kernel
  k_e = k + (k − 1)(r − 1) (DeepLab v2 §3.1).
* Gridding: along one axis, a stack of dilated k×k convs reaches the offsets Σ t_i·r_i with
  t_i ∈ {−k//2 … k//2}. A *hole* is an offset inside the stack's span that no path reaches (Wang et al. 2018,
  "gridding"); (2, 4, 8) leaves every odd offset out, (1, 2, 5) none. Residual shortcuts only add t_i = 0 paths,
  which the sum already holds, so the holes of a residual stage are those of its 3×3 convs.
* HDC rule (Wang et al. §3.2): M_n = r_n, M_i = max(M_{i+1} − 2r_i, M_{i+1} − 2(M_{i+1} − r_i), r_i); a schedule
  is gridding-free by the rule when M_2 ≤ K and the rates share no factor > 1.
* Multiply-adds are counted by torch's ``FlopCounterMode`` (a FLOP counter over the dispatched ops; one MAC is two
  FLOPs), on the meta device, so counting a ResNet-101 at 513×513 costs no compute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def effective_kernel(kernel: int, dilation: int) -> int:
    return kernel + (kernel - 1) * (dilation - 1)


def receptive_field_trace(layers: Iterable[tuple[int, int, int]]) -> list[int]:
    """RF after each ``(kernel, stride, dilation)`` layer, in input pixels along one axis."""
    rf, jump, trace = 1, 1, []
    for kernel, stride, dilation in layers:
        rf += (effective_kernel(kernel, dilation) - 1) * jump
        jump *= stride
        trace.append(rf)
    return trace


def receptive_field(layers: Iterable[tuple[int, int, int]]) -> int:
    trace = receptive_field_trace(layers)
    return trace[-1] if trace else 1


def reachable_offsets(rates: Sequence[int], kernel: int = 3) -> set[int]:
    """Offsets (in cells) that some path through stacked dilated ``kernel``-wide convs connects to the centre."""
    offsets = {0}
    for rate in rates:
        # Tap t of a 'same'-padded conv sits at t·rate − (kernel − 1)·rate / 2 (whole for odd kernels, and for even
        # kernels at even rates, the only ones the model builds).
        taps = [t * rate - (kernel - 1) * rate // 2 for t in range(kernel)]
        offsets = {o + tap for o in offsets for tap in taps}
    return offsets


def gridding_holes(rates: Sequence[int], kernel: int = 3) -> list[int]:
    """Offsets within the span of the stack that no path reaches: ``[]`` means no gridding."""
    return _holes(reachable_offsets(rates, kernel))


def _holes(offsets: set[int]) -> list[int]:
    span = max(abs(o) for o in offsets)
    return [o for o in range(-span, span + 1) if o not in offsets]


@dataclass(frozen=True)
class HdcCheck:
    rates: tuple[int, ...]
    m: tuple[int, ...]  # M_1 … M_n of Wang et al.
    gcd: int
    ok: bool  # M_2 ≤ kernel and gcd == 1

    @property
    def m2(self) -> int:
        return self.m[1] if len(self.m) > 1 else self.m[0]


def hdc_check(rates: Sequence[int], kernel: int = 3) -> HdcCheck:
    """Wang et al.'s rule for one group of rates: (1, 2, 5) passes, (1, 2, 9) fails M_2, (2, 4, 8) both."""
    rates = tuple(rates)
    m = [rates[-1]]
    for r in reversed(rates[:-1]):
        following = m[0]
        m.insert(0, max(following - 2 * r, following - 2 * (following - r), r))
    gcd = math.gcd(*rates)
    m2 = m[1] if len(m) > 1 else m[0]
    return HdcCheck(rates, tuple(m), gcd, m2 <= kernel and gcd == 1)


def rising_groups(rates: Sequence[int]) -> list[tuple[int, ...]]:
    """Split a schedule into the rising runs ("sawtooth" groups) the HDC rule is stated for: 1,2,5,1,2,5 → two."""
    groups: list[list[int]] = []
    for rate in rates:
        if groups and rate > groups[-1][-1]:
            groups[-1].append(rate)
        else:
            groups.append([rate])
    return [tuple(g) for g in groups]


def hdc_rule(rates: Sequence[int], kernel: int = 3) -> dict:
    """The HDC rule over a whole stage: each rising group checked on its own; ``ok`` when all pass."""
    checks = [hdc_check(group, kernel) for group in rising_groups(rates)]
    return {
        "groups": [list(c.rates) for c in checks],
        "m2": [c.m2 for c in checks],
        "gcd": [c.gcd for c in checks],
        "ok": all(c.ok for c in checks),
    }


# --------------------------------------------------------------------------------------------------------------
# Whole networks


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (every count of the project: describe, training metrics, benchmarks)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, int], *, batch: int = 1, backward: bool = False) -> int:
    """FLOPs of one step on a ``(batch, 3, *input_size)`` input, counted by ``torch.utils.flop_counter``'s
    ``FlopCounterMode`` (the one FLOP counter of the project; Lightning's ``measure_flops`` wraps the same):
    a forward pass in eval mode without gradients, or with ``backward`` a forward and backward pass of the sum
    of the outputs in training mode. Runs on the model's device; on the meta device nothing is computed. A model
    on the meta device should be a copy: the backward pass leaves (meta) gradients on its parameters.
    torchvision's deformable conv, which torch counts as 0, is counted by
    :data:`ablations.model.deformable.FLOP_FORMULAS` (the conv plus its bilinear sampling)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ablations.model.deformable import FLOP_FORMULAS

    device = next(model.parameters()).device
    x = torch.zeros(batch, 3, *input_size, device=device)
    was_training = model.training
    model.train(backward)
    try:
        if backward:
            with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
                model(x).float().sum().backward()
        else:
            with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
                model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def count_macs(model: nn.Module, input_size: tuple[int, int], *, batch: int = 1) -> int:
    """Multiply-adds of one forward pass per image: :func:`count_flops` / 2 (one MAC is two FLOPs)."""
    return count_flops(model, input_size, batch=batch) // 2 // batch


def stage_dilations(rows: Iterable[dict]) -> dict[str, list[int]]:
    """``{block: [dilation of each 3×3 conv, in order]}`` from a backbone's ``conv_table()``."""
    stages: dict[str, list[int]] = {}
    for row in rows:
        stages.setdefault(row["block"], []).append(row["dilation"])
    return stages


def network_field_of_view(model: nn.Module) -> dict:
    """Receptive field (input pixels, one axis) and gridding holes of a built :class:`~ablations.model.DeepLab`.

    Paths are read from the modules as they are now (after any ``set_output_stride``): the stem, every 3×3 conv
    of the residual stages in order, then the longest path through the context module, the decoder's and the
    head's 3×3 convs. Bilinear resizes are not counted. ``global`` is true when some branch pools over the
    whole map (image pooling, an SPP 1×1 level): a logit then depends on every input pixel.
    """
    backbone = model.backbone
    rows = backbone.conv_table()
    # An encoder whose strides sit in pools (VGG-16) lists every conv and pool itself.
    path = getattr(backbone, "layer_path", None)
    layers = path() if path else list(backbone.stem_path()) + [(3, r["stride"], r["dilation"]) for r in rows]
    backbone_rf = receptive_field(layers)
    jump = math.prod(s for _, s, _ in layers)

    # Gridding, per dilated stage (in that stage's cells) and on the output grid (every 3×3 conv that reads a
    # map already at the output stride, then the context module's paths).
    holes: dict[str, list[int]] = {}
    for stage, rates in stage_dilations(rows).items():
        if max(rates) > 1:
            holes[stage] = gridding_holes(rates)
    output_grid_rates = []
    if path:  # every 3×3 layer (a 3×3 max-pool reaches as far as a rate-1 conv) read at the output stride
        running = 1
        for kernel, stride, dilation in layers:
            if running == jump and stride == 1 and kernel == 3:
                output_grid_rates.append(dilation)
            running *= stride
    else:
        running = math.prod(s for _, s, _ in backbone.stem_path())
        for r in rows:
            if running == jump and r["stride"] == 1:
                output_grid_rates.append(r["dilation"])
            running *= r["stride"]
    base = reachable_offsets(output_grid_rates)
    context_paths = model.context.paths()
    reach = set()
    kernel = getattr(model.context, "kernel_size", 3)  # fc6's kernel in the v2 heads (v2 Table 1)
    for branch in context_paths:
        reach |= {a + b for a in base for b in reachable_offsets(branch, kernel)}
    holes["output"] = _holes(reach)

    context_rf = (
        backbone_rf + max(receptive_field((kernel, 1, r) for r in branch) - 1 for branch in context_paths) * jump
    )
    logits_rf = context_rf
    tail = []
    if model.decoder is not None:
        tail += model.decoder.paths()
    if model.head is not None and model.head.refine is not None:
        tail.append((jump if model.decoder is None else tail[-1][0], 1))
    for stride, n_convs in tail:
        logits_rf += 2 * stride * n_convs
    field = {"backbone": backbone_rf, "context": context_rf, "logits": logits_rf}
    deformable = deformable_parts(model)
    if deformable:
        # A deformable conv's taps sit where its offsets put them, per input (Dai et al. 2017 §2.1): the field of
        # view is data-dependent from that conv on. The rigid figures stay, named for what they are: the field
        # of the rigid sampling grid, which is the network's at initialisation (zero offsets).
        rigid = dict(field)
        order = list(field)  # backbone → context → logits: a data-dependent part makes the later ones so too
        for part in order[min(order.index(p) for p in deformable) :]:
            field[part] = DATA_DEPENDENT
    out = {
        "receptive_field": {**field, "global": bool(getattr(model.context, "is_global", False))},
        "gridding_holes": holes,
    }
    if deformable:
        out["receptive_field"]["rigid_grid"] = rigid
        out["receptive_field"]["deformable"] = sorted(n for names in deformable.values() for n in names)
    return out


DATA_DEPENDENT = "data-dependent (deformable)"


def deformable_parts(model: nn.Module) -> dict[str, list[str]]:
    """The deformable convs of a model by the part whose field of view they make data-dependent: ``backbone``,
    ``context``, or ``logits`` for any other (decoder, head); any
    :class:`~ablations.model.deformable.DeformConv2d`, wherever it sits."""
    from ablations.model.deformable import deformable_modules

    parts: dict[str, list[str]] = {}
    for name in deformable_modules(model):
        part = name.split(".", 1)[0]
        parts.setdefault(part if part in ("backbone", "context") else "logits", []).append(name)
    return parts


# --------------------------------------------------------------------------------------------------------------
# Geometry: how much of each dilated conv lands on the feature map (DeepLab v3 §3.3, Fig. 4)


def tap_indices(side: int, rate: int, *, kernel: int = 3, stride: int = 1, padding: int | None = None) -> tuple:
    """Along one axis of a ``side``-long map: for each output position, the input index each tap reads, or
    None where the tap falls on the zero padding. Two convs with equal weights compute the same function exactly
    when these are equal, so a rate-8 and a rate-6 conv on a 6-cell map (centre tap only) are the same conv."""
    padding = rate * (kernel // 2) if padding is None else padding
    outputs = (side + 2 * padding - rate * (kernel - 1) - 1) // stride + 1
    return tuple(
        tuple(i if 0 <= i < side else None for i in (o * stride - padding + t * rate for t in range(kernel)))
        for o in range(max(0, outputs))
    )


def valid_fraction(side: int, rate: int, *, kernel: int = 3, stride: int = 1, padding: int | None = None) -> float:
    """Share of a conv's taps inside the map along one axis, averaged over output positions."""
    taps = tap_indices(side, rate, kernel=kernel, stride=stride, padding=padding)
    if not taps:
        return 0.0
    return sum(i is not None for row in taps for i in row) / (len(taps) * kernel)


def valid_taps(
    size: int | Sequence[int],
    rate: int | Sequence[int],
    *,
    kernel: int | Sequence[int] = 3,
    stride: int = 1,
    padding=None,
) -> float:
    """Share of a k×k conv's k² taps that land inside an ``(H, W)`` map, averaged over output positions: 1 for
    a rate-1 conv on a large map, 1/9 for a 3×3 conv whose rate is at least the map's side (a 1×1 conv). ``kernel``
    may be per dimension (a custom module's 3×1 conv)."""
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    kernels = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    rates = (rate, rate) if isinstance(rate, int) else tuple(rate)
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = (padding, padding) if padding is None or isinstance(padding, int) else tuple(padding)
    return math.prod(
        valid_fraction(n, r, kernel=k, stride=s, padding=p)
        for n, r, k, s, p in zip(sizes, rates, kernels, strides, pads, strict=True)
    )


def is_degenerate(size: int | Sequence[int], rate: int | Sequence[int], *, kernel: int | Sequence[int] = 3) -> bool:
    """Only the centre tap ever lands on the map: the rate is at least the side in every dimension the kernel
    spans (``kernel`` may be per dimension)."""
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    rates = (rate, rate) if isinstance(rate, int) else tuple(rate)
    kernels = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    spans = [(n, r) for n, r, k in zip(sizes, rates, kernels, strict=True) if k > 1]
    return bool(spans) and all(r >= n for n, r in spans)


def conv_geometry(model: nn.Module, input_size: tuple[int, int]) -> dict[str, dict]:
    """Every conv with a kernel wider than 1 in ``model``, as it runs on a ``(1, 3, *input_size)`` input: the
    map it reads, its rate, stride and the valid-tap share. One forward pass (on the model's device: the meta
    device costs nothing); keyed by module name. A deformable conv's entry also holds ``deformable`` (its version);
    its valid-tap share and ``degenerate`` are those of its rigid sampling grid (zero offsets: at initialisation)."""
    from ablations.model.deformable import DeformConv2d

    seen: dict[str, dict] = {}
    hooks = []

    def record(name: str):
        def hook(module: nn.Conv2d, inputs, output) -> None:
            size = tuple(inputs[0].shape[-2:])
            seen[name] = {
                "size": list(size),
                "kernel": module.kernel_size[0],
                "stride": module.stride[0],
                "dilation": module.dilation[0],
                "padding": module.padding[0] if isinstance(module.padding, tuple) else module.padding,
                "groups": module.groups,
                "in_channels": module.in_channels,
                "out_channels": module.out_channels,
                "valid_taps": valid_taps(
                    size, module.dilation, kernel=module.kernel_size, stride=module.stride, padding=module.padding
                ),
                "degenerate": is_degenerate(size, module.dilation, kernel=module.kernel_size),
            }
            if isinstance(module, DeformConv2d):
                seen[name]["deformable"] = module.version

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1:  # a 1×3 conv too (custom modules)
            hooks.append(module.register_forward_hook(record(name)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return seen


def network_signature(model: nn.Module, input_size: tuple[int, int], geometry: dict[str, dict] | None = None) -> tuple:
    """What the network computes at ``input_size``, up to its weights: every module's type and settings, and for
    every conv the input index each tap reads. Two networks with equal signatures are the same function of the
    same weights — e.g. multi-grid (1,2,3) and (1,2,4) on a 6×6 map, where rates 6 and 8 both reduce to 1×1.
    ``geometry``: the model's :func:`conv_geometry` at ``input_size`` when the caller has it already."""
    geometry = conv_geometry(model, input_size) if geometry is None else geometry
    parts = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name in geometry:
            g = geometry[name]
            taps = tuple(
                tap_indices(n, module.dilation[d], kernel=module.kernel_size[d], stride=module.stride[d],
                            padding=module.padding[d])
                for d, n in enumerate(g["size"])
            )  # fmt: skip
            kind = f"DeformConv2d/{g['deformable']}" if "deformable" in g else "Conv2d"
            parts.append((name, kind, module.in_channels, module.out_channels, module.groups, taps))
        elif not list(module.children()) or hasattr(module, "topology"):
            parts.append((name, type(module).__name__, module.extra_repr(), getattr(module, "topology", None)))
    return tuple(parts)
