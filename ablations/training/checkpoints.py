"""Resuming a run: the last checkpoint every ``train.checkpoint_every`` steps, written atomically, and the rule
for when a run folder's checkpoint may be resumed.

A run resumes from ``<out>/checkpoints/last.ckpt`` when that file loads (``weights_only=True``) and was written
by the same resolved config, up to the fields that do not change what is trained (``RESUME_IGNORES``). Otherwise
it says why in one line and starts clean in a new sibling folder (``<out>.2``, ``<out>.3``, …): the old folder
is never overwritten. What a resumed run continues exactly: weights, optimiser and schedule, Lightning's loops,
the best checkpoints kept, the validation history (``SegmentationSystem``), the training order and
augmentation (``TrainingOrder``), torch's random generators (dropout) and the W&B run (its id is kept in the
folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ablations.ioutil import first_line

LAST = "last"
RUN_ID_FILE = "wandb-run-id"
# Fields that say how a run is executed, not what it trains: a run may resume under other values of these.
RESUME_IGNORES = ("data.num_workers", "data.render", "train.checkpoint_every")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file-size limit, permissions); the previous one is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to ``<name>.partial`` and renames it into place, so that a process killed or a disk
    filled mid-write leaves the previous checkpoint whole (Lightning writes the final path directly)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            cause = os.strerror(error.errno) if error.errno else str(error)
            hint = " (disk full or over a file-size limit)" if error.errno in (errno.ENOSPC, errno.EFBIG) else ""
            raise CheckpointWriteError(
                error.errno, f"cannot write checkpoint {path}: {cause}{hint}; the previous checkpoint is kept"
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class LastCheckpoint(pl.Callback):
    """``checkpoints/last.ckpt``, replaced every ``every`` steps. At a step that is also validated it is written
    after the validation, so that the checkpoint holds that validation (a resumed run does not repeat it)."""

    def __init__(self, out_dir: Path, every: int, val_every: int) -> None:
        self.path, self.every, self.val_every = out_dir / "checkpoints" / f"{LAST}.ckpt", every, val_every

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_index) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step % self.val_every != 0:
            trainer.save_checkpoint(self.path)

    def on_validation_end(self, trainer: pl.Trainer, module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.global_step % self.every == 0:
            trainer.save_checkpoint(self.path)


class RandomState(pl.Callback):
    """torch's generators (CPU, and CUDA when in use) in every checkpoint, put back when the resumed run's training
    starts, so that it draws the same dropout masks as the run it continues."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["cpu"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def config_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``field: old → new`` for every trained-on field that differs between two config dicts."""
    a, b = _flat(before), _flat(now)
    keys = sorted((set(a) | set(b)) - set(RESUME_IGNORES))
    return [f"{k}: {a.get(k, '(unset)')!r} → {b.get(k, '(unset)')!r}" for k in keys if a.get(k) != b.get(k)]


def _fresh_folder(out_dir: Path) -> Path:
    n = 2
    while out_dir.with_name(f"{out_dir.name}.{n}").exists():
        n += 1
    return out_dir.with_name(f"{out_dir.name}.{n}")


def resume_point(config_dict: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None, str | None]:
    """(folder to train in, checkpoint to resume from or None, one line saying what was decided or None)."""
    last = out_dir / "checkpoints" / f"{LAST}.ckpt"
    if not last.is_file():
        if (out_dir / "metrics.json").exists():
            fresh = _fresh_folder(out_dir)
            return fresh, None, f"{out_dir} holds a finished run and no checkpoint to resume; starting in {fresh}"
        return out_dir, None, None
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        stored = checkpoint["hyper_parameters"]["config"]
        step = int(checkpoint["global_step"])
    except Exception as error:  # truncated, corrupt, or not one of ours
        fresh = _fresh_folder(out_dir)
        reason = f"{type(error).__name__}: {first_line(str(error), 160)}"
        return fresh, None, f"not resuming from {last}: it does not load ({reason}); starting clean in {fresh}"
    # A checkpoint written before a field existed stored no value for it: read with today's defaults, so a run
    # resumes unless a field it trained on differs.
    with contextlib.suppress(Exception):
        from ablations.config import ExperimentConfig

        stored = ExperimentConfig.from_dict(stored).to_dict()
    differences = config_differences(stored, config_dict)
    if differences:
        fresh = _fresh_folder(out_dir)
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        return fresh, None, f"not resuming from {last}: written by another config ({shown}); starting clean in {fresh}"
    return out_dir, last, f"resuming from {last} (step {step})"


def wandb_run_id(out_dir: Path, resuming: bool) -> str:
    """The W&B run id of this folder's run: the stored one when resuming, else a new one (stored)."""
    path = out_dir / RUN_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id
