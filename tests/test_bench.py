"""The benchmark's method (warm-up excluded, synchronised timing, rotated inputs, counted MACs, memory), its rows
for our configs and the peers', and the command."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from torch import nn

from ablations import bench
from ablations.cli import main
from ablations.config import load_config
from ablations.geometry.analysis import count_macs

TINY = [
    "backbone.width=0.125",
    "context.channels=16",
    "head.num_classes=3",
]


def tiny_config(*extra: str):
    return load_config(overrides=[*TINY, *extra])


def bench_tiny(config, method: bench.Method, batch_size: int) -> dict:
    """One row for our model of ``config`` on 32×32 inputs, on the CPU."""
    model = bench.build_ours(config)
    return bench.bench_model(
        "tiny", model, device=torch.device("cpu"), input_size=(32, 32), batch_size=batch_size, method=method,
        num_classes=config.head.num_classes,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Method


def test_macs_match_a_hand_checked_conv_net():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),  # 4 out × 3 in × 9 taps per output pixel
        nn.ReLU(),
        nn.Conv2d(4, 2, 1),  # 2 out × 4 in per output pixel
        nn.Upsample(scale_factor=2),
    )
    pixels = 8 * 10
    expected = 4 * 3 * 9 * pixels + 2 * 4 * pixels
    assert bench.count_forward_macs(net, (8, 10)) == expected == 9280
    assert count_macs(net, (8, 10)) == expected
    # A strided, dilated conv: the output has (8 - 1) // 2 + 1 = 4 rows and 5 columns.
    strided = nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2)
    assert bench.count_forward_macs(strided, (8, 10)) == 5 * 3 * 9 * 4 * 5
    # One training step: forward + backward (input and weight gradients of the second conv, weight gradients of
    # the first, which needs no input gradient) = 3 forward passes but the first layer's input gradient.
    step = bench.count_step_flops(net, (8, 10), batch=2, mode="train")
    assert step == 2 * 2 * (3 * expected - 4 * 3 * 9 * pixels)
    assert bench.count_step_flops(net, (8, 10), batch=2, mode="infer") == 2 * 2 * expected


class Recorder:
    """A step, a device synchronisation and a clock that write down the order they were called in."""

    def __init__(self, slow_calls: int = 0) -> None:
        self.events: list[str] = []
        self.inputs: list[int] = []
        self.slow_calls = slow_calls
        self.now = 0.0

    def step(self, x) -> None:
        self.inputs.append(x)
        self.events.append("step")
        # The first `slow_calls` steps cost 10 s (compilation, autotuning), the rest 0.01 s.
        self.now += 10.0 if len(self.inputs) <= self.slow_calls else 0.01

    def sync(self, device) -> None:
        self.events.append("sync")

    def clock(self) -> float:
        self.events.append("clock")
        return self.now


def test_each_timed_step_is_between_synchronisations_and_warm_up_is_excluded():
    r = Recorder(slow_calls=3)
    timing = bench.time_steps(
        r.step, [0, 1, 2], device=torch.device("cpu"), images_per_step=4, warmup=3, iters=5, repeats=2,
        sync=r.sync, clock=r.clock,
    )  # fmt: skip
    assert len(r.inputs) == 3 + 10
    timed = r.events[-10 * 5 :]
    # sync; t0; step; sync; t1 — a GPU must have finished the previous work before t0 and this step before t1.
    assert timed == ["sync", "clock", "step", "sync", "clock"] * 10
    assert timing["step_times_s"] == pytest.approx([0.01] * 10)  # the three slow warm-up steps are not in it
    assert timing["first_step_s"] == pytest.approx(10.0)
    assert timing["images_per_s"] == pytest.approx(4 / 0.01)
    assert timing["latency_ms"] == pytest.approx(10.0)
    # Inputs are rotated, not one tensor over and over.
    assert r.inputs == [0, 1, 2] * 4 + [0]


def test_without_warm_up_the_slow_first_steps_would_be_timed():
    # The same recorder with one warm-up step: the test above would fail if warm-up were not excluded.
    r = Recorder(slow_calls=3)
    timing = bench.time_steps(
        r.step, [0], device=torch.device("cpu"), images_per_step=1, warmup=1, iters=5, repeats=1,
        sync=r.sync, clock=r.clock,
    )  # fmt: skip
    assert max(timing["step_times_s"]) == pytest.approx(10.0)
    assert timing["latency_p90_ms"] == pytest.approx(10_000.0)


CALLS: list[str] = []


class Named(nn.Module):
    """A 1×1 conv that writes its name down each time it runs on real data."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.conv = name, nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":  # not the MAC count
            CALLS.append(self.name)
        return self.conv(x)


def test_compared_models_are_timed_interleaved_repeat_by_repeat():
    CALLS.clear()
    method = bench.Method(warmup=2, iters=3, repeats=2)
    rows = bench.bench_models(
        [("A", lambda: Named("A"), method), ("B", lambda: Named("B"), method)],
        device=torch.device("cpu"), input_size=(8, 8), batch_size=1, num_classes=2,
    )  # fmt: skip
    assert CALLS == ["A"] * 2 + ["B"] * 2 + (["A"] * 3 + ["B"] * 3) * 2
    assert [r["name"] for r in rows] == ["A", "B"]
    assert all(len(r["images_per_s_repeats"]) == 2 and r["macs"] == 2 * 3 * 64 for r in rows)


def test_real_timing_is_of_the_work_done():
    def step(seconds):
        time.sleep(seconds)

    timing = bench.time_steps(
        step, [0.05, 0.15], device=torch.device("cpu"), images_per_step=1, warmup=1, iters=4, repeats=1
    )
    # A sleep never ends early and, even on a loaded host, rarely overshoots by more than a few tens of ms.
    times = sorted(timing["step_times_s"])
    assert all(0.05 <= t < 0.12 for t in times[:2]) and all(0.15 <= t < 0.22 for t in times[2:]), times


def test_peak_memory_sees_a_large_temporary_allocation():
    with bench.PeakMemory(torch.device("cpu")) as small:
        torch.ones(1000).sum()
    with bench.PeakMemory(torch.device("cpu")) as large:
        torch.ones(64 * 2**20 // 4).add_(1).sum()  # 64 MiB, touched
    assert small.extra_mb is not None and large.extra_mb is not None
    assert large.extra_mb >= 60 and small.extra_mb < 20


# --------------------------------------------------------------------------------------------------------------
# Rows


@pytest.mark.parametrize(
    "method",
    [
        bench.Method(mode="infer", warmup=1, iters=2, repeats=1),
        bench.Method(mode="train", warmup=1, iters=2, repeats=1),
        bench.Method(mode="infer", precision="bf16", channels_last=True, warmup=1, iters=2, repeats=1),
        bench.Method(mode="train", precision="bf16", channels_last=True, warmup=1, iters=2, repeats=1),
    ],
    ids=lambda m: m.label(),
)
def test_bench_rows_for_our_model(method):
    config = tiny_config()
    row = bench_tiny(config, method, batch_size=2)
    assert "error" not in row, row.get("error")
    assert row["images_per_s"] > 0 and row["latency_p90_ms"] >= row["latency_ms"] > 0
    assert row["macs"] == count_macs(bench.build_ours(config), (32, 32))
    assert row["params"] == sum(p.numel() for p in bench.build_ours(config).parameters())
    assert row["peak_memory_mb"] is not None
    assert row["mfu"] is None and row["peak_flops_source"] is None  # no GPU peak on a CPU
    assert row["tf32"] is None  # no TF32 on a CPU


def test_inference_figures_time_the_evaluation_protocol():
    base = tiny_config("data.crop_size=32", "data.batch_size=2")
    single = bench.inference_figures(base, warmup=1, iters=1)
    assert single["infer/images_per_s"] > 0 and single["infer/macs"] == count_macs(bench.build_ours(base), (32, 32))
    # Scales 0.5 and 1 (16² and 32² inputs), each also flipped: 2 × (1/4 + 1) forward passes' worth.
    multi = bench.inference_figures(
        tiny_config("data.crop_size=32", "data.batch_size=2", "eval.scales=0.5,1.0", "eval.flip=true"),
        warmup=1,
        iters=1,
    )
    assert multi["infer/macs"] == pytest.approx(2.5 * single["infer/macs"], rel=0.1)
    # Evaluation at output stride 8 of a model trained at 16 costs more than at 16.
    os8 = bench.inference_figures(tiny_config("data.crop_size=32", "eval.output_stride=8"), warmup=1, iters=1)
    assert os8["infer/macs"] > 1.5 * single["infer/macs"]


def test_a_failing_model_is_a_row_with_its_error_not_a_crash():
    # Training at batch 1 with a BatchNorm after image pooling (BatchNorm sees one value per channel): the model
    # refuses with a clear error, and the benchmark records it in the row.
    config = tiny_config("context.pooling_norm=batch")
    row = bench_tiny(config, bench.Method(mode="train", warmup=1, iters=1, repeats=1), batch_size=1)
    assert "cannot train at batch size 1" in row["error"]
    assert row["params"] > 0 and "images_per_s" not in row


@pytest.mark.e2e  # a real timing run: six full-width ResNet-50s (three peers, our equivalents) through bench.run
def test_peers_are_timed_next_to_the_equivalent_config_of_ours():
    # The smallest input they take: MACs and parameters are equal at any size.
    result = bench.run(
        [],
        device=torch.device("cpu"),
        input_size=(32, 32),
        batch_sizes=[1],
        methods=[bench.Method(warmup=1, iters=1, repeats=1)],
        peers=True,
        printer=lambda line: None,
    )
    ratios = {q["peer"]: q for q in result["peer_ratios"]}
    assert set(ratios) == set(bench.PEERS)
    for q in ratios.values():
        assert q["speed_ratio"] == pytest.approx(q["ours_images_per_s"] / q["peer_images_per_s"])
    # The same network: torchvision's and smp's DeepLabV3 have exactly our equivalent config's multiply-adds
    # and parameters; smp's DeepLabV3+ (one extra 3×3 conv after ASPP) is within a few per cent.
    rows = {r["name"]: r for r in result["rows"]}
    for peer in ("torchvision deeplabv3_resnet50", "smp DeepLabV3 (resnet50)"):
        assert rows[f"ours ≡ {peer}"]["macs"] == rows[peer]["macs"]
        assert rows[f"ours ≡ {peer}"]["params"] == rows[peer]["params"]
    plus = "smp DeepLabV3Plus (resnet50)"
    assert rows[f"ours ≡ {plus}"]["macs"] == pytest.approx(rows[plus]["macs"], rel=0.05)
    table = bench.format_table(result)
    assert "torchvision deeplabv3_resnet50" in table and "Ours / peer" in table


def test_fp32_rows_say_whether_tf32_is_on():
    base = {"name": "x", "mode": "train", "channels_last": False, "compile": False, "batch": 2, "params": 10**6}
    base |= {"images_per_s": 10.0, "latency_ms": 1.0, "latency_p90_ms": 1.0, "peak_memory_mb": 1.0, "macs": 10**9}
    rows = [
        {**base, "precision": "fp32", "tf32": True},  # a GPU's default (torch.backends.cudnn.allow_tf32)
        {**base, "precision": "fp32", "tf32": False},
        {**base, "precision": "bf16", "tf32": True},
        {**base, "precision": "fp32", "tf32": None},  # a CPU
    ]
    assert list(bench.bench_frame(rows)["Mode"]) == ["train fp32 (TF32 on)", "train fp32", "train bf16", "train fp32"]
    assert "fp32 (TF32 on)" in bench.format_row(rows[0]) and "TF32" not in bench.format_row(rows[1])
    env = {"device": "NVIDIA H200", "torch": "2", "tf32": {"cudnn": True, "matmul": False}}
    table = bench.format_table({"environment": env, "rows": rows, "peer_ratios": []})
    assert "tf32 cudnn on, matmul off" in table
    cpu = bench.format_table({"environment": {"device": "cpu", "tf32": None}, "rows": rows[3:], "peer_ratios": []})
    assert "tf32 n/a" in cpu
    assert bench.environment(torch.device("cpu"))["tf32"] is None


def test_standard_configs_cover_output_stride_context_and_decoder():
    configs = bench.configs_from(None, ["backbone.width=0.125"], None, standard=True)
    assert len(configs) == 12
    strides = {c.backbone.output_stride for _, c in configs}
    assert strides == {8, 16, 32}
    assert {c.context.kind for _, c in configs} == {"aspp", "largefov"}
    assert {c.decoder.enabled for _, c in configs} == {False, True}
    assert all(c.backbone.width == 0.125 and c.head.num_classes == 21 for _, c in configs)


# --------------------------------------------------------------------------------------------------------------
# Command


def test_bench_command_prints_json(capsys):
    argv = ["bench", *[a for s in TINY for a in ("--set", s)], "--input-size", "32", "32"]
    assert main([*argv, "--batch-sizes", "1,2", "--warmup", "1", "--iters", "1", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in result["rows"]] == [1, 2]
    assert result["environment"]["torch"] == torch.__version__
    assert result["input_size"] == [32, 32]


def test_bench_command_fast_path_and_report(tmp_path, capsys):
    out = tmp_path / "bench.md"
    argv = ["bench", *[a for s in TINY for a in ("--set", s)], "--input-size", "32", "32", "--fast"]
    assert main([*argv, "--warmup", "1", "--iters", "1", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert re.search(r"\| infer fp32 +\|", text) and re.search(r"\| infer fp32 channels-last +\|", text)
    assert "Device: cpu" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "backbone.output_stride=7"], "backbone.output_stride=7"),
        (["--device", "cuda"], "--device cuda"),
    ],
)
def test_bench_bad_input_is_one_line(argv, message, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_bad_batch_sizes_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--batch-sizes", "0,8"])
    assert exit_.value.code == 2
    assert "--batch-sizes" in capsys.readouterr().err
