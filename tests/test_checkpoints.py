"""Contract tests of resuming (no training): the training order resumed mid-epoch, when a folder's checkpoint may
be resumed, the atomic checkpoint writer, and the fault-injection spec. The end-to-end guarantees (a killed run
ends with an uninterrupted run's metrics) are in tests/reliability."""

from __future__ import annotations

import pytest
import torch

from ablations import load_config
from ablations.training.checkpoints import AtomicCheckpointIO, config_differences, resume_point
from ablations.training.datamodule import TrainingOrder
from ablations.training.faults import ENV, InjectFault


def _stream(order: TrainingOrder, epoch: int) -> list[tuple[int, int]]:
    order.set_epoch(epoch)
    return list(order)


def test_a_resumed_order_continues_the_interrupted_stream_exactly():
    order = TrainingOrder(20, seed=3, batch_size=4)  # 5 steps an epoch
    epochs = [_stream(order, e) for e in range(3)]
    assert epochs[0] != epochs[1]  # a new permutation (and new augmentation seeds) each epoch
    assert sorted(i for i, _ in epochs[0]) == list(range(20))
    for step in (0, 3, 5, 7, 14):
        resumed = TrainingOrder(20, seed=3, batch_size=4)
        resumed.resume_at(step)
        epoch, within = divmod(step, 5)
        assert resumed.epoch == epoch
        assert list(resumed) == epochs[epoch][within * 4 :]
        assert list(resumed) == epochs[epoch]  # only the first iteration after resuming skips
    assert _stream(TrainingOrder(20, seed=4, batch_size=4), 0) != epochs[0]  # the seed decides the stream


def test_ranks_share_out_one_permutation():
    whole = _stream(TrainingOrder(24, seed=0, batch_size=2), 1)
    ranks = [_stream(TrainingOrder(24, seed=0, batch_size=2, rank=r, world_size=3), 1) for r in range(3)]
    assert sorted(x for rank in ranks for x in rank) == sorted(whole)
    assert ranks[1] == whole[1::3]


def test_a_folder_is_resumed_only_from_a_loadable_checkpoint_of_the_same_config(tmp_path):
    config = load_config(overrides=["backbone.width=0.125"]).to_dict()
    out = tmp_path / "run"
    assert resume_point(config, out) == (out, None, None)  # nothing there: start here
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints" / "last.ckpt"
    torch.save({"hyper_parameters": {"config": config}, "global_step": 6}, last)
    assert resume_point(config, out) == (out, last, f"resuming from {last} (step 6)")
    other = load_config(overrides=["backbone.width=0.125", "train.lr=0.02", "data.num_workers=0"]).to_dict()
    folder, ckpt, message = resume_point(other, out)
    assert (folder, ckpt) == (tmp_path / "run.2", None)
    assert "train.lr: 0.007 → 0.02" in message and "num_workers" not in message
    last.write_bytes(last.read_bytes()[:40])
    (tmp_path / "run.2").mkdir()
    folder, ckpt, message = resume_point(config, out)
    assert (folder, ckpt) == (tmp_path / "run.3", None) and "does not load" in message


def test_a_finished_run_without_a_checkpoint_is_never_written_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    folder, ckpt, message = resume_point({}, tmp_path / "run")
    assert (folder, ckpt) == (tmp_path / "run.2", None) and "holds a finished run" in message


def test_only_trained_on_fields_block_a_resume():
    a = load_config().to_dict()
    b = load_config(overrides=["data.num_workers=0", "train.checkpoint_every=7"]).to_dict()
    assert config_differences(a, b) == []
    c = load_config(overrides=["backbone.output_stride=8"]).to_dict()
    assert config_differences(a, c) == ["backbone.output_stride: 16 → 8"]


def test_the_checkpoint_writer_replaces_the_file_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file left
    with pytest.raises((TypeError, AttributeError)):  # not picklable: the write fails before the rename
        io.save_checkpoint({"step": 3, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_fault_specs_select_runs_by_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "nan@2@lr0.1, sigkill@5")
    faults = InjectFault.from_env(tmp_path / "0003-lr0.1-s0")
    assert [(f.kind, f.step) for f in faults] == [("nan", 2), ("sigkill", 5)]
    assert [(f.kind, f.step) for f in InjectFault.from_env(tmp_path / "0004-lr0.2-s0")] == [("sigkill", 5)]
    monkeypatch.setenv(ENV, "explode@2")
    with pytest.raises(ValueError, match="kind one of nan, oom, sigint, sigkill"):
        InjectFault.from_env(tmp_path)
