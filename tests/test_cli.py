"""``ablations describe``: the v3 paper settings read off the built network, and exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ablations.cli import main

TINY = ["--set", "backbone.width=0.125", "--set", "context.channels=16", "--input-size", "65", "65"]


def describe_json(capsys, *args: str, tiny: list[str] = TINY) -> dict:
    assert main(["describe", "--json", *tiny, *args]) == 0
    return json.loads(capsys.readouterr().out)


def layer(summary: dict, block: str) -> list[int]:
    return [u["dilation"] for u in summary["units"] if u["block"] == block]


def test_json_has_the_promised_keys(capsys):
    s = describe_json(capsys)
    for key in (
        "config", "output_stride", "units", "context", "context_geometry", "params", "macs", "receptive_field",
        "gridding_holes",
    ):  # fmt: skip
        assert key in s
    assert s["config"]["backbone"]["output_stride"] == 16
    assert set(s["units"][0]) == {"block", "unit", "conv", "stride", "dilation", "size", "valid_taps", "degenerate"}
    # At 65² and OS 16 the map is 5×5: ASPP's rate-6/12/18 branches see only their centre tap (1 of 9).
    assert [c["valid_taps"] for c in s["context_geometry"]] == [1 / 9] * 3
    assert [c["size"] for c in s["context_geometry"]] == [[5, 5]] * 3
    assert all(c["degenerate"] for c in s["context_geometry"])
    assert s["context"] == s["context"] | {
        "kind": "aspp",
        "topology": "parallel",
        "rates": [6, 12, 18],
        "image_pooling": True,
    }
    assert s["params"] == sum(s["params_by_part"].values()) > 0
    assert s["macs"] > 0


def test_v3_paper_setting_output_stride_16_multi_grid_124(capsys):
    s = describe_json(capsys, "--set", "backbone.name=resnet101", "--set", "backbone.multi_grid=1,2,4")
    assert s["output_stride"] == 16
    assert layer(s, "layer4") == [2, 4, 8]
    assert layer(s, "layer3") == [1] * 23
    assert [u["stride"] for u in s["units"] if u["unit"] == 0] == [1, 2, 2, 1]
    assert s["context"]["rates"] == [6, 12, 18]


def test_v3_paper_setting_output_stride_8(capsys):
    s = describe_json(capsys, "--set", "backbone.output_stride=8", "--set", "backbone.multi_grid=1,2,4")
    assert s["output_stride"] == 8
    assert layer(s, "layer3") == [2] * 6
    assert layer(s, "layer4") == [4, 8, 16]
    assert s["context"]["rates"] == [12, 24, 36]


def test_train_16_eval_8(capsys):
    s = describe_json(capsys, "--set", "backbone.multi_grid=1,2,4", "--set", "eval.output_stride=8")
    assert s["output_stride"] == 16
    assert s["eval"]["measured_output_stride"] == 8
    assert s["eval"]["context_rates"] == [12, 24, 36]
    assert [u["dilation"] for u in s["eval"]["units"] if u["block"] == "layer4"] == [4, 8, 16]
    assert s["eval"]["macs"] > s["macs"]


def test_cascade_blocks(capsys):
    s = describe_json(
        capsys,
        "--set",
        "backbone.cascade=3",
        "--set",
        "backbone.multi_grid=1,2,1",
        "--set",
        "context.kind=none",
        tiny=[],
    )
    assert [layer(s, b) for b in ("layer4", "block5", "block6", "block7")] == [
        [2, 4, 2],
        [4, 8, 4],
        [8, 16, 8],
        [16, 32, 16],
    ]
    assert s["context"]["kind"] == "none" and s["context"]["rates"] == []


def test_gridding_of_uniform_vs_hdc(capsys):
    uniform = describe_json(capsys, "--set", "backbone.output_stride=8")
    hdc = describe_json(capsys, "--set", "backbone.output_stride=8", "--set", "backbone.hdc.layer3=1,2,5")
    assert uniform["gridding_holes"]["layer3"] == [o for o in range(-11, 12) if o % 2]
    assert uniform["hdc_rule"]["layer3"] == {"groups": [[2]] * 6, "m2": [2] * 6, "gcd": [2] * 6, "ok": False}
    assert hdc["gridding_holes"]["layer3"] == []
    assert hdc["hdc_rule"]["layer3"] == {"groups": [[1, 2, 5], [1, 2, 5]], "m2": [2, 2], "gcd": [1, 1], "ok": True}


def test_human_summary(capsys):
    assert main(["describe", *TINY, "--set", "backbone.multi_grid=1,2,4", "--set", "decoder.enabled=true"]) == 0
    out = capsys.readouterr().out
    assert "output stride 16 (measured 16" in out
    assert "layer4        1  2 4 8" in out
    assert "rates (6, 12, 18) at OS 16 → (6, 12, 18)" in out
    assert "decoder   v3+, low-level conv2 → 48 channels, 2 × [3×3, 256]" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "backbone.depth=50"], "backbone.depth: unknown key"),
        (["--set", "backbone.output_stride=12"], "backbone.output_stride=12: allowed [8, 16, 32]"),
        (["--set", "backbone.multi_grid=1,2"], "backbone.multi_grid=[1, 2]: needs one rate per unit"),
        (["--set", "context.rates=0,12"], "context.rates=[0, 12]: one or more integer rates ≥ 1"),
        (["--set", "context.channels=-256"], "context.channels=-256: an integer ≥ 1"),
        (["--set", "backbone.name=resnet152"], "backbone.name='resnet152': allowed"),
        (["--config", "/no/such.yaml"], "config file '/no/such.yaml': cannot be read"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    assert main(["describe", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ablations: error: ") and message in captured.err
    assert captured.err.count("\n") == 1


def test_argument_errors_exit_2(capsys):
    for args in (["describe", "--input-size", "0", "5"], ["describe", "--input-size", "x", "5"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2


@pytest.mark.e2e
def test_console_script_reports_malformed_yaml_without_a_traceback(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("backbone: {output_stride: 8\n")
    result = subprocess.run(
        [sys.executable, "-m", "ablations.cli", "describe", "--config", str(broken)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"config file '{broken}': not valid YAML" in result.stderr


@pytest.mark.e2e
def test_console_script_runs_the_paper_config():
    result = subprocess.run(
        [sys.executable, "-m", "ablations.cli", "describe", "--config", "configs/deeplabv3_r101_os16_mg124.yaml"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "layer4        1  2 4 8" in result.stdout
    assert "eval      output stride 8, context rates (12, 24, 36)" in result.stdout


@pytest.mark.parametrize("value", [None, float("nan"), float("inf")])
def test_a_figure_not_measured_reads_not_measured(value):
    from ablations.results.tables import fmt_measured

    assert fmt_measured(value, ".1f", " img/s") == "not measured"
    assert fmt_measured(12.345, ".1f", " img/s") == "12.3 img/s"


@pytest.mark.e2e
def test_a_run_too_short_to_time_prints_not_measured_never_nan(capsys, workdir):
    # Two steps, all of them warm-up (Throughput skips the first three): no images/s to report.
    tiny = [
        "backbone.width=0.125", "context.channels=16", "decoder.channels=16", "data.image_size=32",
        "data.crop_size=32", "data.train_samples=8", "data.val_samples=4", "data.batch_size=2",
        "train.max_steps=2", "train.val_every=null", "train.checkpoint_every=0", "train.log_every=1",
    ]  # fmt: skip
    argv = ["train", "--profile", "quick", *(a for o in tiny for a in ("--set", o)), "--out", str(workdir / "run")]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "training images/s not measured" in line and "nan" not in line.lower(), line
    assert json.loads((workdir / "run" / "metrics.json").read_text()).get("train/images_per_s") is None
