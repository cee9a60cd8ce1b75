"""Your own module in the network: ``context.kind: custom`` (and ``head.style: custom``), named by an import path.

A researcher's context module (the question "what if the ASPP were *this*?") or classifier is a plain
``nn.Module`` in a file of their own. The config names it and its keyword arguments::

    context:
      kind: custom
      target: examples.my_context:StripPooling   # "package.module:ClassName", imported like `python -m` would
      args: {reduction: 4}                         # extra keyword arguments of its constructor
      channels: 64                                 # out_channels
      rates: [6, 12]                               # optional, stated at reference_output_stride
      reference_output_stride: 16

**The contract.** The builder calls ``ClassName(in_channels=…, out_channels=…, rates=…, output_stride=…,
**args)``:

* ``in_channels`` — channels of the backbone's last map (2,048 for a ResNet-50, ×``backbone.width``);
* ``out_channels`` — ``context.channels`` (256 unless set);
* ``rates`` — ``context.rates`` rescaled from ``context.reference_output_stride`` to the training output stride
  (:func:`ablations.dilation.scale_rates`, as every built-in module's are): a tuple, empty when no rates are given;
* ``output_stride`` — the training output stride (the map's stride);
* ``**args`` — ``context.args``, a mapping (empty by default).

``forward`` maps ``(B, in_channels, h, w)`` to ``(B, out_channels, h, w)``. Optionally the module defines
``set_rates(rates)``, called with the rescaled rates when the network is re-planned for another output stride
(``eval.output_stride``); a module with rates and without ``set_rates`` is refused with another evaluation output
stride. Everything the geometry reads (``ablations describe``, the receptive field, the gridding check, the study
geometry) comes from :class:`CustomContext`, which wraps the module and supplies what it does not define:

* ``paths()`` — the rates of the 3×3 convs along each path from input to output (as the built-in modules'); default
  ``[[]]``: the module's field of view is *not declared*, and the receptive field counts the backbone only
  (``describe`` says so);
* ``is_global`` — whether some output reads the whole map (a global pooling branch); default ``False``;
* ``branch_count`` — branches merged; default 1; ``rates`` — default the ``rates`` it was built with.

A custom head (``head.style: custom``, ``head.target``, ``head.args``) is called as ``ClassName(in_channels=…,
num_classes=…, **args)`` and maps ``(B, in_channels, h, w)`` to ``(B, num_classes, h, w)`` logits at the same grid.

**The checks** (:func:`check_config`, run when the config is loaded, before anything trains) build the network on
the meta device and run the module on a ``(2, in_channels, 5, 7)`` meta tensor: the target must be importable (its
module and attribute), be an ``nn.Module`` subclass, construct with the arguments above, and return the expected
shape; each failure is one line naming the field, the value and what failed. The target's module is imported from
``sys.path``, with the working directory appended (as ``python -m`` has it): run from the folder that holds its
package, or put that folder on ``PYTHONPATH`` — sweep workers (``--workers``) inherit both. The module must run on
the meta device (plain torch ops do; ``.item()``, ``.tolist()`` or control flow on values do not), as every module
must for ``describe``. ``docs/custom-modules.md`` has a worked example.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ablations.ioutil import first_line

if TYPE_CHECKING:
    from ablations.config import ExperimentConfig

TARGET_FORM = "'package.module:ClassName'"
_TARGET = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*")
PROBE = (2, 5, 7)  # batch, h, w of the meta-device check: odd, not square, batch 2 (BatchNorm in train mode works)


class CustomModuleError(ValueError):
    """A custom module that cannot be used; one line naming the config field, its value and what failed."""


def resolve_target(target: Any, key: str = "context.target") -> type:
    """The object ``target`` (``"package.module:Attr"``, ``Attr`` may be dotted) names, imported."""
    if not isinstance(target, str) or not _TARGET.fullmatch(target.strip()):
        raise CustomModuleError(f"{key}={target!r}: expected {TARGET_FORM}, e.g. examples.my_context:StripPooling")
    module_name, _, attribute = target.strip().partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # as `python -m` has it: the working directory is importable
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises while it is imported
        raise CustomModuleError(
            f"{key}={target!r}: importing {module_name!r} failed ({type(error).__name__}: {first_line(error)}); "
            "it must be importable from sys.path or the working directory (set PYTHONPATH)"
        ) from None
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            raise CustomModuleError(f"{key}={target!r}: {owner!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        if isinstance(obj, type):
            kind = f"a class that is not an nn.Module (bases {[b.__name__ for b in obj.__mro__[1:]]})"
        elif isinstance(obj, types.ModuleType):
            kind = "a module"
        elif callable(obj):
            kind = f"a {type(obj).__name__} (a class is needed, constructed by the builder)"
        else:
            kind = f"a {type(obj).__name__} value"
        raise CustomModuleError(f"{key}={target!r}: is {kind}, not an nn.Module subclass")
    return obj


def construct(key: str, target: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``resolve_target(target)(**kwargs)``; a failing constructor is one line naming ``key`` and the arguments."""
    cls = resolve_target(target, key)
    try:
        module = cls(**kwargs)
    except Exception as error:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise CustomModuleError(
            f"{key}={target!r}: constructing it failed ({type(error).__name__}: {first_line(error)}); "
            f"it is called with {shown}"
        ) from None
    if not isinstance(module, nn.Module):  # a __new__ that returns something else
        raise CustomModuleError(f"{key}={target!r}: constructing it returned {type(module).__name__}, not a module")
    return module


class CustomContext(nn.Module):
    """A user's context module (``self.module``) with the interface every context module has: ``out_channels``,
    ``rates``, ``set_rates``, ``paths``, ``is_global``, ``branch_count``; the module's own where it defines them."""

    def __init__(self, module: nn.Module, *, out_channels: int, rates: Sequence[int], target: str) -> None:
        super().__init__()
        self.module = module
        self.out_channels = out_channels
        self.target = target
        self._rates = tuple(int(r) for r in rates)

    @property
    def rates(self) -> tuple[int, ...]:
        own = getattr(self.module, "rates", None)
        return tuple(own) if isinstance(own, Sequence) else self._rates

    def set_rates(self, rates: Sequence[int]) -> None:
        """The module's ``set_rates`` with the rescaled rates; without one, the rates may not change."""
        rates = tuple(rates)
        setter = getattr(self.module, "set_rates", None)
        if callable(setter):
            setter(rates)
        elif rates != self._rates:
            raise ValueError(
                f"context.target={self.target!r} has no set_rates(rates): its rates cannot change from "
                f"{list(self._rates)} to {list(rates)} (another output stride)"
            )
        self._rates = rates

    @property
    def declares_paths(self) -> bool:
        """Whether the module states its field of view (``paths()``); without it the figures count the backbone."""
        return callable(getattr(self.module, "paths", None))

    def paths(self) -> list[list[int]]:
        return [list(p) for p in self.module.paths()] if self.declares_paths else [[]]

    @property
    def is_global(self) -> bool:
        return bool(getattr(self.module, "is_global", False))

    @property
    def branch_count(self) -> int:
        return int(getattr(self.module, "branch_count", 1))

    @property
    def kernel_size(self) -> int:
        """The kernel of the convs ``paths()`` lists (3 unless the module says otherwise)."""
        kernel = getattr(self.module, "kernel_size", 3)
        return kernel if isinstance(kernel, int) else 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) → (B, out_channels, h, w)
        return self.module(x)


class CustomHead(nn.Module):
    """A user's classifier (``self.module``): ``(B, in_channels, h, w)`` → ``(B, num_classes, h, w)`` logits.
    ``refine`` is ``None``: the geometry counts no 3×3 conv of it (as for the papers' 1×1 head)."""

    refine = None

    def __init__(self, module: nn.Module, *, num_classes: int, target: str) -> None:
        super().__init__()
        self.module = module
        self.num_classes = num_classes
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def build_context(
    target: str,
    args: Mapping[str, Any],
    *,
    in_channels: int,
    out_channels: int,
    rates: Sequence[int],
    output_stride: int,
) -> CustomContext:
    """``context.kind: custom``: the user's module, constructed with the documented arguments, wrapped."""
    reserved = sorted({"in_channels", "out_channels", "rates", "output_stride"} & set(args))
    if reserved:
        raise CustomModuleError(
            f"context.args={dict(args)!r}: {reserved} are set by the builder (context.channels, context.rates, "
            "backbone.output_stride); drop them from context.args"
        )
    kwargs = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "rates": tuple(rates),
        "output_stride": output_stride,
        **args,
    }
    return CustomContext(construct("context.target", target, kwargs), out_channels=out_channels, rates=rates,
                         target=target)  # fmt: skip


def build_head(target: str, args: Mapping[str, Any], *, in_channels: int, num_classes: int) -> CustomHead:
    """``head.style: custom``: the user's classifier, constructed with ``in_channels``, ``num_classes``, ``**args``."""
    reserved = sorted({"in_channels", "num_classes"} & set(args))
    if reserved:
        raise CustomModuleError(f"head.args={dict(args)!r}: {reserved} are set by the builder; drop them")
    kwargs = {"in_channels": in_channels, "num_classes": num_classes, **args}
    return CustomHead(construct("head.target", target, kwargs), num_classes=num_classes, target=target)


def _probe(key: str, target: str, module: nn.Module, in_channels: int, out_channels: int, what: str) -> None:
    """Run ``module`` on a ``(2, in_channels, 5, 7)`` meta tensor and check it returns ``(2, out_channels, 5, 7)``."""
    batch, h, w = PROBE
    shape = (batch, in_channels, h, w)
    expected = (batch, out_channels, h, w)
    try:
        with torch.no_grad():
            out = module(torch.empty(shape, device="meta"))
    except Exception as error:
        raise CustomModuleError(
            f"{key}={target!r}: a forward pass on a {shape} tensor on the meta device failed "
            f"({type(error).__name__}: {first_line(error)}); it must run on the meta device (no .item(), .tolist())"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise CustomModuleError(f"{key}={target!r}: forward returned {type(out).__name__}, not a tensor {expected}")
    if tuple(out.shape) != expected:
        raise CustomModuleError(
            f"{key}={target!r}: maps a {shape} input to {tuple(out.shape)}, expected {expected} ({what})"
        )


_checked: dict[str, str | None] = {}  # check key → None (passed) or the error's message


def check_config(config: ExperimentConfig) -> None:
    """The load-time checks of ``context.kind: custom`` and ``head.style: custom`` (module docstring): a
    :class:`CustomModuleError` (one line) on the first that fails. Builds the network on the meta device; a passed
    check is remembered for the process (keyed by the network sections and the evaluation output stride)."""
    from ablations.model.builder import build_model

    data = config.to_dict()
    key = json.dumps(
        [data["backbone"], data["context"], data["decoder"], data["head"], config.eval_output_stride],
        sort_keys=True,
        default=str,
    )
    if key in _checked:
        if _checked[key] is not None:
            raise CustomModuleError(_checked[key])
        return
    try:
        _check(config, build_model)
    except CustomModuleError as error:
        _checked[key] = str(error)
        raise
    _checked[key] = None


def _check(config: ExperimentConfig, build_model) -> None:
    c, h = config.context, config.head
    with torch.device("meta"):
        model = build_model(config, load_weights=False)  # constructs the custom parts: import, class, arguments
    model.eval()
    if c.kind == "custom":
        _probe(
            "context.target", c.target, model.context, model.backbone.channels["out"], c.channels,
            f"context.channels={c.channels} channels at the input's h × w",
        )  # fmt: skip
        eval_os = config.eval_output_stride
        if eval_os != config.backbone.output_stride and c.rates:
            if not callable(getattr(model.context.module, "set_rates", None)):
                raise CustomModuleError(
                    f"context.target={c.target!r}: has no set_rates(rates), but eval.output_stride={eval_os} "
                    f"rescales its rates {list(model.context.rates)} (at output stride "
                    f"{config.backbone.output_stride}); define set_rates or evaluate at the training output stride"
                )
            try:
                model.set_output_stride(eval_os)  # the module's set_rates with the rescaled rates
            except Exception as error:
                raise CustomModuleError(
                    f"context.target={c.target!r} with eval.output_stride={eval_os}: re-planning failed "
                    f"({type(error).__name__}: {first_line(error)})"
                ) from None
    if h.style == "custom":
        head_in = model.decoder.out_channels if model.decoder is not None else model.context.out_channels
        _probe(
            "head.target", h.target, model.head, head_in, h.num_classes,
            f"head.num_classes={h.num_classes} logits at the input's h × w",
        )  # fmt: skip
