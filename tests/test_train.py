"""End to end: a real Lightning Trainer on the embedded benchmark and on tiny fixtures of each real format,
writing the resolved config, a checkpoint, metrics.json and an offline W&B run; bad data stops before training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ablations import load_config
from ablations.cli import main
from ablations.config import ConfigError
from ablations.data.datasets import DatasetError
from ablations.training.train import train
from tests.fixtures import write_ade20k, write_cityscapes, write_folder, write_voc

TINY_RUN = [
    "backbone.width=0.125",
    "context.channels=16",
    "decoder.channels=16",
    "data.image_size=48",
    "data.crop_size=48",
    "data.train_samples=16",
    "data.val_samples=8",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.max_steps=4",
    "train.val_every=2",
    "train.log_every=1",
    "train.lr=0.01",
    "train.bn_momentum=0.1",
]


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def run(tmp_path: Path, *overrides: str, name: str = "run") -> dict:
    return train(load_config(overrides=[*TINY_RUN, *overrides]), tmp_path / name, progress_bar=False)


@pytest.mark.e2e
def test_training_on_the_embedded_benchmark_writes_everything(tmp_path):
    metrics = run(tmp_path, "decoder.enabled=true")
    out = tmp_path / "run"
    assert load_config(out / "config.yaml") == load_config(overrides=[*TINY_RUN, "decoder.enabled=true"])
    written = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= written["val/mIoU"] <= 1.0
    assert written["val/mIoU"] == pytest.approx(metrics["val/mIoU"])
    assert {"val/mIoU_small", "val/mIoU_medium", "val/mIoU_large", "val/boundary_mIoU", "val/pixel_acc"} <= set(written)
    assert len([k for k in written if k.startswith("val/IoU/")]) == load_config().head.num_classes
    assert written["train/images_per_s"] > 0
    assert written["seed"] == 0 and written["device"].startswith("cpu")
    assert written["best_step"] in (2, 4) and [h["step"] for h in written["history"]] == [2, 4]
    # the result is the last validation's; the best one is a record
    assert written["final_step"] == 4 and written["val/mIoU"] == written["history"][-1]["val/mIoU"]
    assert written["best/val/mIoU"] == max(h["val/mIoU"] for h in written["history"])
    assert written["threads"] == 1 and written["onednn"] is True
    assert Path(written["best_checkpoint"]).is_file()
    runs = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    # Where the wall time went: the 4 optimisation steps (warm-up included) and everything else.
    assert 0 < written["train_time_s"] < written["wall_time_s"] and written["overhead_s"] >= 0
    assert written["train_time_s"] + written["overhead_s"] == pytest.approx(written["wall_time_s"], rel=1e-9)
    assert written["train_time_s"] > 4 * written["train/step_time_s"] * 0.5
    assert 0 <= written["data_wait_s"] < written["overhead_s"] and 0 <= written["data_wait_share"] < 1
    # A CPU run: deterministic, no cuDNN autotuning, TF32 not applicable.
    assert (written["deterministic"], written["cudnn_benchmark"]) == (True, False)
    assert written["tf32_cudnn"] is None and written["tf32_matmul"] is None


@pytest.mark.e2e
def test_same_seed_same_miou_and_a_checkpoint_that_restores(tmp_path):
    first = run(tmp_path, name="a")
    second = run(tmp_path, name="b")
    assert [h["val/mIoU"] for h in first["history"]] == [h["val/mIoU"] for h in second["history"]]
    from ablations.training.system import SegmentationSystem

    restored = SegmentationSystem.load_from_checkpoint(first["best_checkpoint"], map_location="cpu")
    assert restored.config == load_config(overrides=TINY_RUN)


@pytest.mark.e2e
def test_evaluation_at_another_output_stride_with_multi_scale_and_flip(tmp_path):
    metrics = run(tmp_path, "eval.output_stride=8", "eval.scales=0.75,1.0", "eval.flip=true", "train.max_steps=2")
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "writer", "classes"),
    [
        ("voc", write_voc, 21),
        ("cityscapes", write_cityscapes, 19),
        ("ade20k", write_ade20k, 150),
        ("folder", write_folder, 5),
    ],
)
def test_a_step_on_each_real_format(tmp_path, name, writer, classes):
    root = writer(tmp_path / name)
    extra = ["head.num_classes=5"] if name == "folder" else []
    metrics = run(
        tmp_path,
        f"data.name={name}",
        f"data.root={root}",
        "data.batch_size=2",
        "data.crop_size=32",
        "train.max_steps=2",
        "train.val_every=2",
        *extra,
        name=f"run-{name}",
    )
    assert len([k for k in metrics if k.startswith("val/IoU/")]) == classes
    assert "val/mIoU_small" not in metrics  # size buckets are the embedded benchmark's


@pytest.mark.e2e
def test_voc_trainaug_when_present(tmp_path):
    root = write_voc(tmp_path / "voc", trainaug=True)
    metrics = run(
        tmp_path,
        "data.name=voc",
        f"data.root={root}",
        "data.train_split=trainaug",
        "data.batch_size=2",
        "data.crop_size=32",
        "train.max_steps=2",
        "train.val_every=2",
    )
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


def _no_run_started(tmp_path: Path, name: str = "run") -> None:
    assert not (tmp_path / name / "metrics.json").exists()
    assert not (tmp_path / "wandb-dir").exists()


def test_missing_root_stops_before_training(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.root"):
        run(tmp_path, "data.name=voc")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nowhere"))):
        run(tmp_path, "data.name=voc", f"data.root={tmp_path / 'nowhere'}")
    _no_run_started(tmp_path)


def test_mask_value_out_of_range_stops_before_training(tmp_path):
    import numpy as np
    from PIL import Image

    root = write_folder(tmp_path / "folder", num_classes=5)
    bad = sorted((root / "masks" / "train").glob("*.png"))[0]
    mask = np.array(Image.open(bad))
    mask[0, 0] = 7
    Image.fromarray(mask).save(bad)
    with pytest.raises(DatasetError, match=re.escape(bad.name)):
        run(tmp_path, "data.name=folder", f"data.root={root}", "head.num_classes=5", "data.batch_size=2")
    _no_run_started(tmp_path)


def test_batch_larger_than_the_split_and_wrong_class_count_stop_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.batch_size=32: larger than the 16 images"):
        run(tmp_path, "data.batch_size=32")
    with pytest.raises(ConfigError, match=r"head\.num_classes=21: the synthetic dataset has"):
        run(tmp_path, "head.num_classes=21")
    _no_run_started(tmp_path)


def test_cli_train_reports_bad_data_in_one_line(tmp_path, capsys):
    code = main(
        ["train", "--set", "data.name=cityscapes", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ablations: error: ") and err.count("\n") == 1


@pytest.mark.e2e
def test_cli_train_quick_profile_runs(tmp_path, capsys):
    overrides = [a for o in TINY_RUN for a in ("--set", o)]
    assert main(["train", "--profile", "quick", *overrides, "--out", str(tmp_path / "q")]) == 0
    assert "val/mIoU" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / "metrics.json").read_text())["val/mIoU"] >= 0


def test_profiles_load():
    quick, paper = load_config(profile="quick"), load_config(profile="paper")
    assert (quick.data.name, quick.backbone.width) == ("synthetic", 0.25)
    assert (paper.data.crop_size, paper.data.batch_size, paper.train.max_steps) == (513, 16, 30000)
    assert paper.backbone.output_stride == 16 and paper.train.bn_momentum == 0.0003
    with pytest.raises(ConfigError, match="profile 'fast': allowed"):
        load_config(profile="fast")


def test_bn_momentum_reaches_every_batchnorm():
    from ablations.training.system import SegmentationSystem

    system = SegmentationSystem(load_config(overrides=[*TINY_RUN, "train.bn_momentum=0.05"]).to_dict(), ("x",) * 8)
    momenta = {m.momentum for m in system.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.05}


def test_the_config_knows_the_synthetic_class_count():
    from ablations.data import NUM_CLASSES
    from ablations.data.synthetic import SyntheticShapes

    assert NUM_CLASSES["synthetic"] == SyntheticShapes(num_samples=1).num_classes == load_config().head.num_classes


def test_determinism_is_on_unless_cudnn_autotunes():
    t = load_config().train
    assert t.deterministic is None
    assert (t.resolved_deterministic(gpu=False), t.resolved_cudnn_benchmark(gpu=False)) == (True, False)
    assert (t.resolved_deterministic(gpu=True), t.resolved_cudnn_benchmark(gpu=True)) == (False, True)
    strict = load_config(overrides=["train.deterministic=true"]).train
    assert (strict.resolved_deterministic(gpu=True), strict.resolved_cudnn_benchmark(gpu=True)) == (True, False)
    untuned = load_config(overrides=["train.cudnn_benchmark=false"]).train
    assert untuned.resolved_deterministic(gpu=True) is True
    loose = load_config(overrides=["train.deterministic=false"]).train
    assert (loose.resolved_deterministic(gpu=False), loose.resolved_cudnn_benchmark(gpu=True)) == (False, True)
    with pytest.raises(ConfigError, match=r"^train.deterministic=true with train.cudnn_benchmark=true: [^\n]*$"):
        load_config(overrides=["train.deterministic=true", "train.cudnn_benchmark=true"])
    from ablations.training.train import lightning_deterministic

    assert lightning_deterministic(t, gpu=False) == "warn" and lightning_deterministic(t, gpu=True) is False


def test_precision_and_layout_resolve_per_device():
    t = load_config().train
    assert t.precision == "auto" and t.channels_last is None and t.cudnn_benchmark is None and not t.compile
    assert t.resolved_precision(gpu=False) == "32-true"
    assert t.resolved_channels_last(gpu=False) is False and t.resolved_channels_last(gpu=True) is True
    assert t.resolved_cudnn_benchmark(gpu=True) is True
    assert load_config(overrides=["train.precision=16-mixed"]).train.resolved_precision(gpu=True) == "16-mixed"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        assert t.resolved_precision(gpu=True) == "bf16-mixed"


@pytest.mark.e2e
@pytest.mark.parametrize("setting", ["train.channels_last=true", "train.compile=true"])
def test_the_fast_path_trains_and_evaluates_like_the_plain_one(tmp_path, setting):
    plain = run(tmp_path, name="plain")
    fast = run(tmp_path, setting, name="fast")
    key = setting.split("=")[0].split(".")[1]
    assert fast[key] is True and plain[key] is False
    assert plain["precision"] == fast["precision"] == "32-true"  # on a CPU
    # Same seed, same data, same maths in another memory layout or compiled: the same predictions up to
    # floating-point reassociation.
    for a, b in zip(plain["history"], fast["history"], strict=True):
        assert b["val/mIoU"] == pytest.approx(a["val/mIoU"], abs=0.02)
    from ablations.training.system import SegmentationSystem

    restored = SegmentationSystem.load_from_checkpoint(fast["best_checkpoint"], map_location="cpu")
    assert set(restored.state_dict()) == set(
        SegmentationSystem.load_from_checkpoint(plain["best_checkpoint"]).state_dict()
    )


@pytest.mark.e2e
def test_two_processes_count_every_rank_write_once_and_evaluate_each_image_once(tmp_path):
    """DDP on a CPU (gloo, 2 processes): one metrics.json, one W&B run, training images/s over both ranks, and a
    checkpoint evaluated with 1 and with 2 processes gives the same metrics. 33 validation images: a padding
    sampler would give one of them to both ranks and count it twice."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir")}
    tiny = ["backbone.width=0.125", "context.channels=16", "train.max_steps=10", "train.val_every=10",
            "data.val_samples=33", "data.train_samples=64", "train.accelerator=cpu"]  # fmt: skip
    sets = [a for s in tiny for a in ("--set", s)]
    command = [sys.executable, "-m", "ablations.cli"]
    run = tmp_path / "ddp"
    argv = [*command, "train", "--profile", "quick", *sets, "--set", "train.devices=2", "--out", str(run)]
    done = subprocess.run(argv, check=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stdout + done.stderr  # the launcher's child (rank 1) prints here too
    assert [p.name for p in run.glob("*.json")] == ["metrics.json"]
    assert len(list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    # 7 timed steps (after 3 warm-up steps) of 8 images on each of 2 ranks, over the summed step times
    step_s = metrics["train/step_time_s"]
    assert metrics["train/images_per_s"] * step_s == pytest.approx(2 * 8, rel=0.35)  # one rank alone: 8
    [checkpoint] = list((run / "checkpoints").glob("*.ckpt"))
    results = []
    for devices in (1, 2):
        out = subprocess.run([*command, "evaluate", str(checkpoint), "--set", "train.accelerator=cpu", "--set",
                              f"train.devices={devices}"], check=True, env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        results.append(json.loads(out.stdout[out.stdout.index("{") :]))
    assert [r["processes"] for r in results] == [1, 2]
    assert results[0]["val/mIoU"] == results[1]["val/mIoU"] == pytest.approx(metrics["val/mIoU"])
    assert results[0]["val/pixel_acc"] == results[1]["val/pixel_acc"]


@pytest.mark.e2e
def test_every_rank_of_a_two_process_run_exits_cleanly(tmp_path):
    """Both DDP ranks started by the test, as an external launcher (torchrun) would: Lightning takes the ranks
    from the environment and starts no process itself, so each rank's own exit status and output are seen. Only
    rank 0 touches W&B and writes files; rank 1 trains, returns and exits 0 without a traceback."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [a for o in [*TINY_RUN, "train.devices=2", "train.accelerator=cpu"] for a in ("--set", o)]
    command = [sys.executable, "-m", "ablations.cli", "train", "--profile", "quick", *sets]
    command += ["--out", str(tmp_path / "r")]
    base = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_SILENT": "true",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": "0"}  # fmt: skip
    ranks = [
        subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in (0, 1)
    ]  # fmt: skip
    outputs = []
    try:
        outputs = [p.communicate(timeout=300)[0] for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    for rank, (process, output) in enumerate(zip(ranks, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} exited {process.returncode}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"rank {rank}:\n{output[-3000:]}"
    assert "val/mIoU" in outputs[0] and "val/mIoU" not in outputs[1]  # rank 0 reports the run
    assert [p.name for p in (tmp_path / "r").glob("*.json")] == ["metrics.json"]
    assert len(list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))) == 1
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["best_step"] in (2, 4) and metrics["overhead_s"] >= 0


@pytest.mark.e2e
def test_the_faithful_profile_trains_a_step_on_a_cpu_at_a_reduced_crop(tmp_path, monkeypatch):
    from ablations.config import load_config
    from ablations.training.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    config = load_config(
        profile="faithful",
        overrides=["data.image_size=64", "data.crop_size=64", "data.train_samples=8", "data.val_samples=4",
                   "data.batch_size=4", "data.num_workers=0", "train.max_steps=1", "train.val_every=1",
                   "backbone.width=0.125", "context.channels=16", "decoder.channels=16"],
    )  # fmt: skip
    assert config.data.class_by == "size" and config.head.num_classes == 4
    metrics = train(config, tmp_path / "run", progress_bar=False)
    assert metrics["best_step"] == 1 and set(metrics) >= {"val/IoU/small", "val/IoU/medium", "val/IoU/large"}
