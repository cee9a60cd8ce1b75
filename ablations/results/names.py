"""Every metric and column name the project writes or reads, in one place.

Training (``system``, ``train``), the trial records of a sweep, the benchmark and the reports all use these
names, so that a metric renamed here is renamed everywhere and a report can never look for a column that no
run writes. It imports nothing of the project at import time (``class_names`` reads the dataset module's class
lists when called), so anything may import it.
"""

from __future__ import annotations

# Validation metrics, as the Lightning system logs them (``val/`` + the metric's own key).
VAL = "val/"
MIOU = "val/mIoU"
PIXEL_ACC = "val/pixel_acc"
MIOU_SMALL = "val/mIoU_small"
MIOU_MEDIUM = "val/mIoU_medium"
MIOU_LARGE = "val/mIoU_large"
BOUNDARY_MIOU = "val/boundary_mIoU"
CLASS_IOU = "val/IoU/"  # + class name
SIZE_MIOUS = (MIOU_SMALL, MIOU_MEDIUM, MIOU_LARGE)
# With eval.crf: the val/* metrics are after the dense CRF; the same predictions before it are val/before_crf/*,
# and the CRF's own time (on the CPU, per validation image, at the input's resolution).
BEFORE_CRF = "val/before_crf/"
MIOU_BEFORE_CRF = "val/before_crf/mIoU"
BOUNDARY_MIOU_BEFORE_CRF = "val/before_crf/boundary_mIoU"
CRF_MS = "val/crf_ms_per_image"

# Training.
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_IPS = "train/images_per_s"
TRAIN_STEP_S = "train/step_time_s"
TRAIN_MFU = "train/mfu"
PEAK_FLOPS = "peak_flops"  # the device's dense peak FLOP/s that train/mfu is relative to
PEAK_FLOPS_SOURCE = "peak_flops_source"  # where that peak comes from (ablations.hardware or Lightning's table)
# Where a run's wall time goes: the optimisation steps (warm-up included), everything else (setup, W&B, loaders,
# validation, checkpoints), and the waits between steps (loader and hooks) with their share of steps + waits.
TRAIN_TIME_S = "train_time_s"
OVERHEAD_S = "overhead_s"
DATA_WAIT_S = "data_wait_s"
DATA_WAIT_SHARE = "data_wait_share"
# A sweep trial's own clock, from its claim to its recorded metrics (the training run inside it, plus the config,
# the statistics and the inference figures), the part of it outside the optimiser steps, and that part over the
# optimiser-step time (the target: ≤ 0.10).
TRIAL_S = "trial_time_s"
TRIAL_OVERHEAD_S = "trial_overhead_s"
TRIAL_OVERHEAD_SHARE = "trial_overhead_share"

# Inference cost of a trial's config as it evaluates (eval output stride, scales, flip).
INFER_IPS = "infer/images_per_s"
INFER_LATENCY_MS = "infer/latency_ms"
INFER_PEAK_MB = "infer/peak_memory_mb"
INFER_MACS = "infer/macs"
INFER_ERROR = "infer/error"

# Run facts.
PEAK_MB = "peak_memory_mb"
PARAMS = "params"
MACS = "macs"
RECEPTIVE_FIELD = "receptive_field"
OUTPUT_STRIDE = "output_stride"
BEST_STEP = "best_step"
# The compared value is the last validation's (``val/*`` at ``final_step``, the trial's last step); the best
# validation stays as a record (its step, its mIoU and its checkpoint), never as the result.
FINAL_STEP = "final_step"
BEST_MIOU = "best/val/mIoU"
THREADS = "threads"  # the intra-op CPU threads the trial trained with (train.threads, or the process's own)
ONEDNN = "onednn"  # whether CPU convolutions ran through oneDNN (train.onednn)
VALIDATIONS = "validations"  # a trial's every validation: [{step, val/*…}], its user attribute in the storage
DEVICE = "device"
PRECISION = "precision"
CHANNELS_LAST = "channels_last"
COMPILE = "compile"
DETERMINISTIC = "deterministic"  # train.deterministic resolved
CUDNN_BENCHMARK = "cudnn_benchmark"  # train.cudnn_benchmark resolved
TF32_CUDNN = "tf32_cudnn"  # fp32 convolutions may run in TF32 (torch.backends.cudnn.allow_tf32); None on a CPU
TF32_MATMUL = "tf32_matmul"  # fp32 matmuls may (torch.backends.cuda.matmul.allow_tf32); None on a CPU
WALL_S = "wall_time_s"
WANDB_RUN_DIR = "wandb_run_dir"
BEST_CHECKPOINT = "best_checkpoint"

# What a sweep trial keeps from a run's metrics.json (the rest stays in the run folder and in W&B).
KEPT_METRICS = (
    MIOU,
    PIXEL_ACC,
    MIOU_SMALL,
    MIOU_MEDIUM,
    MIOU_LARGE,
    BOUNDARY_MIOU,
    MIOU_BEFORE_CRF,
    BOUNDARY_MIOU_BEFORE_CRF,
    CRF_MS,
    TRAIN_IPS,
    TRAIN_STEP_S,
    TRAIN_MFU,
    PRECISION,
    CHANNELS_LAST,
    COMPILE,
    PEAK_MB,
    PARAMS,
    BEST_STEP,
    FINAL_STEP,
    BEST_MIOU,
    THREADS,
    ONEDNN,
    DEVICE,
    WALL_S,
    TRAIN_TIME_S,
    OVERHEAD_S,
    DATA_WAIT_S,
    DATA_WAIT_SHARE,
    WANDB_RUN_DIR,
    BEST_CHECKPOINT,
)

# Columns of a trial frame (one row per trial; ``reports/data/<study>.csv``). Metrics follow these.
TRIAL = "trial"
STATE = "state"
ARM = "arm"
SEED = "seed"
FAILURE = "failure"
DURATION_S = "duration_s"
COMMIT = "commit"  # of the code that ran the trial
PARAM = "param:"  # + sampled parameter name
TRIAL_COLUMNS = (TRIAL, STATE, ARM, SEED, FAILURE, DURATION_S)
REQUIRED_COLUMNS = (*TRIAL_COLUMNS, MIOU)

# Failure kinds a sweep records. These stand as results (never re-run unless asked); the others are re-run.
# "preempted": a trial a SLURM worker was stopped in more often than max_preemptions (ablations.sweep.slurm).
FINISHED_FAILURES = ("diverged", "out_of_memory", "error", "preempted")
RETRIED_FAILURES = ("interrupted", "bad_input", "disk_full")

# Trial states as Optuna names them.
COMPLETE, FAIL, PRUNED, RUNNING, WAITING = "COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING"

# Columns of the speed frame (one interleaved ``ablations bench`` run over a study's arms).
SPEED_TRAIN_IPS = "bench/train_images_per_s"
SPEED_INFER_IPS = "bench/infer_images_per_s"
SPEED_INFER_LATENCY_MS = "bench/infer_latency_ms"
SPEED_COLUMNS = (ARM, SPEED_TRAIN_IPS, SPEED_INFER_IPS, SPEED_INFER_LATENCY_MS, INFER_MACS)

# How each metric is shown in a table: label and float format.
LABELS = {
    MIOU: ("mIoU", ".4f"),
    PIXEL_ACC: ("pixel acc", ".4f"),
    MIOU_SMALL: ("small", ".3f"),
    MIOU_MEDIUM: ("medium", ".3f"),
    MIOU_LARGE: ("large", ".3f"),
    BOUNDARY_MIOU: ("boundary mIoU", ".3f"),
    TRAIN_IPS: ("train img/s (trial)", ".1f"),
    INFER_IPS: ("infer img/s (trial)", ".1f"),
    SPEED_TRAIN_IPS: ("train img/s", ".1f"),
    SPEED_INFER_IPS: ("infer img/s", ".1f"),
}


# The metrics of a config's runs (an ``ablations.config.ExperimentConfig``), without running or building anything.


def run_metrics(config) -> set[str]:
    """The numeric metrics a trial of ``config`` records, i.e. what an objective may name: the validation
    metrics (per-size mIoU on the embedded benchmark only, one ``val/IoU/<class>`` per class of the dataset),
    training throughput (MFU on a GPU only), the run facts, the architecture statistics and the inference
    figures."""
    found = {
        MIOU,
        PIXEL_ACC,
        BOUNDARY_MIOU,
        TRAIN_IPS,
        TRAIN_STEP_S,
        PEAK_MB,
        PARAMS,
        BEST_STEP,
        FINAL_STEP,
        BEST_MIOU,
        THREADS,
        WALL_S,
        MACS,
        RECEPTIVE_FIELD,
        OUTPUT_STRIDE,
        INFER_IPS,
        INFER_LATENCY_MS,
        INFER_PEAK_MB,
        INFER_MACS,
        TRAIN_TIME_S,
        OVERHEAD_S,
        DATA_WAIT_S,
        DATA_WAIT_SHARE,
        TRIAL_S,
        TRIAL_OVERHEAD_S,
        TRIAL_OVERHEAD_SHARE,
    }
    data = config.data
    if data.name == "synthetic":
        found |= set(SIZE_MIOUS)
    if config.train.uses_gpu():
        found.add(TRAIN_MFU)
    if config.eval.crf:
        found |= {MIOU_BEFORE_CRF, BOUNDARY_MIOU_BEFORE_CRF, CRF_MS}
    found |= {CLASS_IOU + c for c in class_names(config)}
    return found


def class_names(config) -> tuple[str, ...]:
    """The class names a run of ``config`` reports per-class IoU under (without touching the dataset)."""
    from ablations.data import SIZE_BUCKETS, SYNTHETIC_SHAPES

    data = config.data
    if data.name == "synthetic":
        return ("background", *(SIZE_BUCKETS[1:] if data.class_by == "size" else data.shapes or SYNTHETIC_SHAPES))
    if data.name == "folder":
        return tuple(f"class{i}" for i in range(config.head.num_classes))
    from ablations.data.datasets import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES

    return {"voc": VOC_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES}[data.name]
