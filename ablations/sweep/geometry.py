"""Can a study's crop answer its question? The geometry check of every arm (DeepLab v3 §3.3, Fig. 4).

For each arm, built on the meta device at the study's training crop: every dilated 3×3 conv of the residual
stages and of the context module with the map it reads and its **valid-tap share** (``analysis.valid_taps``).
The arm's **studied convs** are the convs whose rate (or presence) differs from the baseline's — for the
baseline, from any other arm's. A studied conv is **degenerate** when its rate is at least the side of the map it
reads: only the centre tap lands on features, and it is a 1×1 conv.

Two arms are **the same network** at this crop when their ``analysis.network_signature`` is equal, at the
training and at the evaluation output stride: every module and every tap reads the same input, so with the same
weights they compute the same function (multi-grid (1,2,3) and (1,2,4) at 96², whose rates 6 and 8 on a 6×6 map
are both 1×1 convs). A difference between such arms measures noise, not the studied choice. A study whose arms
are all the same network cannot be answered at this crop; one where some are, only partly.

Deformable convs (``backbone.deformable``, Dai et al. 2017) are studied convs wherever the arms differ in them, at
any rate. Their valid-tap share and ``degenerate`` are those of the rigid sampling grid, i.e. of the network at
initialisation (zero offsets); learned offsets move the taps. A tap that starts more than a pixel beyond the map (in
the zero padding) gets no gradient for its offset through the bilinear sampling, so a deformable conv whose rate
exceeds the map's side stays a 1×1 conv in practice (torchvision's deform_conv2d; at rate = side a few edge taps
can move in).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ablations.results.tables import arm_roles
from ablations.sweep.study import Study

ANSWERABLE, PARTLY, CANNOT = "answerable", "partly answerable", "cannot answer"


@dataclass(frozen=True)
class ArmGeometry:
    arm: str
    crop: int
    feature_size: tuple[int, int]
    convs: dict[str, dict[str, Any]]  # module name → conv_geometry entry (dilated convs only)
    studied: tuple[str, ...] = ()
    same_as: str | None = None  # an earlier arm with the same network signature
    caveats: tuple[str, ...] = ()  # why this arm's run cannot measure what its setting means (not the crop)

    @property
    def degenerate(self) -> tuple[str, ...]:
        return tuple(n for n in self.studied if self.convs[n]["degenerate"])

    @property
    def min_valid(self) -> float | None:
        return min((self.convs[n]["valid_taps"] for n in self.studied), default=None)

    def note(self) -> str:
        """One cell of a table: the studied convs' valid taps and what the crop does to them."""
        parts = []
        if self.studied:
            shares = [self.convs[n]["valid_taps"] for n in self.studied]
            rigid = (
                " (rigid grid: deformable convs move their taps)"
                if any("deformable" in self.convs[n] for n in self.studied)
                else ""
            )
            parts.append(f"studied convs' valid taps {min(shares):.2f}–{max(shares):.2f}{rigid}")
            if self.degenerate and len(self.degenerate) == len(self.studied):
                parts.append(f"all {len(self.studied)} degenerate (1×1)")
            elif self.degenerate:
                parts.append(f"{len(self.degenerate)} of {len(self.studied)} degenerate (1×1)")
        if self.same_as is not None:
            parts.append(f"same network as {self.same_as} at {self.crop}²")
        parts.extend(self.caveats)
        return "; ".join(parts) or "no dilated conv differs"

    def degenerate_text(self) -> str:
        return ", ".join(
            f"{conv_label(n)} r{self.convs[n]['dilation']} on {_side(self.convs[n])}" for n in self.degenerate
        )


@dataclass(frozen=True)
class StudyGeometry:
    study: str
    crop: int
    arms: dict[str, ArmGeometry] = field(default_factory=dict)

    @property
    def identical_to(self) -> dict[str, str]:
        return {a: g.same_as for a, g in self.arms.items() if g.same_as is not None}

    @property
    def unmeasurable(self) -> dict[str, str]:
        """Arms whose run cannot measure their setting (a caveat, not the crop): arm → why."""
        return {a: "; ".join(g.caveats) for a, g in self.arms.items() if g.caveats}

    def same_network(self, a: str, b: str) -> bool:
        ga, gb = self.arms[a], self.arms[b]
        return (ga.same_as or a) == (gb.same_as or b)

    @property
    def verdict(self) -> str:
        groups = {g.same_as or a for a, g in self.arms.items()}
        if len(self.arms) > 1 and len(groups) == 1:
            return CANNOT
        if self.identical_to or any(g.degenerate or g.caveats for g in self.arms.values()):
            return PARTLY
        return ANSWERABLE

    def summary(self) -> str:
        """One sentence for a report: can this crop answer the study's question?"""
        if self.verdict == CANNOT:
            return (
                f"this profile cannot answer this question: at {self.crop}² every arm builds the same network "
                "(the convs the arms differ in are 1×1 convs here)"
            )
        notes = []
        for arm, g in self.arms.items():
            if g.same_as is not None:
                notes.append(f"{arm} is the same network as {g.same_as}")
            elif g.degenerate:
                notes.append(f"{arm}: {g.degenerate_text()} see only their centre tap")
            notes.extend(f"{arm}: {c}" for c in g.caveats)
        if not notes:
            return f"answerable at {self.crop}²: every studied conv has more than its centre tap on the map"
        return f"partly answerable at {self.crop}²: " + "; ".join(notes)

    def brief(self) -> str:
        """The same in a table cell: the verdict, which arms are the same network, where studied convs are 1×1."""
        if self.verdict == CANNOT:
            return f"no: every arm is the same network at {self.crop}²"
        if self.verdict == ANSWERABLE:
            return f"yes at {self.crop}²"
        parts = [f"{a} ≡ {g.same_as}" for a, g in self.arms.items() if g.same_as is not None]
        degenerate = [f"{a} ({len(g.degenerate)} of {len(g.studied)})" for a, g in self.arms.items() if g.degenerate]
        text = f"partly at {self.crop}²"
        if parts:
            text += "; same network: " + ", ".join(parts)
        if degenerate:
            text += "; studied convs that are 1×1 here: " + ", ".join(degenerate)
        caveats = [a for a, g in self.arms.items() if g.caveats]
        if caveats:
            text += "; not measurable here: " + ", ".join(caveats)
        return text


def conv_label(name: str) -> str:
    """A conv's module name as tables show it: ``layer4.2.conv2``, ``context branches.1.0``."""
    return name.removeprefix("backbone.").replace("context.", "context ", 1)


def _side(g: dict[str, Any]) -> str:
    return "×".join(map(str, g["size"]))


def _dilated(geometry: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The dilated 3×3 convs, every context 3×3 conv and every deformable conv (at any rate)."""
    return {
        n: g
        for n, g in geometry.items()
        if g["kernel"] == 3 and (g["dilation"] > 1 or n.startswith("context.") or "deformable" in g)
    }


def arm_geometry(config, crop: int, arm: str = "") -> tuple[ArmGeometry, tuple]:
    """The dilated convs of one config at ``crop`` and its signature (training and evaluation geometry). Read off
    the cached meta build (:mod:`ablations.geometry.cache`): each network's figures are computed once per process,
    whichever study, seed or ``describe`` asks."""
    from ablations.geometry import cache
    from ablations.geometry.analysis import network_signature
    from ablations.geometry.describe import cached_conv_geometry, feature_size

    size = (crop, crop)
    convs = _dilated(cached_conv_geometry(config, size))
    features = tuple(feature_size(config, size))
    strides = [config.backbone.output_stride]
    if config.eval_output_stride != config.backbone.output_stride:
        strides.append(config.eval_output_stride)
    signature = [
        cache.read(
            config, "signature",
            lambda model, s=stride: network_signature(model, size, cached_conv_geometry(config, size, s)),
            size=size, output_stride=stride,
        )
        for stride in strides
    ]  # fmt: skip
    rest = config.to_dict()
    for section in ("backbone", "context", "decoder", "head"):
        rest.pop(section, None)
    rest.get("train", {}).pop("seed", None)
    signature.append(repr(sorted(rest.items())))
    return ArmGeometry(arm, crop, features, convs, caveats=caveats(config)), tuple(signature)


def caveats(config) -> tuple[str, ...]:
    """What makes a config's run unable to measure its own setting, whatever the crop."""
    out = []
    if config.train.freeze_bn and config.backbone.weights is None:
        out.append(
            "BatchNorm frozen without pretrained weights: its statistics stay at their initial mean 0 and variance 1, "
            "so the network trains unnormalised (v3 Table 8 freezes ImageNet statistics; set backbone.weights)"
        )
    return tuple(out)


def study_geometry(study: Study, seed: int | None = None) -> StudyGeometry | None:
    """Geometry of every arm of a grid study at its training crop; None for a search study."""
    if not study.is_grid:
        return None
    seed = study.seeds[0] if seed is None else seed
    built: dict[str, tuple[ArmGeometry, tuple]] = {}
    crop = 0
    for arm in study.arm_labels:
        config = study.resolve(arm, seed)
        crop = config.data.crop_size or config.data.image_size
        built[arm] = arm_geometry(config, crop, arm)
    # A conv is studied where the arms differ in it: its rate, its input (serial ASPP), its map, whether it is
    # deformable (and which version), or its presence.
    keys = {
        arm: {
            (n, g["dilation"], g["in_channels"], g["groups"], tuple(g["size"]), g.get("deformable"))
            for n, g in geo.convs.items()
        }
        for arm, (geo, _) in built.items()
    }
    baseline = study.baseline or study.arm_labels[0]
    arms: dict[str, ArmGeometry] = {}
    seen: dict[tuple, str] = {}
    for arm, (geo, signature) in built.items():
        against = [keys[a] for a in keys if a != arm] if arm == baseline else [keys[baseline]]
        studied = {k[0] for k in keys[arm] if any(k not in other for other in against)}
        same = seen.get(signature)
        seen.setdefault(signature, arm)
        arms[arm] = dataclasses.replace(geo, studied=tuple(sorted(studied)), same_as=same)
    return StudyGeometry(study.name, crop, arms)


def startup_warnings(study: Study) -> list[str]:
    """One line per arm whose studied convs are degenerate (or that is the same network as another arm) at the
    study's crop, naming the conv, the map and a profile under which the arm is measurable; [] when none."""
    from ablations.config import profile_names
    from ablations.sweep.study import load_study

    geometry = study_geometry(study)
    if geometry is None:
        return []
    troubled = {a: g for a, g in geometry.arms.items() if g.degenerate or g.same_as is not None or g.caveats}
    if not troubled:
        return []
    answers: dict[str, str] = {}
    for profile in profile_names():
        if profile == study.profile or study.path is None or set(answers) == set(troubled):
            continue
        try:
            other = study_geometry(load_study(study.path, profile=profile, sets=study.sets, seeds=study.seeds))
        except Exception:  # a profile this study cannot run under (e.g. an override it rejects) answers nothing
            continue
        for arm in troubled:
            g = other.arms.get(arm) if other else None
            if arm not in answers and g is not None and not g.degenerate and g.same_as is None and not g.caveats:
                answers[arm] = f"profile {profile} ({other.crop}²) measures it"
    lines = []
    for arm, g in troubled.items():
        what = []
        if g.degenerate:
            what.append(f"{g.degenerate_text()} see{'s' if len(g.degenerate) == 1 else ''} only the centre tap "
                        f"(a 1×1 conv) at {g.crop}²")  # fmt: skip
        if g.same_as is not None:
            what.append(f"it is the same network as {g.same_as} at {g.crop}²")
        what.extend(g.caveats)
        lines.append(f"geometry: arm {arm}: {'; '.join(what)}; {answers.get(arm, 'no installed profile measures it')}")
    return lines


_COMPARED: dict[tuple, tuple[str, ...]] = {}


def compared_arms(study: Any) -> tuple[str, ...]:
    """The arms a study compares with its baseline: all but those its geometry shows to be the baseline's network
    or unable to measure their setting (computed once per process and study)."""
    key = (str(study.path), study.fingerprint())
    if key not in _COMPARED:
        identical, _, unmeasurable = arm_roles(study, study_geometry(study))
        _COMPARED[key] = tuple(a for a in study.arm_labels if a not in identical and a not in unmeasurable)
    return _COMPARED[key]
