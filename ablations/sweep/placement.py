"""Where the local worker processes of ``--workers N`` run: a pure function of the machine (GPUs, CPU threads)
and the config's loader workers, and the environment each worker is started with.

The rules:

- **GPUs.** Workers are placed round-robin over the GPUs: worker ``i`` gets GPU ``i mod G`` (as its only
  visible device, ``CUDA_VISIBLE_DEVICES``), so N > G is allowed and several trials then share a GPU. A
  ``CUDA_VISIBLE_DEVICES`` the user set is respected: the workers are placed over the devices it lists, and
  each worker gets one entry of that list. A trial of ``train.devices=D > 1`` (DDP) needs D GPUs: the GPUs are
  then cut into groups of D and the workers placed round-robin over the groups. No GPU (or a CPU-only config):
  every worker is on the CPU and ``CUDA_VISIBLE_DEVICES`` is left as it is.
- **CPU threads.** ``cpus // N`` each, at least 1, whether or not workers share a GPU (``OMP_NUM_THREADS``; the
  worker also sets torch's intra-op threads from it). An ``OMP_NUM_THREADS`` the user set is each worker's.
- **Loader workers.** The config's ``data.num_workers`` (profile, base, the study's ``fixed``) is a figure for
  the machine: each worker gets ``num_workers // N``, so the machine never runs more loader processes than the
  config asked for (12 on 4 workers: 3 each). An explicit ``--set data.num_workers=K`` is the user's choice for
  every trial (``--set`` applies to every trial) and is taken as each worker's value, not shared out.
  The share reaches the trials through ``ABLATIONS_LOADER_WORKERS`` (read by ``Study.resolve``, which caps
  the trial's ``data.num_workers`` at it); ``data.num_workers`` is an execution detail: it is outside the
  study's fingerprint and a checkpoint resumes under another value (``ablations.training.checkpoints.RESUME_IGNORES``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from ablations.sweep.study import LOADER_WORKERS_ENV as LOADER_ENV  # applied by ablations.sweep.study.Study.resolve

PLACEMENT_ENV = "ABLATIONS_PLACEMENT"  # the worker's placement (JSON), recorded on each trial it runs
# The --workers N parent's start time, handed to its workers (--retry-failed re-runs failures recorded before it).
STARTED_ENV = "ABLATIONS_SWEEP_STARTED"


@dataclass(frozen=True)
class Placement:
    """One worker's share of the machine."""

    index: int  # 0 … workers - 1
    workers: int
    gpus: tuple[int, ...]  # indices into the GPUs the parent sees (after the user's CUDA_VISIBLE_DEVICES); () = CPU
    cuda_visible_devices: str | None  # the value exported to the worker; None leaves the variable as it is
    threads: int  # OMP_NUM_THREADS and torch's intra-op threads
    loader_workers: int  # data.num_workers of this worker's trials

    @property
    def device(self) -> int | None:
        """The (first) GPU of this worker, as the parent numbers them, or None on the CPU."""
        return self.gpus[0] if self.gpus else None

    @property
    def device_name(self) -> str:
        return "cpu" if not self.gpus else ",".join(f"cuda:{g}" for g in self.gpus)

    def record(self) -> dict:
        return {**asdict(self), "gpus": list(self.gpus), "device": self.device_name}


def placement(
    workers: int,
    gpus: int,
    cpus: int,
    loader_workers: int,
    *,
    visible: Sequence[str] | None = None,
    threads: int | None = None,
    loader_override: int | None = None,
    gpus_per_trial: int = 1,
) -> list[Placement]:
    """The placement of ``workers`` workers on ``gpus`` GPUs and ``cpus`` CPU threads, with the config's
    ``loader_workers`` (``data.num_workers``) shared out. ``visible``: the user's ``CUDA_VISIBLE_DEVICES``
    entries (the first ``gpus`` of them are the GPUs); ``threads``: the user's ``OMP_NUM_THREADS``;
    ``loader_override``: the user's ``--set data.num_workers``, each worker's own; ``gpus_per_trial``: the
    config's ``train.devices``."""
    if workers < 1:
        raise ValueError(f"workers: {workers} must be ≥ 1")
    ids = list(visible)[:gpus] if visible is not None else [str(g) for g in range(gpus)]
    gpus = len(ids)
    per = max(1, gpus_per_trial)
    groups = [tuple(range(j * per, (j + 1) * per)) for j in range(gpus // per)]
    if gpus and not groups:  # fewer GPUs than a trial asks for: it gets them all (and Lightning says so)
        groups = [tuple(range(gpus))]
    each_threads = threads if threads is not None else max(1, cpus // workers)
    each_loaders = loader_override if loader_override is not None else max(0, loader_workers // workers)
    out = []
    for index in range(workers):
        group = groups[index % len(groups)] if groups else ()
        out.append(
            Placement(
                index=index,
                workers=workers,
                gpus=group,
                cuda_visible_devices=",".join(ids[g] for g in group) if group else None,
                threads=each_threads,
                loader_workers=max(0, each_loaders),
            )
        )
    return out


def visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` the user set (ids, UUIDs or MIG names), or None when unset."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def worker_env(place: Placement, environ: Mapping[str, str], *, started: float) -> dict[str, str]:
    """The environment of the worker process at ``place``: the parent's, plus its share."""
    env = dict(environ)
    env["OMP_NUM_THREADS"] = str(place.threads)
    if place.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = place.cuda_visible_devices
    env[LOADER_ENV] = str(place.loader_workers)
    env[PLACEMENT_ENV] = json.dumps(place.record())
    env[STARTED_ENV] = str(started)
    return env


def from_env(environ: Mapping[str, str] = os.environ) -> dict | None:
    """The placement a worker was started with (``worker_env``), or None outside ``--workers N``."""
    text = environ.get(PLACEMENT_ENV)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def start_line(
    places: Sequence[Placement],
    *,
    loader_workers: int,
    loader_override: bool = False,
    user_threads: bool = False,
    visible: Sequence[str] | None = None,
    available: int | None = None,
) -> str:
    """One line saying where the workers run, e.g. ``4 workers on 1 GPU (cuda:0 ×4: several trials share it),
    4 CPU threads each, 3 loader workers each (data.num_workers=12 shared out)``. ``available``: the GPUs
    there are (when the workers use fewer)."""
    workers = len(places)
    first = places[0]
    used = Counter(p.gpus for p in places if p.gpus)
    if visible is not None:
        ids = list(visible)

        def name(group):
            return "GPU " + "+".join(ids[g] for g in group)
    else:

        def name(group):
            return "+".join(f"cuda:{g}" for g in group)

    if not used:
        where = "on the CPU"
        threads = _plural(first.threads, "thread")
    else:
        gpus = sorted({g for group in used for g in group})
        listed = ", ".join(name(group) + (f" ×{n}" if n > 1 else "") for group, n in sorted(used.items()))
        if max(used.values()) > 1:
            share = "several trials share it" if len(used) == 1 else "several trials share a GPU"
        else:
            share = "one each"
        of = f"{len(gpus)} of {available} GPUs" if available and available > len(gpus) else _plural(len(gpus), "GPU")
        where = f"on {of} ({listed}: {share})"
        if visible is not None:
            where += f" of CUDA_VISIBLE_DEVICES={','.join(visible)}"
        threads = _plural(first.threads, "CPU thread")
    threads += " each" + (" (OMP_NUM_THREADS)" if user_threads else "")
    loaders = f"{_plural(first.loader_workers, 'loader worker')} each"
    if loader_override:
        loaders += f" (--set data.num_workers={first.loader_workers}: per worker)"
    elif loader_workers > 0 and workers > 1:
        loaders += f" (data.num_workers={loader_workers} shared out)"
    return f"{_plural(workers, 'worker')} {where}, {threads}, {loaders}"
