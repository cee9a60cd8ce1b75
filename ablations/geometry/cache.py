"""One meta-device build per network, and what is read off it, kept for the life of the process.

A study's geometry check (``ablations.sweep.geometry``), ``describe`` and a trial's statistics all read the same
network: it is built once on the meta device and each figure (conv geometry, feature size, signature, MACs, …)
is computed once per output stride and input size. Both caches are bounded (least recently used out first).

* The **network key** is what :func:`ablations.model.build_model` reads on the meta device: the config's
  ``backbone`` (but its weights file), ``context``, ``decoder`` and ``head`` sections, as stable JSON. Seeds, data,
  training and evaluation settings are not in it, so every seed of an arm, and every study that trains it, shares
  one build.
* A **figure** is keyed by its name, the network key, the output stride it is read at (the training one, or
  another one reached with ``at_output_stride``) and the input size.

A cached model is shared: it stays in eval mode at its training output stride, and every reader leaves it as it
found it (:func:`read` restores the output stride; the analysis functions restore the mode and remove their
hooks). Figures are returned as copies, so a caller may change what it gets.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ablations.config import ExperimentConfig
    from ablations.model import DeepLab

MAX_MODELS = 64
MAX_FIGURES = 4096
NETWORK_SECTIONS = ("backbone", "context", "decoder", "head")

_lock = threading.RLock()  # a model is re-planned while it is read (at_output_stride): one reader at a time
_models: OrderedDict[str, DeepLab] = OrderedDict()
_figures: OrderedDict[Hashable, Any] = OrderedDict()
stats = {"builds": 0, "computed": 0, "hits": 0}  # for tests and curiosity


def network_key(config: ExperimentConfig) -> str:
    """The arm's network fingerprint: the sections that decide the network, as sorted JSON (no seed, no data)."""
    data = config.to_dict()
    parts = {section: data[section] for section in NETWORK_SECTIONS}
    parts["backbone"] = {k: v for k, v in parts["backbone"].items() if k != "weights"}
    return json.dumps(parts, sort_keys=True, default=str)


def meta_model(config: ExperimentConfig) -> DeepLab:
    """The network of ``config`` on the meta device, in eval mode, built once per network key. Shared: read it,
    do not change it (or change it back, as ``at_output_stride`` does)."""
    from ablations.model import builder

    key = network_key(config)
    with _lock:
        model = _models.get(key)
        if model is not None:
            _models.move_to_end(key)
            return model
        with torch.device("meta"):
            model = builder.build_model(config, load_weights=False)
        model.eval()
        stats["builds"] += 1
        _models[key] = model
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
        return model


def read(
    config: ExperimentConfig,
    what: str,
    compute: Callable[[DeepLab], Any],
    *,
    size: tuple[int, int] | None = None,
    output_stride: int | None = None,
) -> Any:
    """``compute(model)`` on the cached meta build of ``config`` at ``output_stride`` (default: the training one),
    once per (``what``, network key, output stride, ``size``); a copy of the result. ``what`` names the figure and
    ``size`` the input it is read at: together they must decide what ``compute`` returns."""
    stride = output_stride or config.backbone.output_stride
    key = (what, network_key(config), stride, tuple(size) if size is not None else None)
    with _lock:
        if key in _figures:
            _figures.move_to_end(key)
            stats["hits"] += 1
            return copy.deepcopy(_figures[key])
        model = meta_model(config)
        with torch.no_grad():
            if stride == model.output_stride:
                value = compute(model)
            else:
                with model.at_output_stride(stride):
                    value = compute(model)
        stats["computed"] += 1
        _figures[key] = value
        while len(_figures) > MAX_FIGURES:
            _figures.popitem(last=False)
        return copy.deepcopy(value)


def clear() -> None:
    """Forget every build and figure (a test that changes what a network is, e.g. by monkeypatching a module)."""
    with _lock:
        _models.clear()
        _figures.clear()
