"""Study files (``sweeps/*.yaml``): one ablation as data, validated before anything runs.

A study names a *scientific axis* and its values (the **arms**), the **seeds** every arm is replicated over,
the settings every trial shares (**profile**, optional **base** config, **fixed** overrides), an optional
*nuisance* **search_space** sampled per trial, the **objectives** read from each run's metrics, and optionally
a **pruner**. With an axis the design is the full grid arms × seeds; without one (``joint``) a sampler
(``random``, ``tpe``, ``nsga2``) draws ``budget`` trials from the search space. Every arm's config is resolved
and validated when the study is loaded, so a typo fails with the study file, the arm and the field named, before
the first trial. Every field, with an example file: ``docs/sweeps.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.config import SEED_MAX, SEED_RANGE, ConfigError, ExperimentConfig, is_seed, load_config, profile_names
from ablations.ioutil import load_yaml, read_text_file
from ablations.results import names
from ablations.results.sequential import Design, DesignError, make_design

SAMPLERS = ("grid", "random", "tpe", "nsga2")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving")
DIRECTIONS = ("maximize", "minimize")
STUDY_KEYS = {
    "name",
    "description",
    "profile",
    "base",
    "fixed",
    "axis",
    "seeds",
    "search_space",
    "sampler",
    "objectives",
    "budget",
    "pruner",
    "baseline",
    "min_effect",
    "slurm",  # how --slurm N submits the workers (ablations.sweep.slurm.check_block); not part of the fingerprint
    # A group-sequential design (ablations.results.sequential): which seeds run, not what a trial is; not part of
    # the fingerprint, but stored with the study when it first runs, and a different one is refused.
    "sequential",
}
SEQUENTIAL_KEYS = ("looks", "alpha", "boundary", "futility", "max_seeds")
DEFAULT_MIN_EFFECT = 0.01  # one mIoU point: the smallest difference a report calls better or worse


AUTO = "auto"  # profile: the papers' geometry (faithful) on a machine with a CUDA GPU, the CPU smoke test otherwise


def auto_profile() -> str:
    """``faithful`` when torch sees a CUDA GPU, else ``quick``: what ``profile: auto`` resolves to here."""
    import torch

    return "faithful" if torch.cuda.is_available() else "quick"


# A local worker's share of the loader processes (``--workers N``, ``ablations.sweep.placement``): its trials'
# ``data.num_workers`` is capped at it. An execution detail: outside the fingerprint, and a resume ignores it.
LOADER_WORKERS_ENV = "ABLATIONS_LOADER_WORKERS"


def loader_share(config: ExperimentConfig, environ: Mapping[str, str] | None = None) -> ExperimentConfig:
    """``config`` with ``data.num_workers`` capped at this worker's share (``ABLATIONS_LOADER_WORKERS``), if any."""
    text = (os.environ if environ is None else environ).get(LOADER_WORKERS_ENV, "").strip()
    if not text.isdigit() or int(text) >= config.data.num_workers:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=int(text)))


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, the field, the bad value and what is allowed."""


@dataclass(frozen=True)
class Arm:
    label: str
    overrides: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Param:
    """One sampled dimension: a config key over a numeric range or a list of values, or named arms."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[str, ...] = ()  # labels (categorical)
    arms: Mapping[str, tuple[tuple[str, Any], ...]] = field(default_factory=dict)  # label → overrides

    @property
    def categorical(self) -> bool:
        return bool(self.choices)


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class Study:
    name: str
    path: Path | None
    description: str
    profile: str | None
    base: Path | None
    fixed: tuple[tuple[str, Any], ...]
    axis: str | None
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    search_space: tuple[Param, ...]
    sampler: str
    objectives: tuple[Objective, ...]
    budget: int | None
    pruner: Mapping[str, Any] | None
    sets: tuple[str, ...] = ()  # command-line --set overrides, applied after ``fixed`` and before arms
    requested_profile: str | None = None  # as the file or command line says it ("auto" → ``profile``)
    baseline: str | None = None  # the arm every other arm is compared with (default: the first)
    min_effect: float = DEFAULT_MIN_EFFECT  # smallest |Δ| of the first objective worth calling better or worse
    slurm: Mapping[str, Any] | None = None  # the slurm: block, checked (partition, gpus_per_worker, time, …)
    sequential: Design | None = None  # add seeds in looks until each comparison is resolved (None: the fixed seeds)
    sequential_spec: Mapping[str, Any] | None = None  # the sequential: block as written (the flags merge into it)

    @property
    def is_grid(self) -> bool:
        return self.axis is not None

    @property
    def arm_labels(self) -> tuple[str, ...]:
        return tuple(arm.label for arm in self.arms)

    def grid(self) -> list[tuple[str, int]]:
        """Every (arm, seed) of a grid study, seed-major: one full comparison per seed, in order. A sequential
        study's grid is its first look (the later looks depend on the results: ``board.wanted``)."""
        seeds = self.sequential.seeds[: self.sequential.looks[0]] if self.sequential else self.seeds
        return [(arm.label, seed) for seed in seeds for arm in self.arms]

    @property
    def total(self) -> int:
        """Trials of the fixed grid; for a sequential study, the most its design can run."""
        if not self.is_grid:
            return int(self.budget or 0)
        return len(self.arms) * (self.sequential.max_seeds if self.sequential else len(self.seeds))

    def arm(self, label: str) -> Arm:
        for arm in self.arms:
            if arm.label == label:
                return arm
        raise StudyError(f"{self._where()}: no arm {label!r}; arms are {list(self.arm_labels)}")

    def resolve(self, arm: str | None, seed: int, params: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """The config of one trial: profile ← base ← fixed ← --set ← arm ← sampled params ← seed."""
        overrides: list[str | tuple[str, Any]] = [*self.fixed, *self.sets]
        if arm is not None:
            overrides += self.arm(arm).overrides
        for p in self.search_space:
            if params is None or p.name not in params:
                continue
            value = params[p.name]
            overrides += p.arms[value] if p.arms else [(p.name, value)]
        overrides.append(("train.seed", seed))
        return loader_share(load_config(self.base, overrides, profile=self.profile))

    def fingerprint(self) -> str:
        """What makes two runs the same study: everything but the description, seeds and budget (which may
        grow between runs of one study), and the baseline and minimum effect (which only change how the results
        are compared, not what runs)."""
        identity = {
            "profile": self.profile,
            "base": str(self.base) if self.base else None,
            "base_text": self.base.read_text() if self.base and self.base.is_file() else None,
            "fixed": self.fixed,
            "sets": self.sets,
            "axis": self.axis,
            "arms": [(a.label, a.overrides) for a in self.arms],
            "search_space": [
                (p.name, p.low, p.high, p.log, p.integer, p.choices, dict(p.arms)) for p in self.search_space
            ],
            "sampler": self.sampler,
            "objectives": [(o.metric, o.direction) for o in self.objectives],
            "pruner": dict(self.pruner) if self.pruner else None,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": str(self.path) if self.path else None,
            "axis": self.axis,
            "arms": list(self.arm_labels),
            "seeds": list(self.seeds),
            "profile": self.profile,
            "sampler": self.sampler,
            "objectives": [f"{o.direction} {o.metric}" for o in self.objectives],
            "budget": self.total,
            "sets": list(self.sets),
            "baseline": self.baseline,
            "min_effect": self.min_effect,
            "sequential": self.sequential.to_dict() if self.sequential else None,
        }

    def _where(self) -> str:
        return f"study {str(self.path) if self.path else self.name!r}"


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_study(
    path: str | Path,
    *,
    profile: str | None = None,
    sets: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    budget: int | None = None,
) -> Study:
    """Read, check and resolve a study file. ``profile``, ``sets``, ``seeds`` and ``budget`` come from the
    command line and take precedence over the file."""
    path = Path(path)
    where = f"study {str(path)!r}"
    raw = load_yaml(read_text_file("study", path, StudyError), where, StudyError)
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: must hold a mapping with at least name and axis or search_space")
    return parse_study(raw, path=path, profile=profile, sets=sets, seeds=seeds, budget=budget)


def parse_study(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    profile: str | None = None,
    sets: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    budget: int | None = None,
) -> Study:
    where = f"study {str(path)!r}" if path else "study"

    def fail(key: str, value: Any, allowed: str) -> StudyError:
        return StudyError(f"{where}: {key}={value!r}: {allowed}")

    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise StudyError(f"{where}: unknown field(s) {unknown}; allowed {sorted(STUDY_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) or set(name) == {"."}:
        raise fail("name", name, "a non-empty name of letters, digits, '-', '_' or '.' (not '.' or '..')")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("description", description, "text")
    description = (description or "").strip()

    profile = profile if profile is not None else raw.get("profile")
    requested = profile
    if profile == AUTO:
        profile = auto_profile()
    if profile is not None and profile not in profile_names():
        raise fail("profile", profile, f"allowed {[*profile_names(), AUTO]}")
    base = raw.get("base")
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise fail("base", base, "the path of a config file (text)")
        base = Path(base)
        if not base.is_absolute() and path is not None and not base.exists():
            base = path.parent / base
        if not base.is_file():
            raise fail("base", str(raw.get("base")), "a config file that exists (relative to the study or the cwd)")

    fixed = _overrides(raw.get("fixed") or {}, f"{where}: fixed")

    axis, arms = None, ()
    if raw.get("axis") is not None:
        axis, arms = _axis(raw["axis"], where)

    seed_list = list(seeds) if seeds is not None else raw.get("seeds", [0])
    if (
        not isinstance(seed_list, list)
        or not seed_list
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list)
        or len(set(seed_list)) != len(seed_list)
    ):
        raise fail("seeds", seed_list, f"a non-empty list of distinct integers 0 … {SEED_MAX}")
    for s in seed_list:  # each one becomes train.seed: the range the libraries' seeding accepts
        if not is_seed(s):
            raise fail("seeds", s, SEED_RANGE)

    space_spec = raw.get("search_space") or {}
    if not isinstance(space_spec, dict):
        raise fail("search_space", space_spec, "a mapping of config keys to {low, high[, log, int]} or {choices}")
    space = tuple(_param(k, v, where) for k, v in space_spec.items())
    sampler = raw.get("sampler", "grid" if axis else "tpe")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise fail("sampler", sampler, f"allowed {list(SAMPLERS)}")
    if axis is None:
        if not space:
            raise StudyError(f"{where}: needs an axis (a grid of arms) or a search_space (for a sampler)")
        if sampler == "grid":
            raise fail("sampler", sampler, "a study without an axis needs random, tpe or nsga2")
    elif sampler == "grid" and space:
        sampler = "random"  # the grid is arms × seeds; the nuisance parameters are drawn at random

    objective_specs = raw.get("objectives", [{"metric": names.MIOU}])
    if not isinstance(objective_specs, list) or not objective_specs:
        raise fail("objectives", objective_specs, "a non-empty list of {metric, direction}")
    objectives = tuple(_objective(o, where) for o in objective_specs)
    metrics = [o.metric for o in objectives]
    if len(set(metrics)) != len(metrics):
        raise fail("objectives", metrics, "each metric at most once")
    budget = budget if budget is not None else raw.get("budget")
    if axis is None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise fail("budget", budget, "the number of trials (an integer ≥ 1) for a study without an axis")
    pruner = raw.get("pruner")
    if pruner is not None:
        if not isinstance(pruner, dict) or not isinstance(pruner.get("kind"), str) or pruner["kind"] not in PRUNERS:
            raise fail("pruner", pruner, f"null or a mapping with kind in {list(PRUNERS)}")
        _check_pruner(pruner, where)
        if len(objectives) > 1:
            raise fail("pruner", pruner["kind"], "pruning needs a single objective")

    # Keys the study controls cannot also be set from the command line: every arm would become the same.
    controlled = {k for arm in arms for k, _ in arm.overrides} | {"train.seed"}
    for p in space:
        controlled |= {k for overrides in p.arms.values() for k, _ in overrides} if p.arms else {p.name}
    for s in sets:
        key = s.partition("=")[0].strip()
        if key in controlled:
            raise StudyError(f"{where}: --set {s!r} sets {key}, which the study varies; drop it or edit the study")

    baseline = raw.get("baseline")
    if baseline is not None:
        if axis is None:
            raise fail("baseline", baseline, "only a study with an axis has arms to compare with a baseline")
        if str(baseline) not in [a.label for a in arms]:
            raise fail("baseline", baseline, f"one of the arms {[a.label for a in arms]}")
        baseline = str(baseline)
    elif axis is not None:
        baseline = arms[0].label
    min_effect = raw.get("min_effect", DEFAULT_MIN_EFFECT)
    if (
        not isinstance(min_effect, int | float)
        or isinstance(min_effect, bool)
        or not math.isfinite(min_effect)
        or min_effect <= 0
    ):
        raise fail("min_effect", min_effect, "a finite number > 0 (in the first objective's units, e.g. 0.01 mIoU)")
    slurm = raw.get("slurm")
    if slurm is not None:
        from ablations.sweep.slurm import check_block

        slurm = check_block(slurm, where)
    design = None
    if raw.get("sequential") is not None:
        design = design_from(raw["sequential"], f"{where}: sequential", axis=axis, seeds=seed_list)

    study = Study(
        name=name,
        path=path,
        description=description,
        profile=profile,
        base=base,
        fixed=fixed,
        axis=axis,
        arms=arms,
        seeds=tuple(seed_list),
        search_space=space,
        sampler=sampler,
        objectives=objectives,
        budget=budget if axis is None else None,
        pruner=pruner,
        sets=tuple(sets),
        requested_profile=requested,
        baseline=baseline,
        min_effect=float(min_effect),
        slurm=slurm,
        sequential=design,
        sequential_spec=dict(raw["sequential"]) if design is not None else None,
    )
    _check_configs(study, where)
    return study


def design_from(spec: Any, where: str, *, axis: str | None, seeds: Sequence[int]) -> Design:
    """A study file's ``sequential:`` block (``{}`` for the defaults) or the command line's settings → a checked
    design whose seed order starts with the study's seeds."""
    if axis is None:
        raise StudyError(
            f"{where}: a sequential design needs arms to compare (a study with an axis); a search study (TPE, "
            "NSGA-II, random) has none"
        )
    if not isinstance(spec, Mapping):
        raise StudyError(f"{where}: {spec!r}: a mapping with any of {list(SEQUENTIAL_KEYS)} ({{}} for the defaults)")
    unknown = sorted(set(spec) - set(SEQUENTIAL_KEYS))
    if unknown:
        raise StudyError(f"{where}: unknown field(s) {unknown}; allowed {list(SEQUENTIAL_KEYS)}")
    try:
        return make_design(
            looks=spec.get("looks"), alpha=spec.get("alpha"), boundary=spec.get("boundary"),
            futility=spec.get("futility"), max_seeds=spec.get("max_seeds"), first_seeds=seeds, where=where,
        )  # fmt: skip
    except DesignError as error:
        raise StudyError(str(error)) from None


def _overrides(mapping: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if not isinstance(mapping, dict):
        raise StudyError(f"{where}: expected a mapping of config keys to values, got {mapping!r}")
    for key in mapping:
        if not isinstance(key, str) or "." not in key:
            raise StudyError(f"{where}: key {key!r}: expected a dotted config key such as backbone.output_stride")
    return tuple((k, _freeze(v)) for k, v in mapping.items())


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def label_of(value: Any) -> str:
    """Arm label of a config value: ``[1, 2, 4]`` → ``(1,2,4)``, ``True`` → ``true``, ``None`` → ``none``."""
    if isinstance(value, list | tuple):
        return "(" + ",".join(label_of(v) for v in value) + ")"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _axis(axis: Any, where: str) -> tuple[str, tuple[Arm, ...]]:
    if not isinstance(axis, dict) or not isinstance(axis.get("name"), str):
        raise StudyError(f"{where}: axis: expected a mapping with a name and either key + values or arms")
    name = axis["name"]
    extra = sorted(set(axis) - {"name", "key", "values", "arms"})
    if extra:
        raise StudyError(f"{where}: axis: unknown field(s) {extra}; allowed name, key, values, arms")
    if ("arms" in axis) == ("key" in axis or "values" in axis):
        raise StudyError(f"{where}: axis {name!r}: give either key + values or arms, not both or neither")
    if "arms" in axis:
        if not isinstance(axis["arms"], dict) or len(axis["arms"]) < 2:
            raise StudyError(f"{where}: axis {name!r}: arms must map at least two labels to overrides")
        arms = tuple(
            Arm(str(label), _overrides(overrides or {}, f"{where}: axis {name!r} arm {label!r}"))
            for label, overrides in axis["arms"].items()
        )
    else:
        key, values = axis.get("key"), axis.get("values")
        if not isinstance(key, str) or "." not in key:
            raise StudyError(f"{where}: axis {name!r}: key={key!r}: expected a dotted config key")
        if not isinstance(values, list) or len(values) < 2:
            raise StudyError(f"{where}: axis {name!r}: values={values!r}: expected a list of at least two values")
        arms = tuple(Arm(label_of(v), ((key, _freeze(v)),)) for v in values)
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise StudyError(f"{where}: axis {name!r}: arm labels repeat: {labels}")
    return name, arms


def _param(name: Any, spec: Any, where: str) -> Param:
    what = f"{where}: search_space {name!r}"
    if not isinstance(spec, dict):
        raise StudyError(f"{what}: expected {{low, high[, log, int]}} or {{choices: [...] | {{label: overrides}}}}")
    allowed_keys = {"choices"} if "choices" in spec else {"low", "high", "log", "int"}
    extra = sorted(set(spec) - allowed_keys)
    if extra:
        raise StudyError(f"{what}: unknown field(s) {extra}; allowed {sorted(allowed_keys)}")
    if "choices" in spec:
        choices = spec["choices"]
        if isinstance(choices, dict):
            arms = {str(k): _overrides(v or {}, f"{what} choice {k!r}") for k, v in choices.items()}
            labels = tuple(arms)
        elif isinstance(choices, list) and choices:
            if "." not in str(name):
                raise StudyError(f"{what}: a list of choices needs a dotted config key as the name")
            labels, arms = tuple(choices), {}
            if not all(isinstance(c, str | int | float | bool) or c is None for c in choices):
                raise StudyError(f"{what}: choices must be scalars (use {{label: overrides}} for lists)")
        else:
            raise StudyError(f"{what}: choices={choices!r}: a non-empty list or a mapping of labels to overrides")
        if len(labels) < 2:
            raise StudyError(f"{what}: choices need at least two entries")
        return Param(str(name), choices=labels, arms=arms)
    low, high = spec.get("low"), spec.get("high")
    if "." not in str(name):
        raise StudyError(f"{what}: a numeric range needs a dotted config key as the name")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise StudyError(f"{what}: low={low!r}, high={high!r}: two finite numbers")
    if not low < high or (spec.get("log") and low <= 0):
        raise StudyError(f"{what}: low={low!r}, high={high!r}: need low < high (and low > 0 with log: true)")
    for flag in ("log", "int"):
        if not isinstance(spec.get(flag, False), bool):
            raise StudyError(f"{what}: {flag}={spec[flag]!r}: expected true or false")
    integer = spec.get("int", False)
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise StudyError(f"{what}: low={low!r}, high={high!r}: int: true needs whole numbers")
    return Param(str(name), low=low, high=high, log=spec.get("log", False), integer=integer)


# Settings of each pruner (``sweep.make_pruner``) and the smallest integer each allows (percentile: 0 < p < 100).
PRUNER_SETTINGS: dict[str, dict[str, int]] = {
    "median": {"warmup_steps": 0, "startup_trials": 0},
    "percentile": {"warmup_steps": 0, "startup_trials": 0, "percentile": 0},
    "hyperband": {"min_resource": 1},
    "successive_halving": {"min_resource": 1},
}


def _check_pruner(pruner: Mapping[str, Any], where: str) -> None:
    kind = pruner["kind"]
    settings = PRUNER_SETTINGS[kind]
    unknown = sorted(set(pruner) - {"kind", *settings})
    if unknown:
        raise StudyError(f"{where}: pruner {kind!r}: unknown setting(s) {unknown}; allowed {sorted(settings)}")
    for key, value in pruner.items():
        if key == "kind":
            continue
        low = settings[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key == "percentile":
            ok = number and math.isfinite(value) and 0 < value < 100
            allowed = "a number with 0 < percentile < 100"
        else:
            ok = number and isinstance(value, int) and value >= low
            allowed = f"an integer ≥ {low}"
        if not ok:
            raise StudyError(f"{where}: pruner {kind!r}: {key}={value!r}: {allowed}")


def _objective(spec: Any, where: str) -> Objective:
    if isinstance(spec, str):
        spec = {"metric": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("metric"), str):
        raise StudyError(f"{where}: objectives: {spec!r}: expected {{metric: NAME, direction: maximize|minimize}}")
    extra = sorted(set(spec) - {"metric", "direction"})
    if extra:
        raise StudyError(f"{where}: objective {spec['metric']!r}: unknown field(s) {extra}; allowed metric, direction")
    direction = spec.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise StudyError(f"{where}: objective {spec['metric']!r}: direction={direction!r}: allowed {list(DIRECTIONS)}")
    return Objective(spec["metric"], direction)


def _check_configs(study: Study, where: str) -> None:
    """Resolve every arm (and every categorical choice) now, so a bad value fails before any trial."""
    seed = study.seeds[0]
    try:
        shared = study.resolve(None, seed)
    except ConfigError as error:
        raise StudyError(f"{where}: the shared settings (profile, base, fixed, --set): {error}") from None
    if not study.arms:
        _check_objectives(study, shared, where, "")
    for arm in study.arms:
        try:
            config = study.resolve(arm.label, seed)
        except ConfigError as error:
            raise StudyError(f"{where}: arm {arm.label!r}: {error}") from None
        _check_objectives(study, config, where, f" (arm {arm.label!r})")
        if study.pruner and config.train.devices > 1:
            raise StudyError(
                f"{where}: pruner={study.pruner.get('kind')!r} with train.devices={config.train.devices} (arm "
                f"{arm.label!r}): a multi-device trial trains in its own process, where it cannot be pruned; use "
                "train.devices=1 or drop the pruner"
            )
    for p in study.search_space:
        samples = p.choices if p.categorical else ((int(p.low), int(p.high)) if p.integer else (p.low, p.high))
        for value in samples:
            try:
                study.resolve(study.arms[0].label if study.arms else None, seed, {p.name: value})
            except ConfigError as error:
                raise StudyError(f"{where}: search_space {p.name!r} = {value!r}: {error}") from None


def _check_objectives(study: Study, config: ExperimentConfig, where: str, arm: str) -> None:
    """Every objective names a numeric metric that a trial of ``config`` records; otherwise every trial would
    train and then fail."""
    produced = names.run_metrics(config)
    for objective in study.objectives:
        if objective.metric in produced:
            continue
        import difflib

        close = difflib.get_close_matches(objective.metric, sorted(produced), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        kept = sorted(m for m in produced if not m.startswith(names.CLASS_IOU))
        raise StudyError(
            f"{where}: objective metric={objective.metric!r}: no trial{arm} records it{hint} Allowed: {kept} or "
            f"{names.CLASS_IOU}<class> for the classes {list(names.class_names(config))}"
        )


def study_files(folder: str | Path = "sweeps") -> list[Path]:
    return sorted(Path(folder).glob("*.yaml"))
