"""The experiment config: one small frozen dataclass per part, composed into :class:`ExperimentConfig`.

Keys are the papers' words (``output_stride``, ``multi_grid``, ``image_pooling``, ``low_level_channels``).
Every field carries a one-line ``doc`` (what it is and the paper section; ``field_docs()``). Validation lives
here and only here: a bad value raises :class:`ConfigError` naming the field, the value and what is allowed.
Fields whose default depends on another field (``context.rates`` on ``context.kind`` and ``context.preset``)
default to ``None`` and are resolved in ``__post_init__``, so a resolved config round-trips through
``to_dict``/``from_dict``. Every axis and its semantics: ``docs/design-space.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablations.data import DATASET_NAMES, NUM_CLASSES, SYNTHETIC_SHAPES
from ablations.dilation import LAYOUTS, dilation_plan, scale_rates
from ablations.ioutil import load_yaml, read_text_file, require_extra


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field, the value and what is allowed."""


def _field(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


def _non_finite(value: Any) -> bool:
    """A float (or a tuple holding one) that is inf or nan: no field accepts those."""
    if isinstance(value, tuple | list):
        return any(_non_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` unless ``ok``; a non-finite number (inf, nan) always fails, whatever its
    comparisons happen to say."""
    if not ok or _non_finite(value):
        shown = list(value) if isinstance(value, tuple) else value
        finite = "" if not _non_finite(value) or "finite" in allowed else " (a finite number)"
        raise ConfigError(f"{key}={shown!r}: {allowed}{finite}")


# Every seed reaches ``lightning.seed_everything`` (and through it ``numpy.random.seed``, whose legacy generator takes
# 0 … 2**32 − 1; ``torch.manual_seed`` takes more, ``numpy.random.SeedSequence`` any integer ≥ 0): the range all of
# them accept is the one every seed of a config, a study file and ``--seeds`` allows.
SEED_MAX = 2**32 - 1
SEED_RANGE = f"an integer 0 … {SEED_MAX} (2**32 − 1, the range NumPy and Lightning's seed_everything accept)"
# The net under every integer field (``_build``): torch, NumPy and Lightning hold integers in a C int64; fields
# with a tighter range (seeds) check it themselves, first.
INT_MAX = 2**63 - 1
INT64_RANGE = "a 64-bit integer (−2**63 … 2**63 − 1)"


def is_seed(value: Any) -> bool:
    """An integer (not a bool) that every library's seeding accepts: 0 … 2**32 − 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX


def _choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    _require(value in choices, key, value, f"allowed {choices}")


# --------------------------------------------------------------------------------------------------------------
# Parts

# backbone.deformable: which 3×3 convs of a ResNet sample at learned offsets (Dai et al., ICCV 2017,
# arXiv:1703.06211) and, in v2, with a learned modulation (Zhu et al., CVPR 2019, arXiv:1811.11168).
DEFORMABLE_VERSIONS = ("v1", "v2")
DEFORMABLE_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
DEFORMABLE_FORM = (
    "STAGE[+STAGE…]:VERSION, a stage optionally cut to its last k units as STAGE[-k:], VERSION v1 or v2 "
    "(e.g. layer4:v2, layer3+layer4:v2, layer4[-2:]:v1); null = none"
)
_DEFORMABLE_SELECTION = r"[A-Za-z_]+[0-9]*(?:\[-[0-9]+:\])?"
_DEFORMABLE_SPEC = re.compile(rf"(?P<stages>{_DEFORMABLE_SELECTION}(?:\+{_DEFORMABLE_SELECTION})*):(?P<version>\w+)")
_DEFORMABLE_STAGE = re.compile(r"(?P<stage>[A-Za-z_]+[0-9]*)(?:\[-(?P<last>[0-9]+):\])?")


def parse_deformable(spec: str) -> tuple[dict[str, int | None], str]:
    """``backbone.deformable`` → ``({stage: last k units or None for all}, version)``:
    ``"layer3[-3:]+layer4:v1"`` → ``({"layer3": 3, "layer4": None}, "v1")``. Checks the form only (a
    ``ValueError`` naming what is wrong); :class:`BackboneConfig` checks the stages against the backbone."""
    match = _DEFORMABLE_SPEC.fullmatch(spec.replace(" ", ""))
    if match is None:
        raise ValueError(f"expected {DEFORMABLE_FORM}")
    version = match["version"]
    if version not in DEFORMABLE_VERSIONS:
        raise ValueError(f"version {version!r}: allowed {list(DEFORMABLE_VERSIONS)}")
    stages: dict[str, int | None] = {}
    for selection in match["stages"].split("+"):
        part = _DEFORMABLE_STAGE.fullmatch(selection)
        if part["stage"] in stages:
            raise ValueError(f"stage {part['stage']!r} named twice")
        stages[part["stage"]] = int(part["last"]) if part["last"] is not None else None
    return stages, version


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    name: str = _field(
        "resnet50",
        "encoder: resnet18|resnet34|resnet50|resnet101 (v3 §4), mobilenet_v2 (smp), vgg16|vgg16_bn (v1/v2's VGG-16)",
    )
    width: float = _field(1.0, "channel width multiplier of the encoder; 1.0 is the published network")
    output_stride: int = _field(16, "input size / final feature size, reached with atrous convolution (v3 §3.1)")
    multi_grid: tuple[int, ...] | None = _field(
        None, "unit rates of block4 and each cascaded block, multiplying the block's rate (v3 §3.2); null = all 1"
    )
    cascade: int = _field(0, "extra copies of block4 cascaded as block5..block7, 0..3 (v3 §3.2, Table 2)")
    hdc: dict[str, tuple[int, ...]] = field(
        default_factory=dict,
        metadata={"doc": "absolute per-unit rates per stage, cycled over its units (HDC, Wang et al. WACV 2018 §3.2)"},
    )
    first_unit: str = _field(
        "full", "rate of the conv that gave up its stride: full|previous (torchvision)|half (MMSeg contract)"
    )
    weights: str | None = _field(None, "pretrained encoder weights: null, 'imagenet' (cached hub) or a file path")
    deformable: str | None = _field(
        None,
        "deformable 3×3 convs of a ResNet, at their planned rate: STAGE[+STAGE]:v1|v2, STAGE[-k:] = its last k "
        "units, e.g. layer4:v2, layer3+layer4:v2, layer4[-2:]:v1 (Dai et al. 2017 Table 1; DCNv2); null = none",
    )

    def __post_init__(self) -> None:
        _choice("backbone.name", self.name, LAYOUTS)
        _require(
            isinstance(self.width, float | int) and 0 < self.width <= 4,
            "backbone.width",
            self.width,
            "allowed 0 < w ≤ 4",
        )
        layout = LAYOUTS[self.name]
        if self.multi_grid is None:
            object.__setattr__(self, "multi_grid", (1,) * layout.units[3])
        object.__setattr__(self, "hdc", {k: tuple(v) for k, v in self.hdc.items()})
        try:
            dilation_plan(
                layout,
                output_stride=self.output_stride,
                multi_grid=self.multi_grid,
                cascade=self.cascade,
                hdc=self.hdc,
                first_unit=self.first_unit,
            )
        except ValueError as error:
            raise ConfigError(f"backbone.{error}") from None
        if self.hdc and any(m != 1 for m in self.multi_grid):
            clash = [s for s in self.hdc if s == "layer4" or s.startswith("block")]
            _require(
                not clash,
                "backbone.multi_grid",
                self.multi_grid,
                f"cannot be combined with hdc on {clash} (HDC gives those units absolute rates); set it to all 1",
            )
        if self.weights is not None:
            _require(self.width == 1.0, "backbone.weights", self.weights, "pretrained weights need backbone.width=1.0")
        if self.deformable is not None and self.deformable.strip().lower() in ("", "none", "null"):
            object.__setattr__(self, "deformable", None)
        if self.deformable is not None:
            self._check_deformable()

    def _check_deformable(self) -> None:
        key, spec = "backbone.deformable", self.deformable
        _require(
            self.name in DEFORMABLE_BACKBONES,
            key,
            spec,
            f"deformable convs replace the 3×3 convs of a ResNet's residual units ({'|'.join(DEFORMABLE_BACKBONES)}); "
            f"not supported for backbone.name={self.name!r} (VGG-16's plain convs, MobileNetV2's depthwise ones)",
        )
        try:
            stages, _ = parse_deformable(spec)
        except ValueError as error:
            raise ConfigError(f"{key}={spec!r}: {error}") from None
        names = list(self.layout.stage_names(self.cascade))
        for stage, last in stages.items():
            cascaded = stage in ("block5", "block6", "block7")
            _require(
                stage in names,
                key,
                spec,
                f"stage {stage!r}: allowed {names}"
                + (f" ({stage} needs backbone.cascade ≥ {int(stage[-1]) - 4})" if cascaded else "")
                + ("" if cascaded else "; the cascaded blocks are block5..block7 (backbone.cascade)"),
            )
            units = self.layout.stage_units(stage)
            _require(
                last is None or 1 <= last <= units,
                key,
                spec,
                f"{stage}[-{last}:]: {stage} has {units} units, so k is 1..{units}",
            )

    @property
    def deformable_stages(self) -> tuple[dict[str, int | None], str] | None:
        """``backbone.deformable`` parsed: ``({stage: last k units or None}, version)``, or None."""
        return parse_deformable(self.deformable) if self.deformable is not None else None

    @property
    def layout(self):
        return LAYOUTS[self.name]


CONTEXT_KINDS = ("aspp", "largefov", "spp", "nonlocal", "aspp+nonlocal", "custom", "none")
# Kinds whose module is a v3 ASPP (aspp+nonlocal: a non-local block, then the ASPP), and kinds with 3×3 atrous
# branches that separable, groups and deformable apply to.
ASPP_KINDS = ("aspp", "aspp+nonlocal")
ATROUS_KINDS = ("aspp", "aspp+nonlocal", "largefov")

# Presets fix what makes ASPP-S, ASPP-L and the v3 module what they are (DeepLab v2 TPAMI Table 3; v3 §3.3).
CONTEXT_PRESETS: dict[str, dict[str, Any]] = {
    "v3": {"rates": (6, 12, 18), "reference_output_stride": 16, "merge": "concat", "image_pooling": True},
    "aspp-s": {"rates": (2, 4, 8, 12), "reference_output_stride": 8, "merge": "sum", "image_pooling": False},
    "aspp-l": {"rates": (6, 12, 18, 24), "reference_output_stride": 8, "merge": "sum", "image_pooling": False},
}
# What each kind means when nothing else is said. LargeFOV is DeepLab v1's fc6: one 3×3 conv at rate 12 on an
# OS-8 map with 1,024 channels, followed by fc7/fc8 — a one-branch v2 ASPP (TPAMI §4.1, Table 1).
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "aspp": dict(CONTEXT_PRESETS["v3"]),
    "largefov": {"rates": (12,), "reference_output_stride": 8, "merge": "sum", "image_pooling": False},
    "spp": {"bins": (4, 2, 1)},
    "nonlocal": {},
    "aspp+nonlocal": dict(CONTEXT_PRESETS["v3"]),
    "custom": {},  # the researcher's module (ablations.model.custom): rates only if given
    "none": {},
}
_KIND_KEYS = {
    "aspp": {"rates", "reference_output_stride", "merge", "image_pooling", "channels"},
    "largefov": {"rates", "reference_output_stride", "merge", "image_pooling", "channels"},
    "spp": {"bins", "channels"},
    "nonlocal": {"channels"},
    "aspp+nonlocal": {"rates", "reference_output_stride", "merge", "image_pooling", "channels"},
    "custom": {"rates", "reference_output_stride", "channels"},
    "none": set(),
}
# context.target / head.target: "package.module:ClassName" (ablations.model.custom resolves and checks it).
CUSTOM_TARGET = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _check_target(section: str, custom: bool, selector: str, target: str | None, args: Mapping[str, Any]) -> None:
    """``<section>.target`` and ``<section>.args``: required (target) under ``selector``, refused otherwise. The
    import, the class and its construction are checked with the whole config (:class:`ExperimentConfig`)."""
    if not custom:
        _require(target is None, f"{section}.target", target, f"used by {selector} only")
        _require(not args, f"{section}.args", args, f"used by {selector} only")
        return
    _require(
        isinstance(target, str) and CUSTOM_TARGET.fullmatch(target.strip()) is not None,
        f"{section}.target",
        target,
        f"{selector} needs your module as 'package.module:ClassName', e.g. examples.my_context:StripPooling",
    )


@dataclass(frozen=True, kw_only=True)
class ContextConfig:
    kind: str = _field(
        "aspp",
        "module after the backbone: aspp (v2/v3) | largefov (v1) | spp (SPP-net) | nonlocal (Wang et al. 2018) | "
        "aspp+nonlocal (the block, then v3's ASPP) | custom (your module, context.target) | none",
    )
    preset: str | None = _field(None, "aspp rates preset: v3 (6,12,18)@OS16 | aspp-s (2,4,8,12)@OS8 | aspp-l (v2 T3)")
    rates: tuple[int, ...] | None = _field(
        None, "atrous rates of the 3×3 branches at reference_output_stride (v3 §3.3)"
    )
    reference_output_stride: int | None = _field(
        None, "output stride the rates are stated at; they scale with the actual one (v3 §3.3, TF #6257)"
    )
    image_pooling: bool | None = _field(None, "global-average-pooling branch (image-level features, v3 §3.3)")
    pooling_norm: str = _field(
        "none", "norm in pooled branches: none (safe at batch 1, detectron2) | batch (TF, torchvision) | group"
    )
    topology: str = _field("parallel", "parallel branches (ASPP) or serial: each atrous conv feeds the next")
    separable: bool = _field(False, "depthwise-separable 3×3 atrous branches (v3+ §3.2)")
    merge: str | None = _field(None, "concat: v3 concat + 1×1 projection | sum: v2 sum of per-branch logits")
    channels: int | None = _field(None, "branch width: 256 (v3) for concat/spp, 1024 (v2 fc6/fc7) for sum")
    dropout: float = _field(0.1, "dropout after the projection / in v2 branches (TF keep 0.9; torchvision 0.5)")
    bins: tuple[int, ...] | None = _field(None, "SPP pyramid levels n×n (SPP-net Fig. 3: 4×4, 2×2, 1×1 = 21 bins)")
    kernel_size: int = _field(3, "fc6 kernel of the v2 heads (largefov, merge=sum): 3, or 4 / 7 as in v2 Table 1")
    groups: int | str = _field(
        1,
        "groups of the 3×3 atrous branch convs: 1 standard | k grouped | depthwise = context.channels groups, no "
        "pointwise (the notes' GDASPP); must divide the branch's inputs and context.channels",
    )
    deformable: str | None = _field(
        None, "3×3 atrous branches as deformable convs at their rate: v1 (Dai et al. 2017) | v2 (DCNv2); null = rigid"
    )
    rate_sets: tuple[tuple[int, ...], ...] | None = _field(
        None,
        "multi-scale ASPP: one ASPP (1×1 + a 3×3 per rate) per set at reference_output_stride, one shared image "
        "pooling and one 1×1 projection (the notes' MultiScaleASPP), e.g. [[1,1,1],[6,12,18],[1,6,12]]; replaces rates",
    )
    nonlocal_channels: int | None = _field(
        None, "width of the non-local block's θ/φ/g 1×1 convs (Wang et al. 2018 §3.3); null = half its input's"
    )
    target: str | None = _field(
        None, "context.kind=custom: your module as 'package.module:ClassName' (docs/custom-modules.md)"
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"doc": "context.kind=custom: extra keyword arguments of its constructor (a mapping)"},
    )

    def __post_init__(self) -> None:
        _choice("context.kind", self.kind, CONTEXT_KINDS)
        if self.preset is not None:
            _choice("context.preset", self.preset, CONTEXT_PRESETS)
            _require(
                self.kind in ASPP_KINDS,
                "context.preset",
                self.preset,
                f"presets apply to context.kind={' or '.join(ASPP_KINDS)} only",
            )
        defaults = dict(_KIND_DEFAULTS[self.kind])
        defaults.update(CONTEXT_PRESETS.get(self.preset, {}))
        if self.rate_sets is not None:
            self._check_rate_sets()
            defaults.pop("rates", None)
        for key, value in defaults.items():
            given = getattr(self, key)
            if given is None:
                object.__setattr__(self, key, value)
            elif self.preset is not None and key in CONTEXT_PRESETS[self.preset] and given != value:
                raise ConfigError(
                    f"context.{key}={_show(given)!r} contradicts context.preset={self.preset!r}, which sets "
                    f"{key}={_show(value)!r}; drop one of the two"
                )
        if self.channels is None and self.kind != "none":
            object.__setattr__(self, "channels", 1024 if self.merge == "sum" else 256)
        # channels may stay set under kind=none (unused there), so that a CPU profile can narrow every module.
        for key in ("rates", "reference_output_stride", "merge", "image_pooling", "bins"):
            if key not in _KIND_KEYS[self.kind]:
                _require(getattr(self, key) is None, f"context.{key}", getattr(self, key), f"not used by {self.kind}")
        if self.rates is not None:
            _require(
                len(self.rates) > 0 and all(r >= 1 for r in self.rates),
                "context.rates",
                self.rates,
                "one or more integer rates ≥ 1",
            )
            _require(
                self.reference_output_stride in (8, 16, 32, 64, 128, 256),
                "context.reference_output_stride",
                self.reference_output_stride,
                "allowed [8, 16, 32, 64, 128, 256]",
            )
        if self.rate_sets is not None:
            _require(
                self.reference_output_stride in (8, 16, 32, 64, 128, 256),
                "context.reference_output_stride",
                self.reference_output_stride,
                "allowed [8, 16, 32, 64, 128, 256]",
            )
        if self.kind == "largefov":
            _require(len(self.rates) == 1, "context.rates", self.rates, "LargeFOV has exactly one rate")
        if self.merge is not None:
            _choice("context.merge", self.merge, ("concat", "sum"))
        _choice("context.pooling_norm", self.pooling_norm, ("none", "batch", "group"))
        _choice("context.topology", self.topology, ("parallel", "serial"))
        if self.topology == "serial":
            _require(self.kind in ASPP_KINDS, "context.topology", self.topology, "serial applies to context.kind=aspp")
        if self.separable:
            _require(self.kind in ATROUS_KINDS, "context.separable", True, "needs atrous branches")
        if self.channels is not None:
            _require(self.channels >= 1, "context.channels", self.channels, "an integer ≥ 1")
        _require(0 <= self.dropout < 1, "context.dropout", self.dropout, "allowed 0 ≤ p < 1")
        if self.bins is not None:
            _require(len(self.bins) > 0 and all(b >= 1 for b in self.bins), "context.bins", self.bins, "integers ≥ 1")
        _require(
            isinstance(self.kernel_size, int)
            and not isinstance(self.kernel_size, bool)
            and 1 <= self.kernel_size <= 15,
            "context.kernel_size",
            self.kernel_size,
            "an integer 1..15",
        )
        if self.kernel_size != 3:
            _require(
                self.kind == "largefov" or self.merge == "sum",
                "context.kernel_size",
                self.kernel_size,
                "applies to the v2 heads (context.kind=largefov, or aspp with merge=sum); the others are 3×3",
            )
            _require(not self.separable, "context.kernel_size", self.kernel_size, "separable branches are 3×3")
        self._check_variants()
        _check_target("context", self.kind == "custom", "context.kind=custom", self.target, self.args)

    def _check_rate_sets(self) -> None:
        """Multi-scale ASPP's form, before the kind's defaults apply (which would give it rates)."""
        key, shown = "context.rate_sets", [list(s) for s in self.rate_sets]
        _require(self.kind in ASPP_KINDS, key, shown, f"a multi-scale ASPP: needs context.kind={'|'.join(ASPP_KINDS)}")
        _require(
            self.rates is None,
            key,
            shown,
            f"replaces context.rates={_show(self.rates)!r} (one ASPP per set); give one of the two",
        )
        _require(
            self.preset is None,
            key,
            shown,
            f"replaces the rates of context.preset={self.preset!r}; set context.preset=null (the v3 defaults apply)",
        )
        _require(
            len(self.rate_sets) > 0 and all(len(rates) > 0 for rates in self.rate_sets),
            key,
            shown,
            "one or more non-empty sets of rates, e.g. [[6, 12, 18], [1, 6, 12]] (sets may differ in length)",
        )
        _require(
            all(r >= 1 for rates in self.rate_sets for r in rates) and not _non_finite(self.rate_sets),
            key,
            shown,
            "integer rates ≥ 1",
        )
        _require(
            len(set(self.rate_sets)) == len(self.rate_sets),
            key,
            shown,
            "distinct sets (a repeated set is the same ASPP twice)",
        )

    def _check_variants(self) -> None:
        """groups, deformable, rate_sets' merge and the non-local block (issue 19)."""
        if self.rate_sets is not None:
            _require(
                self.merge == "concat",
                "context.rate_sets",
                [list(s) for s in self.rate_sets],
                f"a multi-scale ASPP concatenates and projects its branches: needs context.merge=concat, not "
                f"{self.merge!r}",
            )
        groups = self.groups
        _require(
            groups == "depthwise" or (isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1),
            "context.groups",
            groups,
            "an integer ≥ 1 or depthwise (= context.channels groups)",
        )
        if groups != 1:
            _require(
                self.kind in ATROUS_KINDS,
                "context.groups",
                groups,
                f"groups the 3×3 atrous branches: needs context.kind={'|'.join(ATROUS_KINDS)}",
            )
            _require(
                not self.separable,
                "context.groups",
                groups,
                "with context.separable=true the branches are depthwise + pointwise already; use one of the two",
            )
            divisors = [d for d in range(1, self.channels + 1) if self.channels % d == 0]
            _require(
                self.resolved_groups in divisors,
                "context.groups",
                groups,
                f"must divide context.channels={self.channels}: allowed divisors {divisors} (or depthwise)",
            )
        if self.deformable is not None:
            _choice("context.deformable", self.deformable, (None, "v1", "v2"))
            _require(
                self.kind in ATROUS_KINDS,
                "context.deformable",
                self.deformable,
                f"makes the 3×3 atrous branches deformable: needs context.kind={'|'.join(ATROUS_KINDS)}",
            )
            _require(
                not self.separable and groups == 1,
                "context.deformable",
                self.deformable,
                "deformable branches are full 3×3 convs: needs context.separable=false and context.groups=1",
            )
        if self.nonlocal_channels is not None:
            _require(
                self.kind in ("nonlocal", "aspp+nonlocal"),
                "context.nonlocal_channels",
                self.nonlocal_channels,
                "not used without a non-local block (context.kind=nonlocal|aspp+nonlocal)",
            )
            _require(self.nonlocal_channels >= 1, "context.nonlocal_channels", self.nonlocal_channels, "an integer ≥ 1")
        if self.kind == "aspp+nonlocal":
            _require(
                self.merge == "concat",
                "context.merge",
                self.merge,
                "context.kind=aspp+nonlocal puts the block before v3's ASPP: needs context.merge=concat",
            )

    @property
    def resolved_groups(self) -> int:
        """``groups`` as a number: ``depthwise`` is ``channels`` groups (one output channel per group)."""
        return self.channels if self.groups == "depthwise" else self.groups

    @property
    def stated_rates(self) -> tuple[int, ...]:
        """Every 3×3 branch's rate at ``reference_output_stride``, in build order: ``rates``, or the rate sets one
        after another (what the model re-scales at another output stride)."""
        if self.rate_sets is not None:
            return tuple(r for rates in self.rate_sets for r in rates)
        return tuple(self.rates or ())


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    enabled: bool = _field(False, "DeepLabv3+ decoder: refine encoder features with low-level ones (v3+ §3.1)")
    low_level_channels: int = _field(48, "1×1 projection width of the low-level features (v3+ Table 1: 48 best)")
    convs: int = _field(2, "number of [3×3, channels] convs after the concatenation (v3+ Table 2: 2 best)")
    channels: int = _field(256, "width of those 3×3 convs (v3+ Table 2: 256)")
    low_level: str = _field("conv2", "low-level features: conv2 (stride 4) | conv2+conv3 (U-Net-like, v3+ Table 2)")
    separable: bool = _field(False, "depthwise-separable 3×3 decoder convs (v3+ §3.2), independent of ASPP's")
    upsample: str = _field(
        "bilinear", "encoder features to the low-level size: bilinear (v3+) | transposed (FCN's learned, bilinear init)"
    )

    def __post_init__(self) -> None:
        _choice("decoder.upsample", self.upsample, ("bilinear", "transposed"))
        _require(self.low_level_channels >= 1, "decoder.low_level_channels", self.low_level_channels, "an integer ≥ 1")
        _require(self.convs >= 1, "decoder.convs", self.convs, "an integer ≥ 1")
        _require(self.channels >= 1, "decoder.channels", self.channels, "an integer ≥ 1")
        _choice("decoder.low_level", self.low_level, ("conv2", "conv2+conv3"))


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    num_classes: int | None = _field(None, "classes predicted; null = the dataset's (VOC 21, Cityscapes 19, ADE 150)")
    style: str = _field(
        "deeplab",
        "deeplab: a 1×1 classifier (papers) | torchvision: 3×3 conv + BN + ReLU first (DeepLabHead) | custom: "
        "your module (head.target)",
    )
    upsample: str = _field(
        "bilinear",
        "logits to the input's size: bilinear (DeepLab, v3 Table 8) | transposed (FCN's learned deconvolution, "
        "kernel 2s, stride s, bilinear init; Long et al. 2015 §3.3)",
    )
    target: str | None = _field(None, "head.style=custom: your classifier as 'package.module:ClassName'")
    args: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "head.style=custom: extra keyword arguments of its constructor"}
    )
    msc: bool = _field(False, "v1's MSc: MLP branches on the input and pool1-pool4 added to the logits (vgg16 only)")
    msc_channels: int = _field(128, "width of each MSc branch's two layers (v1 §4: 128)")

    def __post_init__(self) -> None:
        if self.num_classes is not None:
            _require(self.num_classes >= 1, "head.num_classes", self.num_classes, "an integer ≥ 1")
        _require(self.msc_channels >= 1, "head.msc_channels", self.msc_channels, "an integer ≥ 1")
        _choice("head.style", self.style, ("deeplab", "torchvision", "custom"))
        _choice("head.upsample", self.upsample, ("bilinear", "transposed"))
        _check_target("head", self.style == "custom", "head.style=custom", self.target, self.args)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    output_stride: int | None = _field(None, "output stride at evaluation, rates rescaled (v3 Table 10); null = train")
    scales: tuple[float, ...] = _field((1.0,), "inference scales, softmax averaged (v3 §4.3: 0.5 … 1.75)")
    flip: bool = _field(False, "also average the left-right flipped prediction (v3 Table 4)")
    fusion: str = _field("mean", "how scales and flips combine: mean of the softmax (v3) | max (v2's MSC fusion)")
    # The fully connected CRF (v1 §4, v2 §3.2) on the fused softmax at the input's resolution with the image's RGB.
    # Defaults: v2's fixed smoothness kernel (w2 = 3, σγ = 3) and, for the cross-validated appearance kernel, the
    # values of v2's VGG-16 release (w1 = 4, σα = 65, σβ = 3; inside the paper's search ranges w1 3-6, σα 30-100,
    # σβ 3-6). Needs the optional extra `crf` (ablations.training.crf).
    crf: bool = _field(False, "fully connected CRF after the network (v1/v2); val/before_crf/* = the metrics without")
    crf_iterations: int = _field(10, "CRF: mean-field iterations (v1/v2: 10)")
    crf_appearance_weight: float = _field(4.0, "CRF: weight w1 of the appearance (bilateral: position + RGB) kernel")
    crf_appearance_xy: float = _field(65.0, "CRF: σα, the appearance kernel's spatial width in input pixels")
    crf_appearance_rgb: float = _field(3.0, "CRF: σβ, the appearance kernel's colour width in RGB units (0-255)")
    crf_smoothness_weight: float = _field(3.0, "CRF: weight w2 of the smoothness (position-only) kernel (v2: 3)")
    crf_smoothness_xy: float = _field(3.0, "CRF: σγ, the smoothness kernel's width in input pixels (v2: 3)")
    crf_processes: int | None = _field(
        None, "CRF: processes, an image per core (it runs on the CPU); null = data.num_workers, the run's CPU share"
    )

    def __post_init__(self) -> None:
        _choice("eval.fusion", self.fusion, ("mean", "max"))
        _require(
            isinstance(self.crf_iterations, int) and 1 <= self.crf_iterations <= 100,
            "eval.crf_iterations",
            self.crf_iterations,
            "an integer 1-100 (v2: 10)",
        )
        for key in ("crf_appearance_weight", "crf_smoothness_weight"):
            value = getattr(self, key)
            _require(0 <= value <= 100, f"eval.{key}", value, "a weight 0-100 (0 drops the kernel)")
        for key in ("crf_appearance_xy", "crf_appearance_rgb", "crf_smoothness_xy"):
            value = getattr(self, key)
            _require(0 < value <= 10000, f"eval.{key}", value, "a width > 0 and ≤ 10000")
        _require(
            self.crf_processes is None or (isinstance(self.crf_processes, int) and 1 <= self.crf_processes <= 256),
            "eval.crf_processes",
            self.crf_processes,
            "null (data.num_workers) or an integer 1-256",
        )
        if self.crf:
            _require(
                self.crf_appearance_weight > 0 or self.crf_smoothness_weight > 0,
                "eval.crf_appearance_weight",
                self.crf_appearance_weight,
                "> 0 where eval.crf_smoothness_weight is 0 too (a CRF without a kernel does nothing)",
            )
            require_extra("eval.crf=True", "pydensecrf.densecrf", "crf", "pydensecrf2", ConfigError)
        _require(
            len(self.scales) > 0 and all(s > 0 and math.isfinite(s) for s in self.scales),
            "eval.scales",
            self.scales,
            "one or more positive scales",
        )


RENDER_MODES = ("auto", "device", "cpu")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    name: str = _field("synthetic", "dataset: synthetic (embedded, no files) | voc | cityscapes | ade20k | folder")
    root: str | None = _field(None, "dataset folder on disk (required for every dataset but synthetic)")
    train_split: str = _field("train", "training split; voc also 'trainaug' (SBD-augmented list, v3 §4.1)")
    val_split: str = _field("val", "evaluation split")
    image_size: int = _field(128, "synthetic: side of the generated images in pixels")
    train_samples: int = _field(2000, "synthetic: number of training images")
    val_samples: int = _field(200, "synthetic: number of validation images")
    seed: int = _field(0, "synthetic: seed of the generated benchmark (the data, not the training run)")
    max_objects: int = _field(8, "synthetic: at most this many shapes per image")
    max_distractors: int = _field(6, "synthetic: at most this many background clutter fragments per image")
    background_contrast: float = _field(1.0, "synthetic: texture contrast of the background (1 = as objects)")
    foreground_cue: float = _field(0.0, "synthetic: 0-1, how much brighter clutter and objects are than background")
    shapes: tuple[str, ...] | None = _field(None, "synthetic: shape classes in use, e.g. disk,cross,bar; null = all 7")
    class_by: str = _field("shape", "synthetic: what an object's label says, its shape or its size bucket (s/m/l)")
    crop_size: int = _field(513, "training crop side, padded with ignore where the image is smaller (v3 §4: 513)")
    scale_min: float = _field(0.5, "random scale lower bound (v3 §4: 0.5)")
    scale_max: float = _field(2.0, "random scale upper bound (v3 §4: 2.0)")
    flip: bool = _field(True, "random left-right flip in training (v3 §4)")
    batch_size: int = _field(16, "training images per step (v3 Table 9: 16)")
    val_batch_size: int | None = _field(None, "evaluation batch; null = batch_size for synthetic, 1 for real images")
    num_workers: int = _field(2, "data-loading worker processes")
    render: str = _field(
        "auto",
        "synthetic: where the benchmark is drawn and augmented: device (the training device, in torch, a batch at "
        "once) | cpu (NumPy on the loader workers) | auto (device on a CUDA GPU, cpu otherwise: on a CPU NumPy is as "
        "fast at 96² and faster at 513², benchmarks/render_speed.py); how a run executes, not what it trains",
    )
    check: str = _field("full", "dataset checks before training: full (decode every image and mask) | headers | none")

    def __post_init__(self) -> None:
        _choice("data.name", self.name, DATASET_NAMES)
        _require(is_seed(self.seed), "data.seed", self.seed, SEED_RANGE)
        for key in ("image_size", "train_samples", "val_samples", "crop_size", "batch_size"):
            _require(getattr(self, key) >= 1, f"data.{key}", getattr(self, key), "an integer ≥ 1")
        _require(self.image_size >= 16, "data.image_size", self.image_size, "at least 16 pixels")
        _require(self.max_objects >= 1, "data.max_objects", self.max_objects, "an integer ≥ 1")
        _require(self.max_distractors >= 0, "data.max_distractors", self.max_distractors, "an integer ≥ 0")
        _require(0 <= self.background_contrast <= 1, "data.background_contrast", self.background_contrast, "0 ≤ c ≤ 1")
        _require(0 <= self.foreground_cue <= 1, "data.foreground_cue", self.foreground_cue, "0 ≤ c ≤ 1")
        _require(0 < self.scale_max <= 16, "data.scale_max", self.scale_max, "0 < scale_max ≤ 16")
        _require(0 < self.scale_min <= self.scale_max, "data.scale_min", self.scale_min, "0 < scale_min ≤ scale_max")
        if self.val_batch_size is not None:
            _require(self.val_batch_size >= 1, "data.val_batch_size", self.val_batch_size, "an integer ≥ 1")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer ≥ 0")
        _choice("data.render", self.render, RENDER_MODES)
        _require(
            self.render != "device" or self.name == "synthetic",
            "data.render",
            self.render,
            f"auto or cpu for data.name={self.name!r} (only the synthetic benchmark is rendered on the device)",
        )
        _choice("data.check", self.check, ("full", "headers", "none"))
        _choice("data.class_by", self.class_by, ("shape", "size"))
        if self.shapes is not None:
            _require(
                len(self.shapes) > 0
                and len(set(self.shapes)) == len(self.shapes)
                and set(self.shapes) <= set(SYNTHETIC_SHAPES),
                "data.shapes",
                self.shapes,
                f"distinct names from {list(SYNTHETIC_SHAPES)}",
            )


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = _field(0, "seed of initialisation, sampling and augmentation; same seed + config → same mIoU")
    max_steps: int = _field(30000, "training iterations (v3 §4: 30K)")
    lr: float = _field(0.007, "initial learning rate (v3 §4: 0.007)")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(1e-4, "L2 weight decay")
    poly_power: float = _field(0.9, "poly schedule lr·(1 − step/max_steps)^power, stepped every iteration (v2 §4)")
    warmup_steps: int = _field(0, "linear warm-up iterations before the poly schedule (detectron2 WarmupPolyLR)")
    lr_policy: str = _field(
        "poly", "learning-rate policy: poly (v2 §4.1, every iteration) | step (×lr_gamma every lr_step)"
    )
    lr_step: float | None = _field(
        None, "step policy: iterations between drops (v1/v2 §4.1: 2,000), or a fraction 0..1 of max_steps (1/3 = v2's)"
    )
    lr_gamma: float = _field(0.1, "factor of each drop of the step policy (v1/v2: 0.1)")
    loss_at: str = _field(
        "logits", "where the loss is taken: logits (upsampled to the labels, v3) | labels (labels subsampled, v2)"
    )
    freeze_bn: bool = _field(False, "freeze BatchNorm: running statistics and affine parameters fixed (v3 Table 8)")
    msc_scales: tuple[float, ...] = _field(
        (1.0,), "multi-scale input training (v2 MSC: 0.5, 0.75, 1): a loss on each scale's map and on their max"
    )
    bn_momentum: float = _field(0.0003, "BatchNorm momentum, PyTorch convention (TF decay 0.9997 = 0.0003, v3 §4)")
    hard_pixel_fraction: float = _field(1.0, "keep the hardest fraction of pixels in the loss; 1.0 = plain CE")
    val_every: int | None = _field(None, "validate every N steps (must divide max_steps); null = once at the end")
    checkpoints: int = _field(1, "best checkpoints kept, ranked by val/mIoU")
    checkpoint_every: int = _field(
        1000, "save checkpoints/last.ckpt every N steps, from which a killed run resumes; 0 = never"
    )
    log_every: int = _field(10, "log loss and learning rate every N steps")
    threads: int | None = _field(
        1,
        "CPU threads of the run's intra-op pool (torch.set_num_threads), fixed so that a re-run on the same machine "
        "takes the same floating-point path and reproduces the trial bit for bit (the thread count changes the "
        "summation order); recorded with every trial; null = the process's own (OMP_NUM_THREADS or the cores)",
    )
    onednn: bool = _field(
        True,
        "CPU convolutions through oneDNN (torch.backends.mkldnn, PyTorch's default); false = PyTorch's native "
        "kernels: the same function on another floating-point path (the noise_floor study's A/A arm)",
    )
    accelerator: str = _field("auto", "Lightning accelerator: auto | cpu | gpu")
    devices: int = _field(1, "devices per trial (DDP through Lightning when > 1)")
    precision: str = _field(
        "auto", "Lightning precision: auto (bf16-mixed on a GPU that has bf16, else 32-true) | 32-true | bf16-mixed | …"
    )
    channels_last: bool | None = _field(None, "channels-last layout for model and images; null = on with a GPU")
    compile: bool = _field(False, "torch.compile the network (compiles in the first steps; recompiles per eval OS)")
    cudnn_benchmark: bool | None = _field(
        None,
        "cuDNN autotuning of conv algorithms; null = on with a GPU unless train.deterministic=true (GPU runs are "
        "then not bit-reproducible)",
    )
    deterministic: bool | None = _field(
        None,
        "deterministic algorithms (torch.use_deterministic_algorithms, warning where an op has none); null = on "
        "unless cuDNN autotuning is (on a CPU: on; on a GPU: off by default); true refuses cudnn_benchmark=true",
    )

    def __post_init__(self) -> None:
        if self.deterministic is True and self.cudnn_benchmark is True:
            raise ConfigError(
                "train.deterministic=true with train.cudnn_benchmark=true: autotuning picks non-deterministic "
                "cuDNN algorithms; set one of them false (or cudnn_benchmark null)"
            )
        _require(is_seed(self.seed), "train.seed", self.seed, SEED_RANGE)
        _require(self.max_steps >= 1, "train.max_steps", self.max_steps, "an integer ≥ 1")
        _require(0 < self.lr <= 100, "train.lr", self.lr, "0 < lr ≤ 100")
        _require(0 <= self.momentum < 1, "train.momentum", self.momentum, "0 ≤ momentum < 1")
        _require(0 <= self.weight_decay <= 1, "train.weight_decay", self.weight_decay, "0 ≤ weight_decay ≤ 1")
        _require(0 <= self.poly_power <= 100, "train.poly_power", self.poly_power, "0 ≤ power ≤ 100")
        _require(0 <= self.warmup_steps < self.max_steps, "train.warmup_steps", self.warmup_steps, "0 ≤ w < max_steps")
        _require(0 < self.bn_momentum <= 1, "train.bn_momentum", self.bn_momentum, "0 < m ≤ 1")
        _choice("train.lr_policy", self.lr_policy, ("poly", "step"))
        if self.lr_policy == "step":
            number = isinstance(self.lr_step, int | float) and not isinstance(self.lr_step, bool)
            whole = number and self.lr_step >= 1 and float(self.lr_step).is_integer()
            fraction = number and 0 < self.lr_step < 1
            _require(
                (whole and 1 <= self.lr_step <= self.max_steps) or (fraction and self.resolved_lr_step >= 1),
                "train.lr_step",
                self.lr_step,
                f"the step policy needs iterations 1..train.max_steps={self.max_steps} or a fraction 0 < f < 1 of "
                "them (at least one iteration)",
            )
            _require(0 < self.lr_gamma < 1, "train.lr_gamma", self.lr_gamma, "0 < gamma < 1")
        else:
            _require(self.lr_step is None, "train.lr_step", self.lr_step, "used by train.lr_policy=step only")
        _choice("train.loss_at", self.loss_at, ("logits", "labels"))
        _require(
            len(self.msc_scales) > 0
            and 1.0 in self.msc_scales
            and len(set(self.msc_scales)) == len(self.msc_scales)
            and all(0 < s <= 4 and math.isfinite(s) for s in self.msc_scales),
            "train.msc_scales",
            self.msc_scales,
            "distinct scales in (0, 4] that include 1 (the map the others are fused onto), e.g. [0.5, 0.75, 1]",
        )
        _require(0 < self.hard_pixel_fraction <= 1, "train.hard_pixel_fraction", self.hard_pixel_fraction, "0 < f ≤ 1")
        if self.val_every is not None:
            _require(
                self.val_every >= 1 and self.max_steps % self.val_every == 0,
                "train.val_every",
                self.val_every,
                f"a divisor of train.max_steps={self.max_steps}, so that the last step is evaluated",
            )
        _require(self.checkpoints >= 1, "train.checkpoints", self.checkpoints, "an integer ≥ 1")
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every, "an integer ≥ 0")
        _require(self.log_every >= 1, "train.log_every", self.log_every, "an integer ≥ 1")
        _choice("train.accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
        _require(self.devices >= 1, "train.devices", self.devices, "an integer ≥ 1")
        _require(self.threads is None or 1 <= self.threads <= 1024, "train.threads", self.threads, "null or 1 … 1024")
        _choice("train.precision", self.precision, PRECISIONS)

    @property
    def resolved_lr_step(self) -> int | None:
        """The step policy's drop interval in iterations (a fraction of ``max_steps`` rounded to whole ones)."""
        if self.lr_step is None:
            return None
        return round(self.lr_step * self.max_steps) if self.lr_step < 1 else int(self.lr_step)

    def uses_gpu(self) -> bool:
        """Whether runs of this config train on a CUDA GPU (``accelerator`` auto picks one when present)."""
        import torch

        return self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available())

    def resolved_precision(self, gpu: bool) -> str:
        if self.precision != "auto":
            return self.precision
        import torch

        return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"

    def resolved_channels_last(self, gpu: bool) -> bool:
        return gpu if self.channels_last is None else self.channels_last

    def resolved_cudnn_benchmark(self, gpu: bool) -> bool:
        if self.cudnn_benchmark is None:
            return gpu and self.deterministic is not True
        return self.cudnn_benchmark

    def resolved_deterministic(self, gpu: bool) -> bool:
        """Deterministic algorithms: as set, else on unless cuDNN autotuning is on (it only is on a GPU)."""
        if self.deterministic is None:
            return not (gpu and self.resolved_cudnn_benchmark(gpu))
        return self.deterministic


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.head.num_classes is None:
            _require(
                self.data.name in NUM_CLASSES,
                "head.num_classes",
                None,
                f"required with data.name={self.data.name!r} (the folder dataset's class count)",
            )
            classes = NUM_CLASSES[self.data.name]
            if self.data.name == "synthetic" and self.data.shapes is not None:
                classes = 1 + len(self.data.shapes)
            object.__setattr__(self, "head", dataclasses.replace(self.head, num_classes=classes))
        backbone, context = self.backbone, self.context

        allowed = list(backbone.layout.valid_output_strides(backbone.cascade))
        eval_os = self.eval_output_stride
        _require(eval_os in allowed, "eval.output_stride", eval_os, f"allowed {allowed} for this backbone")
        if eval_os != backbone.output_stride and backbone.hdc:
            raise ConfigError(
                f"eval.output_stride={eval_os}: differs from backbone.output_stride={backbone.output_stride}, "
                "which HDC schedules cannot follow (their rates are absolute); use the training output stride"
            )
        if context.rates is not None:
            for key, os_ in (("backbone.output_stride", backbone.output_stride), ("eval.output_stride", eval_os)):
                try:
                    scale_rates(context.rates, context.reference_output_stride, os_)
                except ValueError as error:
                    raise ConfigError(f"context.rates={list(context.rates)} with {key}={os_}: {error}") from None
                k = context.kernel_size
                odd = [r for r in scale_rates(context.rates, context.reference_output_stride, os_) if (k - 1) * r % 2]
                _require(
                    not odd,
                    "context.kernel_size",
                    k,
                    f"a {k}×{k} fc6 at rate(s) {odd} ({key}={os_}) spans an even number of pixels, with no centre; "
                    "use even rates with an even kernel",
                )
        if context.rate_sets is not None:  # each set scales with the output stride exactly like context.rates
            for key, os_ in (("backbone.output_stride", backbone.output_stride), ("eval.output_stride", eval_os)):
                for rates in context.rate_sets:
                    try:
                        scale_rates(rates, context.reference_output_stride, os_)
                    except ValueError as error:
                        shown = [list(r) for r in context.rate_sets]
                        raise ConfigError(f"context.rate_sets={shown} with {key}={os_}: {error}") from None
        if self.head.msc:
            _require(
                backbone.name in ("vgg16", "vgg16_bn"),
                "head.msc",
                True,
                f"v1's MSc branches read VGG-16's pool1-pool4; backbone.name={backbone.name!r} (use vgg16 or vgg16_bn)",
            )
            _require(
                not self.decoder.enabled,
                "head.msc",
                True,
                "the MSc branches join at the output stride, the decoder's output is at stride 4: not both",
            )
        if self.train.loss_at == "labels":
            # Labels subsampled to the logits' grid (every s-th pixel, s = the logits' stride): cell i of a map at
            # stride s is centred on pixel i·s, so a crop of k·s or k·s + 1 pixels (v2's 321, v3's 513) fits it.
            stride = 4 if self.decoder.enabled else backbone.output_stride
            crop = self.data.crop_size or self.data.image_size
            _require(
                crop % stride in (0, 1),
                "data.crop_size",
                crop,
                f"train.loss_at=labels subsamples the labels by the logits' stride {stride}: a multiple of {stride}, "
                f"or one more (e.g. {stride * (crop // stride)} or {stride * (crop // stride) + 1})",
            )
        if context.merge == "sum":
            _require(
                not self.decoder.enabled,
                "decoder.enabled",
                True,
                "the decoder needs features, but context.merge=sum produces logits; use merge=concat",
            )
            _require(
                self.head.style == "deeplab",
                "head.style",
                self.head.style,
                "context.merge=sum produces logits itself; use style=deeplab",
            )
        self._check_upsampling()
        if context.kind == "custom" or self.head.style == "custom":
            self._check_custom_modules()

    def _check_upsampling(self) -> None:
        """head.upsample / decoder.upsample = transposed: FCN's learned upsampling is a conv of one stride."""
        backbone, eval_os, head, decoder = self.backbone, self.eval_output_stride, self.head, self.decoder
        if decoder.upsample == "transposed":
            _require(decoder.enabled, "decoder.upsample", decoder.upsample, "used by decoder.enabled=true only")
        learned = []
        if decoder.upsample == "transposed":
            learned.append(("decoder.upsample", f"from stride {backbone.output_stride} to the low-level features'"))
        if head.upsample == "transposed" and not decoder.enabled:  # with the decoder the logits are at stride 4
            learned.append(("head.upsample", f"×{backbone.output_stride}"))
        for key, factor in learned:
            _require(
                eval_os == backbone.output_stride,
                key,
                "transposed",
                f"a learned transposed conv ({factor}), trained at backbone.output_stride={backbone.output_stride}, "
                f"cannot upsample the eval.output_stride={eval_os} map; evaluate at the training output stride "
                "(eval.output_stride=null) or use bilinear",
            )
        if head.upsample == "transposed":
            _require(
                self.train.loss_at == "logits",
                "head.upsample",
                "transposed",
                "train.loss_at=labels takes the loss before the logits are upsampled, so the learned upsampling "
                "would never train (it would stay bilinear); use train.loss_at=logits or head.upsample=bilinear",
            )

    def _check_custom_modules(self) -> None:
        """context.kind=custom / head.style=custom: import, class, construction and a meta-device forward pass
        (:func:`ablations.model.custom.check_config`; imported here, as config is below the model package)."""
        from ablations.model.custom import CustomModuleError, check_config

        try:
            check_config(self)
        except CustomModuleError as error:
            raise ConfigError(str(error)) from None

    @property
    def eval_output_stride(self) -> int:
        return self.eval.output_stride or self.backbone.output_stride

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        return _build(cls, data, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------------------
# Loading: YAML file + dotted overrides → validated config.


PROFILES_DIR = Path(__file__).parent / "profiles"


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str | tuple[str, Any]] = (),
    *,
    profile: str | None = None,
) -> ExperimentConfig:
    """Defaults ← profile (``quick``, ``paper``) ← YAML file ← overrides in order, then validate. An override is
    a ``"key.path=value"`` string (the value parsed as YAML) or a ``(key.path, value)`` pair of a parsed value.

    >>> load_config(overrides=["backbone.output_stride=8", "backbone.multi_grid=1,2,4"]).backbone.multi_grid
    (1, 2, 4)
    """
    data: dict[str, Any] = {}
    if profile is not None:
        if profile not in profile_names():
            raise ConfigError(f"profile {profile!r}: allowed {profile_names()}")
        data = _read_yaml(PROFILES_DIR / f"{profile}.yaml", "profile file")
    if path is not None:
        _merge(data, _read_yaml(Path(path)))
    for override in overrides:
        if isinstance(override, str):
            apply_override(data, override)
        else:
            set_value(data, *override)
    return ExperimentConfig.from_dict(data)


def _read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from a text file: missing files, folders, binary files, invalid YAML and duplicate keys
    each fail with one line naming the file."""
    text = read_text_file(what, path, ConfigError)
    loaded = load_yaml(text, f"{what} {str(path)!r}", ConfigError)
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {str(path)!r}: must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded or {}


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> None:
    """Deep-merge ``top`` into ``base``: sections merge key by key, values replace."""
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict. Values are YAML scalars; ``1,2,4`` is a list."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r}: expected KEY=VALUE with a dotted key, e.g. backbone.output_stride=8")
    raw = raw.strip()
    text = f"[{raw}]" if "," in raw and not raw.startswith(("[", "{")) else raw
    value = load_yaml(text, f"override {override!r}: the value", ConfigError) if text else None
    set_value(data, key, value, what=f"override {override!r}")


def set_value(data: dict[str, Any], key: str, value: Any, *, what: str | None = None) -> None:
    """Set the dotted ``key`` to an already parsed ``value`` in a nested dict (validation happens on load)."""
    what = what or f"setting {key}={value!r}"
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{what}: expected a dotted key such as backbone.output_stride")
    *parents, leaf = key.split(".")
    node = data
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(parents[: depth + 1])} is not a section")
        node = child
    node[leaf] = value


def _show(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of fields, got {_show(data)!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"{prefix}{key}: unknown key; allowed {list(fields)}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    built = cls(**kwargs)
    for key, value in kwargs.items():  # every field checks its own range; this is the net for one that forgot
        if _non_finite(value):
            raise ConfigError(f"{prefix}{key}={_show(value)!r}: expected a finite number")
        if _beyond_int64(value):
            raise ConfigError(f"{prefix}{key}={_show(value)!r}: {INT64_RANGE}")
    return built


def _beyond_int64(value: Any) -> bool:
    """An integer (or a tuple or mapping holding one) that a C int64 cannot hold (torch, NumPy and Lightning take
    sizes, counts and rates as one: a larger one is an "Overflow when unpacking long" from deep inside them)."""
    if isinstance(value, tuple | list):
        return any(_beyond_int64(v) for v in value)
    if isinstance(value, dict):
        return any(_beyond_int64(v) for v in value.values())
    return isinstance(value, int) and not isinstance(value, bool) and not -INT_MAX - 1 <= value <= INT_MAX


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, strictly (no bool for int, no 8.5 for int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) > 1:  # e.g. int | str (context.groups: 4 or depthwise): the first type that takes it
            for option in options:
                with contextlib.suppress(ConfigError):
                    return _coerce(value, option, key)
            names = {int: "an integer", str: "a string", float: "a number", bool: "true or false"}
            raise ConfigError(f"{key}={_show(value)!r}: expected {' or '.join(names.get(o, str(o)) for o in options)}")
        return _coerce(value, options[0], key)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        if typing.get_origin(args[0]) is tuple and not all(isinstance(v, list | tuple) for v in items):
            # A list of lists (context.rate_sets): a flat list is not read as one-element sets
            raise ConfigError(f"{key}={_show(value)!r}: expected a list of lists, e.g. [[6, 12, 18], [1, 6, 12]]")
        return tuple(_coerce(v, args[0], key) for v in items)
    if origin is dict:
        if value is None:  # `hdc: null` in YAML means no entries
            return {}
        _require(isinstance(value, Mapping), key, value, "expected a mapping")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        _require(isinstance(value, bool), key, value, "expected true or false")
        return value
    if hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, value, "expected an integer")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):  # inf/nan: the field's range check says
            raise ConfigError(f"{key}={_show(value)!r}: expected a number")
        return float(value)
    if hint is str:
        _require(isinstance(value, str), key, value, "expected a string")
        return value
    if hint is Any:  # a custom module's keyword arguments (context.args, head.args): its constructor checks them
        return value
    raise TypeError(f"{key}: unsupported field type {hint!r}")  # a bug in this module, not user input


def field_docs(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, str]:
    """``{"backbone.output_stride": "input size / final feature size, …", …}`` for every leaf field."""
    docs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            docs.update(field_docs(hints[f.name], f"{prefix}{f.name}."))
        else:
            docs[f"{prefix}{f.name}"] = f.metadata.get("doc", "")
    return docs


__all__ = [
    "BackboneConfig",
    "ConfigError",
    "ContextConfig",
    "DataConfig",
    "DecoderConfig",
    "EvalConfig",
    "ExperimentConfig",
    "HeadConfig",
    "TrainConfig",
    "apply_override",
    "field_docs",
    "load_config",
]
