"""``ablations describe``: what a config builds, read off the built network (not off the config).

The network is built on the meta device, so describing a ResNet-101 at output stride 8 on a 513×513 input
allocates no weights and computes nothing; shapes, strides, rates and op counts are still the real ones.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from ablations.config import ExperimentConfig
from ablations.dilation import scale_rates
from ablations.geometry import cache
from ablations.geometry.analysis import (
    conv_geometry,
    count_macs,
    count_params,
    hdc_rule,
    network_field_of_view,
    stage_dilations,
)
from ablations.model import DeepLab
from ablations.model.nonlocal_block import NonLocalBlock, attention_bytes, attention_entries


def measure_output_stride(model: DeepLab) -> int:
    """Input side / backbone feature side, from a forward pass on a probe that every stride divides."""
    device = next(model.parameters()).device
    side = 2 * model.backbone.layout.natural_output_stride(model.backbone.cascade)
    features = model.backbone(torch.zeros(1, 3, side, side, device=device))["out"]
    return side // features.shape[-1]


def feature_size(config: ExperimentConfig, input_size: tuple[int, int]) -> list[int]:
    """The backbone's output map at ``input_size`` (``[H, W]``), read off the cached meta build."""
    size = tuple(input_size)

    def compute(model: DeepLab) -> list[int]:
        return list(model.backbone(torch.zeros(1, 3, *size, device="meta"))["out"].shape[-2:])

    return cache.read(config, "feature_size", compute, size=size)


def cached_conv_geometry(
    config: ExperimentConfig, input_size: tuple[int, int], output_stride: int | None = None
) -> dict[str, dict]:
    """:func:`~ablations.geometry.analysis.conv_geometry` of the cached meta build at ``output_stride``."""
    size = tuple(input_size)
    return cache.read(
        config, "conv_geometry", lambda model: conv_geometry(model, size), size=size, output_stride=output_stride
    )


def cached_macs(config: ExperimentConfig, input_size: tuple[int, int], output_stride: int | None = None) -> int:
    """:func:`~ablations.geometry.analysis.count_macs` (one image) of the cached meta build at ``output_stride``."""
    size = tuple(input_size)
    return cache.read(config, "macs", lambda model: count_macs(model, size), size=size, output_stride=output_stride)


def cached_output_stride(config: ExperimentConfig, output_stride: int | None = None) -> int:
    """:func:`measure_output_stride` of the cached meta build re-planned for ``output_stride``."""
    return cache.read(config, "measured_output_stride", measure_output_stride, output_stride=output_stride)


def describe(config: ExperimentConfig, input_size: tuple[int, int] = (513, 513)) -> dict[str, Any]:
    """What ``config`` builds at ``input_size``; the network's figures come from :mod:`ablations.geometry.cache`
    (one meta build per network, each figure computed once per process)."""
    size = tuple(input_size)
    summary: dict[str, Any] = {"config": config.to_dict(), "input_size": list(size)}
    summary.update(cache.read(config, "describe", lambda model: _network_summary(config, model, size), size=size))
    c = config.context
    eval_os = config.eval_output_stride
    eval_summary: dict[str, Any] = {
        "output_stride": eval_os,
        "scales": list(config.eval.scales),
        "flip": config.eval.flip,
        "context_rates": (
            list(scale_rates(c.stated_rates, c.reference_output_stride, eval_os)) if c.stated_rates else []
        ),
    }
    if eval_os != config.backbone.output_stride:
        eval_summary.update(
            cache.read(
                config, "describe.eval", lambda model: _eval_summary(config, model, size), size=size,
                output_stride=eval_os,
            )
        )  # fmt: skip
    summary["eval"] = eval_summary
    summary["nonlocal"] = _nonlocal_summary(config, size, summary["feature_size"])
    return summary


def _attention(height: int, width: int, batch: int = 1) -> dict[str, Any]:
    """The attention matrices of a non-local block on a ``height × width`` map, for ``batch`` images (fp32)."""
    return {
        "map": [height, width],
        "batch": batch,
        "entries": attention_entries(height, width, batch),
        "bytes": attention_bytes(height, width, batch),
    }


def _nonlocal_summary(config: ExperimentConfig, size: tuple[int, int], features: list[int]) -> dict[str, Any] | None:
    """The non-local block's widths and its attention matrix, (h·w)² per image in fp32: at ``size`` at the training
    and at the evaluation output stride, and for one training batch at the training crop; None without a block."""
    blocks = cache.read(
        config, "nonlocal_blocks",
        lambda model: [[n, m.theta.in_channels, m.channels] for n, m in model.named_modules()
                       if isinstance(m, NonLocalBlock)],
    )  # fmt: skip
    if not blocks:
        return None
    ((name, in_channels, channels),) = blocks
    eval_os = config.eval_output_stride
    eval_map = cache.read(
        config, "feature_size",
        lambda model: list(model.backbone(torch.zeros(1, 3, *size, device="meta"))["out"].shape[-2:]),
        size=size, output_stride=eval_os,
    )  # fmt: skip
    crop = config.data.crop_size or config.data.image_size
    return {
        "module": name,
        "in_channels": in_channels,
        "channels": channels,
        "attention": _attention(*features),
        "eval": {"output_stride": eval_os, **_attention(*eval_map)},
        "train_batch": {"crop": crop, **_attention(*feature_size(config, (crop, crop)), config.data.batch_size)},
    }


def _eval_summary(config: ExperimentConfig, model: DeepLab, size: tuple[int, int]) -> dict[str, Any]:
    """The network's figures at the evaluation output stride (the model is there already)."""
    stride = model.output_stride
    summary: dict[str, Any] = {
        "measured_output_stride": cached_output_stride(config, stride),
        "units": model.backbone.conv_table(),
        "macs": cached_macs(config, size, stride),
    }
    _add_geometry(summary, model, cached_conv_geometry(config, size, stride))
    summary.update(network_field_of_view(model))
    return summary


def _network_summary(config: ExperimentConfig, model: DeepLab, input_size: tuple[int, int]) -> dict[str, Any]:
    """Everything :func:`describe` reads off the network at its training output stride. Only the network sections
    of ``config`` are read (the cache key holds them)."""
    measured = cached_output_stride(config)
    context = model.context
    c = config.context
    summary: dict[str, Any] = {
        "output_stride": measured,
        "feature_size": feature_size(config, input_size),
        "units": model.backbone.conv_table(),
        "stages": [
            {
                "block": s.name,
                "stride": s.stride,
                "base_rate": s.base_rate,
                "unit_rates": list(s.unit_rates),
                "in_stride": s.in_stride,
                "out_stride": s.out_stride,
            }
            for s in model.backbone.plan
        ],
        "context": {
            "kind": c.kind,
            "topology": c.topology,
            "merge": c.merge,
            "rates": list(context.rates),
            "stated_rates": list(c.stated_rates),
            "reference_output_stride": c.reference_output_stride,
            "image_pooling": bool(c.image_pooling),
            "separable": c.separable,
            "branches": context.branch_count,
            **_context_variants(config, context),
            # context.kind=custom (ablations.model.custom): what it is and whether it states its field of view
            **(
                {"target": c.target, "args": dict(c.args), "declares_paths": context.declares_paths}
                if c.kind == "custom"
                else {}
            ),
        },
        "decoder": (
            {
                "levels": list(model.decoder.levels),
                "low_level_channels": config.decoder.low_level_channels,
                "upsampling": [list(u) for u in model.decoder.upsampling()],  # [level, factor, mode] per resize
            }
            if model.decoder is not None
            else None
        ),
        "upsampling": {  # the logits to the input's size (head.upsample)
            "mode": "transposed" if model.upsampler is not None else "bilinear",
            "factor": 4 if model.decoder is not None else model.output_stride,
        },
        "params": count_params(model),
        "params_by_part": {
            part: count_params(getattr(model, part)) if getattr(model, part) is not None else 0
            for part in ("backbone", "context", "decoder", "head", "msc", "upsampler")
        },
        "msc": (
            {"taps": list(model.msc.branches), "strides": [b[0].stride[0] for b in model.msc.branches.values()]}
            if model.msc is not None
            else None
        ),
        "macs": cached_macs(config, input_size),
    }
    _add_geometry(summary, model, cached_conv_geometry(config, input_size))
    summary.update(network_field_of_view(model))
    summary["hdc_rule"] = {
        stage: hdc_rule(rates)
        for stage, rates in stage_dilations(summary["units"]).items()
        if stage in summary["gridding_holes"]
    }
    return summary


def _context_variants(config: ExperimentConfig, context) -> dict[str, Any]:
    """Read off the built context module: the groups and deformable version of its 3×3 atrous convs, and its rate
    sets (multi-scale ASPP) as built and as stated."""
    out: dict[str, Any] = {}
    convs = [branch.atrous for branch in context.atrous_branches()] if hasattr(context, "atrous_branches") else []
    if convs and not config.context.separable:
        out["groups"] = sorted({conv.groups for conv in convs})
    versions = sorted({getattr(conv, "version", None) for conv in convs} - {None})
    if versions:
        out["deformable"] = versions
    if config.context.rate_sets is not None:
        out["rate_sets"] = [list(rates) for rates in context.rate_sets]
        out["stated_rate_sets"] = [list(rates) for rates in config.context.rate_sets]
    return out


def _add_geometry(summary: dict[str, Any], model: DeepLab, geometry: dict[str, dict]) -> None:
    """``valid_taps`` (and the map each conv reads) on every unit row, and ``context_geometry``: one entry per
    context conv wider than 1×1 (the atrous branches), from the model's ``conv_geometry`` at the input size."""
    name_of = {id(m): n for n, m in model.named_modules()}
    convs = [conv for units in model.backbone.stage_units().values() for unit in units for conv in unit]
    for row, conv in zip(summary["units"], convs, strict=True):
        g = geometry.get(name_of[id(conv)])
        if g is not None:
            row.update(size=g["size"], valid_taps=g["valid_taps"], degenerate=g["degenerate"])
    summary["context_geometry"] = [
        {"module": name.removeprefix("context."), "rate": g["dilation"], "size": g["size"],
         "valid_taps": g["valid_taps"], "degenerate": g["degenerate"],
         **({"deformable": g["deformable"]} if "deformable" in g else {})}
        for name, g in geometry.items()
        if name.startswith("context.")
    ]  # fmt: skip


def degenerate_convs(summary: dict[str, Any]) -> list[str]:
    """Human names of the dilated convs of a ``describe`` summary that see only their centre tap."""
    out = [
        f"{u['block']}.{u['unit']} r{u['dilation']}"
        for u in summary["units"]
        if u.get("degenerate") and u["dilation"] > 1
    ]
    out += [f"context r{c['rate']}" for c in summary["context_geometry"] if c["degenerate"]]
    return out


# --------------------------------------------------------------------------------------------------------------
# Human-readable form


def format_summary(s: dict[str, Any]) -> str:
    cfg = s["config"]
    b, c, d, h = cfg["backbone"], cfg["context"], cfg["decoder"], cfg["head"]
    lines = [f"DeepLab design point, input {s['input_size'][0]}×{s['input_size'][1]}", ""]
    lines.append(
        f"backbone  {b['name']} ×{b['width']:g}, output stride {b['output_stride']} (measured {s['output_stride']}, "
        f"features {s['feature_size'][0]}×{s['feature_size'][1]}), multi-grid {tuple(b['multi_grid'])}, "
        f"cascade {b['cascade']}, first unit '{b['first_unit']}'"
        + (f", deformable {b['deformable']}" if b.get("deformable") else "")
        + (f", HDC {', '.join(f'{k} {tuple(v)}' for k, v in b['hdc'].items())}" if b["hdc"] else "")
    )
    lines.append(f"  {'block':<8}{'stride':>7}  {'rates of the 3×3 convs':<40}gridding")
    rates = stage_dilations(s["units"])
    strides = {st["block"]: st["stride"] for st in s["stages"]}
    for block, stage_rates in rates.items():
        holes = s["gridding_holes"].get(block)
        grid = "-" if holes is None else (f"{len(holes)} holes {_short(holes)}" if holes else "no holes")
        if block in s["hdc_rule"]:
            rule = s["hdc_rule"][block]
            failing = [
                g for g, m2, gcd in zip(rule["groups"], rule["m2"], rule["gcd"], strict=True) if m2 > 3 or gcd > 1
            ]
            grid += "; HDC rule ok" if rule["ok"] else f"; HDC rule fails on {_runs(failing[0])}"
        taps = [u["valid_taps"] for u in s["units"] if u["block"] == block and "valid_taps" in u]
        grid += f"; valid taps ≥ {min(taps):.2f}" if taps and max(stage_rates) > 1 else ""
        deformable = [u["deformable"] for u in s["units"] if u["block"] == block and "deformable" in u]
        if deformable:  # its holes and valid taps are those of the rigid grid (zero offsets: at initialisation)
            mark = f"deformable {'/'.join(sorted(set(deformable)))}: {len(deformable)} of {len(stage_rates)} convs"
            grid = mark if grid == "-" else f"{mark}; {grid} (rigid grid)"
        lines.append(f"  {block:<8}{strides[block]:>7}  {_runs(stage_rates):<40}{grid}")
    ctx = s["context"]
    if c["kind"] == "none":
        lines.append("context   none")
    elif c["kind"] == "spp":
        lines.append(
            f"context   spp, bins {tuple(c['bins'])} (max-pooled), {c['channels']} channels, {ctx['branches']} branches"
        )
    elif c["kind"] == "custom":
        args = ", ".join(f"{k}={v!r}" for k, v in ctx["args"].items())
        rates = (
            f"rates {tuple(ctx['stated_rates'])} at OS {ctx['reference_output_stride']} → {tuple(ctx['rates'])} at OS "
            f"{b['output_stride']}"
            if ctx["stated_rates"]
            else "no rates"
        )
        lines.append(
            f"context   custom {ctx['target']}({args}), {rates}, {c['channels']} channels, {ctx['branches']} branches"
            + ("" if ctx["declares_paths"] else "; field of view not declared (no paths()): counted as the backbone's")
        )
    elif c["kind"] == "nonlocal":
        n = s["nonlocal"]
        lines.append(
            f"context   non-local block (embedded Gaussian, Wang et al. 2018) on the {n['in_channels']} features, "
            f"θ/φ/g {n['channels']} channels, W + BN (γ = 0: identity at init), then 1×1 → {c['channels']} channels"
        )
    else:
        name = {"aspp": "ASPP", "largefov": "LargeFOV", "aspp+nonlocal": "ASPP after a non-local block"}[c["kind"]]
        name += f" [{c['preset']}]" if c["preset"] else ""
        if "rate_sets" in ctx:
            rates = (
                f"multi-scale, {len(ctx['rate_sets'])} rate sets {_sets(ctx['stated_rate_sets'])} at OS "
                f"{ctx['reference_output_stride']} → {_sets(ctx['rate_sets'])} at OS {b['output_stride']}, one shared"
            )
        else:
            rates = (
                f"rates {tuple(ctx['stated_rates'])} at OS {ctx['reference_output_stride']} → {tuple(ctx['rates'])} "
                f"at OS {b['output_stride']},"
            )
        lines.append(
            f"context   {name}, {c['topology']}, merge {c['merge']}, {rates} image pooling "
            f"{'on (norm ' + c['pooling_norm'] + ')' if c['image_pooling'] else 'off'}, {_branch_convs(c, ctx)}, "
            f"{c['channels']} channels, {ctx['branches']} branches"
        )
        if s["nonlocal"]:
            n = s["nonlocal"]
            lines.append(
                f"          non-local block first (embedded Gaussian) on the {n['in_channels']} features, θ/φ/g "
                f"{n['channels']} channels, identity at init"
            )
    if s["nonlocal"]:
        n, size = s["nonlocal"], "×".join(map(str, s["input_size"]))
        a, e, t = n["attention"], n["eval"], n["train_batch"]
        lines.append(
            f"          attention (h·w)² per image at {size}: {_attention_text(a)} (OS {b['output_stride']}); at eval "
            f"OS {e['output_stride']}: {_attention_text(e)}; one training batch ({t['batch']} × {t['crop']}² crop): "
            f"{_attention_text(t)}"
        )
    if s["context_geometry"]:
        side = "×".join(map(str, s["context_geometry"][0]["size"]))
        shares = " / ".join(
            f"r{c['rate']} {c['valid_taps']:.2f}"
            + (f" (deformable {c['deformable']}, rigid grid)" if "deformable" in c else "")
            for c in s["context_geometry"]
        )
        lines.append(f"          valid taps of the context's 3×3 convs on the {side} map: {shares}")
    degenerate = degenerate_convs(s)
    if degenerate:
        lines.append(
            f"geometry  only the centre tap is real (rate ≥ map side, a 1×1 conv) for: {', '.join(degenerate)}"
        )
    if s["decoder"]:
        lines.append(
            f"decoder   v3+, low-level {'+'.join(reversed(s['decoder']['levels']))} → {d['low_level_channels']} "
            f"channels, {d['convs']} × [3×3, {d['channels']}]{' separable' if d['separable'] else ''}"
            + "".join(f"; {level} ×{factor} {_upsampling(mode)}" for level, factor, mode in s["decoder"]["upsampling"])
        )
    else:
        lines.append("decoder   off")
    extra = "3×3 conv + BN + ReLU, then " if h["style"] == "torchvision" else ""
    up = s["upsampling"]
    upsampled = f"; logits ×{up['factor']} {_upsampling(up['mode'])} to the input's size"
    if h["style"] == "custom":
        args = ", ".join(f"{k}={v!r}" for k, v in h["args"].items())
        lines.append(f"head      custom {h['target']}({args}) → {h['num_classes']} classes{upsampled}")
    else:
        lines.append(f"head      {extra}1×1 → {h['num_classes']} classes{upsampled}")
    if s.get("msc"):
        m = s["msc"]
        taps = ", ".join(f"{t} /{stride}" for t, stride in zip(m["taps"], m["strides"], strict=True))
        lines.append(
            f"MSc       v1's branches, 3×3 {h['msc_channels']} → 1×1 {h['msc_channels']} → 1×1 {h['num_classes']}, "
            f"logits added to the head's; on {taps} (conv stride to the output stride)"
        )
    rf = s["receptive_field"]
    lines.append(
        f"receptive field  backbone {_px(rf['backbone'])}, with context {_px(rf['context'])}, logits "
        f"{_px(rf['logits'])}" + (" (+ a global branch: every logit sees the whole image)" if rf["global"] else "")
    )
    if "rigid_grid" in rf:
        r = rf["rigid_grid"]
        lines.append(
            f"                 {len(rf['deformable'])} deformable convs move their taps per input; the rigid grid "
            f"(zero offsets, at initialisation): backbone {r['backbone']} px, context {r['context']} px, "
            f"logits {r['logits']} px"
        )
    out_holes = s["gridding_holes"]["output"]
    lines.append(f"output-grid gridding  {f'{len(out_holes)} holes {_short(out_holes)}' if out_holes else 'no holes'}")
    parts = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in s["params_by_part"].items() if v)
    lines.append(f"params    {s['params']:,} ({parts})")
    lines.append(f"MACs      {s['macs'] / 1e9:.2f} G per image at {s['input_size'][0]}×{s['input_size'][1]}")
    e = s["eval"]
    line = f"eval      output stride {e['output_stride']}"
    if e["context_rates"]:
        line += f", context rates {tuple(e['context_rates'])}"
    if "macs" in e:
        line += f", {e['macs'] / 1e9:.2f} G MACs"
    line += f", scales {tuple(e['scales'])}, flip {'on' if e['flip'] else 'off'}"
    lines.append(line)
    return "\n".join(lines)


def _upsampling(mode: str) -> str:
    """``bilinear`` or FCN's learned upsampling, as ``describe`` prints it."""
    if mode == "transposed":
        return "learned (per-channel transposed conv, kernel 2×factor, bilinear init; FCN)"
    return "bilinear"


def _branch_convs(c: dict[str, Any], ctx: dict[str, Any]) -> str:
    """What the 3×3 atrous branches are: separable, grouped, depthwise (groups = channels) or standard; deformable."""
    groups = (ctx.get("groups") or [1])[0]
    if c["separable"]:
        text = "separable 3×3"
    elif groups == c["channels"] and groups > 1:
        text = f"depthwise 3×3 (groups {groups} = channels, no pointwise)"
    elif groups > 1:
        text = f"grouped 3×3 (groups {groups})"
    else:
        text = "standard 3×3"
    if ctx.get("deformable"):
        text += f", deformable {'/'.join(ctx['deformable'])}"
    return text


def _sets(rate_sets: list[list[int]]) -> str:
    return " ".join(str(tuple(rates)) for rates in rate_sets)


def _attention_text(a: dict[str, Any]) -> str:
    """``6×6 map, 1,296 entries, 5.1 KiB``: the attention matrices of a non-local block (fp32)."""
    return f"{a['map'][0]}×{a['map'][1]} map, {a['entries']:,} entries, {_bytes(a['bytes'])} fp32"


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _px(value: int | str) -> str:
    """A receptive field in pixels, or the reason there is no one number (deformable convs)."""
    return f"{value} px" if isinstance(value, int) else str(value)


def _runs(rates: list[int]) -> str:
    """``1 1 1 1 1 2`` → ``1×5 2``: long stages stay on one line."""
    out: list[str] = []
    for rate, group in itertools.groupby(rates):
        n = len(list(group))
        out.append(f"{rate}×{n}" if n > 3 else " ".join([str(rate)] * n))
    return " ".join(out)


def _short(holes: list[int]) -> str:
    positive = [h for h in holes if h > 0]
    shown = " ".join(f"±{h}" for h in positive[:6])
    return f"({shown}{' …' if len(positive) > 6 else ''})"
