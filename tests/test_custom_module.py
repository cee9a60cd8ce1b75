"""A researcher's own module (``context.kind: custom``, ``head.style: custom``; ablations/model/custom.py): the
builder's arguments, the wrapper's defaults for what the geometry reads, the load-time checks (one line each,
naming the field), and the worked example (examples/my_context.py) swept end to end against v3's ASPP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ablations.cli import main
from ablations.config import ConfigError
from ablations.geometry.describe import describe, format_summary
from ablations.model import build_model
from ablations.model.custom import CustomContext
from ablations.sweep.study import load_study
from examples.my_context import StripPooling
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
STRIP = ["context.kind=custom", "context.target=examples.my_context:StripPooling"]


# Modules the tests name by import path (tests.test_custom_module:…): each breaks the contract one way, or keeps it.
class Recorder(nn.Module):
    """Keeps its arguments; a 3×3 conv at the first rate, re-rated by set_rates."""

    def __init__(self, in_channels, out_channels, rates, output_stride, scale=1.0):
        super().__init__()
        self.arguments = {"in_channels": in_channels, "out_channels": out_channels, "rates": rates,
                          "output_stride": output_stride, "scale": scale}  # fmt: skip
        rate = rates[0] if rates else 1
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate)

    def set_rates(self, rates):
        self.conv.dilation = self.conv.padding = (rates[0], rates[0])

    def paths(self):
        return [[self.conv.dilation[0]]]

    def forward(self, x):
        return self.conv(x)


class Minimal(nn.Module):
    """__init__ + forward only: the wrapper supplies the rest."""

    def __init__(self, in_channels, out_channels, rates, output_stride):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.conv(x)


class HalfChannels(Minimal):
    def __init__(self, in_channels, out_channels, rates, output_stride):
        super().__init__(in_channels, out_channels // 2, rates, output_stride)


class Strided(Minimal):
    def forward(self, x):
        return super().forward(x)[..., ::2, ::2]


class NeedsValues(Minimal):
    def forward(self, x):
        return super().forward(x) * float(x.mean().item() > 0)  # a value on the meta device: refused


class NotAModule:
    def __init__(self, **kwargs):
        pass


class TinyHead(nn.Module):
    def __init__(self, in_channels, num_classes, hidden=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, num_classes, 1)
        )

    def forward(self, x):
        return self.body(x)


class WrongHead(TinyHead):
    def forward(self, x):
        return super().forward(x)[:, :1]


def custom(name: str, *overrides: str):
    return tiny("context.kind=custom", f"context.target=tests.test_custom_module:{name}", *overrides)


def test_the_builder_passes_the_documented_arguments():
    config = custom("Recorder", "context.rates=6,12", "context.reference_output_stride=16",
                    "backbone.output_stride=8", "context.args.scale=0.5")  # fmt: skip
    model = build_model(config)
    assert isinstance(model.context, CustomContext)
    # in_channels: ResNet-50's 2,048 at width 1/8; out_channels: context.channels; rates at the actual OS 8.
    assert model.context.module.arguments == {
        "in_channels": 256, "out_channels": 16, "rates": (12, 24), "output_stride": 8, "scale": 0.5,
    }  # fmt: skip
    assert model(torch.randn(2, 3, 37, 45)).shape == (2, 5, 37, 45)
    # set_rates follows the output stride (eval.output_stride), as a built-in module's rates do.
    with model.at_output_stride(16):
        assert model.context.rates == (6, 12) and model.context.paths() == [[6]]
    assert model.context.rates == (12, 24) and model.context.paths() == [[12]]
    config = custom("Recorder", "context.rates=6,12", "context.reference_output_stride=16", "eval.output_stride=8")
    assert build_model(config).context.module.arguments["rates"] == (6, 12)


def test_a_module_with_init_and_forward_only_gets_the_defaults():
    model = build_model(custom("Minimal"))
    context = model.context
    assert (context.out_channels, context.rates, context.paths(), context.is_global, context.branch_count) == (
        16, (), [[]], False, 1
    )  # fmt: skip
    assert not context.declares_paths
    context.set_rates(())  # no rates, none to change
    with pytest.raises(ValueError, match="has no set_rates"):
        context.set_rates((6,))
    summary = describe(custom("Minimal"), (96, 96))
    assert summary["receptive_field"]["context"] == summary["receptive_field"]["backbone"]
    text = format_summary(summary)
    assert "context   custom tests.test_custom_module:Minimal(), no rates, 16 channels, 1 branches" in text
    assert "field of view not declared (no paths()): counted as the backbone's" in text


def test_the_example_builds_describes_and_learns():
    config = tiny(*STRIP, "context.args.reduction=8")
    model = build_model(config)
    assert isinstance(model.context.module, StripPooling)
    assert model.context.is_global and model.context.branch_count == 2 and model.context.declares_paths
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.context.parameters())
    text = format_summary(describe(config, (96, 96)))
    assert "context   custom examples.my_context:StripPooling(reduction=8), no rates, 16 channels, 2 branches" in text
    assert "every logit sees the whole image" in text


def test_a_custom_head():
    config = tiny("head.style=custom", "head.target=tests.test_custom_module:TinyHead", "head.args.hidden=4")
    model = build_model(config)
    assert model.head.module.body[0].out_channels == 4 and model.head.refine is None
    assert model(torch.randn(1, 3, 33, 33)).shape == (1, 5, 33, 33)
    assert "head      custom tests.test_custom_module:TinyHead(hidden=4) → 5 classes" in format_summary(
        describe(config, (64, 64))
    )


def test_a_module_on_the_working_directory_imports_as_python_m_would(tmp_path, monkeypatch):
    (tmp_path / "cwd_context_x7.py").write_text(
        "from torch import nn\n\n"
        "class Ctx(nn.Conv2d):\n"
        "    def __init__(self, in_channels, out_channels, rates, output_stride):\n"
        "        super().__init__(in_channels, out_channels, 1)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    config = tiny("context.kind=custom", "context.target=cwd_context_x7:Ctx")
    assert type(build_model(config).context.module).__name__ == "Ctx"


@pytest.mark.parametrize("first", ["ablations.config", "ablations.model.custom", "ablations.model.builder"])
def test_no_import_cycle_whichever_module_is_imported_first(first):
    # config.py imports the check lazily (model/ imports config): each imports cleanly in a fresh process.
    subprocess.run([sys.executable, "-c", f"import {first}"], cwd=ROOT, check=True, capture_output=True)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["context.kind=custom"],
            "context.target=None: context.kind=custom needs your module as 'package.module:ClassName'",
        ),
        (
            ["context.kind=custom", "context.target=examples.my_context.StripPooling"],
            "context.target='examples.my_context.StripPooling': context.kind=custom needs your module as "
            "'package.module:ClassName'",
        ),
        (
            ["context.target=examples.my_context:StripPooling"],
            "context.target='examples.my_context:StripPooling': used by context.kind=custom only",
        ),
        (
            ["context.kind=spp", "context.args.reduction=4"],
            "context.args={'reduction': 4}: used by context.kind=custom",
        ),
        ([*STRIP, "context.args=[4]"], "context.args=[4]: expected a mapping"),
        ([*STRIP, "context.args=4"], "context.args=4: expected a mapping"),
        (
            ["context.kind=custom", "context.target=examples.nowhere:Mod"],
            "context.target='examples.nowhere:Mod': importing 'examples.nowhere' failed (ModuleNotFoundError: No "
            "module named 'examples.nowhere'); it must be importable from sys.path or the working directory (set "
            "PYTHONPATH)",
        ),
        (
            ["context.kind=custom", "context.target=examples.my_context:Nope"],
            "context.target='examples.my_context:Nope': 'examples.my_context' has no attribute 'Nope'",
        ),
        (
            ["context.kind=custom", "context.target=examples.my_context:conv_bn"],
            "context.target='examples.my_context:conv_bn': is a function (a class is needed, constructed by the "
            "builder), not an nn.Module subclass",
        ),
        (
            ["context.kind=custom", "context.target=tests.test_custom_module:NotAModule"],
            "context.target='tests.test_custom_module:NotAModule': is a class that is not an nn.Module",
        ),
        (
            ["context.kind=custom", "context.target=tests.test_custom_module:ROOT"],
            "context.target='tests.test_custom_module:ROOT': is a PosixPath value, not an nn.Module subclass",
        ),
        (
            [*STRIP, "context.args.bogus=1"],
            "context.target='examples.my_context:StripPooling': constructing it failed (TypeError: "
            "StripPooling.__init__() got an unexpected keyword argument 'bogus'); it is called with in_channels=256, "
            "out_channels=16, rates=(), output_stride=16, bogus=1",
        ),
        (
            [*STRIP, "context.args.in_channels=3"],
            "context.args={'in_channels': 3}: ['in_channels'] are set by the builder",
        ),
        (
            ["context.kind=custom", "context.target=tests.test_custom_module:HalfChannels"],
            "context.target='tests.test_custom_module:HalfChannels': maps a (2, 256, 5, 7) input to (2, 8, 5, 7), "
            "expected (2, 16, 5, 7) (context.channels=16 channels at the input's h × w)",
        ),
        (
            ["context.kind=custom", "context.target=tests.test_custom_module:Strided"],
            "context.target='tests.test_custom_module:Strided': maps a (2, 256, 5, 7) input to (2, 16, 3, 4), "
            "expected (2, 16, 5, 7)",
        ),
        (
            ["context.kind=custom", "context.target=tests.test_custom_module:NeedsValues"],
            "context.target='tests.test_custom_module:NeedsValues': a forward pass on a (2, 256, 5, 7) tensor on the "
            "meta device failed",
        ),
        (
            [*STRIP, "context.rates=6,12", "context.reference_output_stride=16", "eval.output_stride=8"],
            "context.target='examples.my_context:StripPooling': has no set_rates(rates), but eval.output_stride=8 "
            "rescales its rates [6, 12] (at output stride 16); define set_rates or evaluate at the training output "
            "stride",
        ),
        ([*STRIP, "context.rates=6"], "context.reference_output_stride=None: allowed [8, 16, 32, 64, 128, 256]"),
        ([*STRIP, "context.image_pooling=true"], "context.image_pooling=True: not used by custom"),
        (["head.style=custom"], "head.target=None: head.style=custom needs your module"),
        (
            ["head.target=tests.test_custom_module:TinyHead"],
            "head.target='tests.test_custom_module:TinyHead': used by head.style=custom only",
        ),
        (
            ["head.style=custom", "head.target=tests.test_custom_module:WrongHead"],
            "head.target='tests.test_custom_module:WrongHead': maps a (2, 16, 5, 7) input to (2, 1, 5, 7), expected "
            "(2, 5, 5, 7) (head.num_classes=5 logits at the input's h × w)",
        ),
        (
            ["head.style=custom", "head.target=tests.test_custom_module:TinyHead", "head.args.num_classes=3"],
            "head.args={'num_classes': 3}: ['num_classes'] are set by the builder",
        ),
    ],
)
def test_bad_custom_modules_are_one_line_naming_the_field(overrides, needle):
    with pytest.raises(ConfigError) as error:
        tiny(*overrides)
    message = str(error.value)
    assert needle in message and "\n" not in message, message


def test_a_module_that_fails_while_imported_names_its_error(tmp_path, monkeypatch):
    (tmp_path / "broken_context_q3.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as error:
        tiny("context.kind=custom", "context.target=broken_context_q3:Ctx")
    assert str(error.value) == (
        "context.target='broken_context_q3:Ctx': importing 'broken_context_q3' failed (RuntimeError: boom); it must "
        "be importable from sys.path or the working directory (set PYTHONPATH)"
    )


def test_the_example_study_loads_every_arm():
    study = load_study(ROOT / "examples" / "my_context_study.yaml")
    assert study.arm_labels == ("v3-ASPP", "strip-pooling") and study.profile == "quick"
    config = study.resolve("strip-pooling", 0)
    assert (config.context.kind, config.context.target, config.context.args) == (
        "custom", "examples.my_context:StripPooling", {"reduction": 4}
    )  # fmt: skip


TINY_SETS = [
    "backbone.width=0.125", "context.channels=16", "data.image_size=32", "data.crop_size=32",
    "data.train_samples=8", "data.val_samples=4", "data.batch_size=2", "data.val_batch_size=4",
    "train.max_steps=2", "train.val_every=2", "train.log_every=1", "train.checkpoint_every=0",
]  # fmt: skip


@pytest.mark.e2e
def test_the_example_study_sweeps_the_custom_module_against_v3_aspp(workdir, capsys):
    study = ROOT / "examples" / "my_context_study.yaml"
    argv = ["sweep", str(study), "--seeds", "0"]
    for setting in TINY_SETS:
        argv += ["--set", setting]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trial 1: context = strip-pooling, seed 0" in printed
    table = printed[printed.index("my_context: context") :]
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("v3-ASPP", "strip-pooling"))}
    assert set(rows) == {"v3-ASPP", "strip-pooling"}
    import optuna

    stored = optuna.load_study(
        study_name="my_context", storage=f"sqlite:///{workdir / 'runs' / 'sweeps' / 'my_context' / 'optuna.db'}"
    )
    trials = {t.user_attrs["arm"]: t for t in stored.get_trials()}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    custom_trial = trials["strip-pooling"].user_attrs
    assert custom_trial["config"]["context"]["target"] == "examples.my_context:StripPooling"
    assert 0 <= custom_trial["metrics"]["val/mIoU"] <= 1
    assert custom_trial["metrics"]["params"] != trials["v3-ASPP"].user_attrs["metrics"]["params"]
