"""The peak FLOP/s table (dense datasheet figures, device names as torch reports them) and the MFU it gives, in
training and in the benchmark, without a GPU: device names are faked."""

from __future__ import annotations

import pytest
import torch

from ablations import hardware
from ablations.results import names

# As torch.cuda.get_device_name reports them → the table's row.
REPORTED = {
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA A100-SXM4-80GB": "A100 SXM",
    "NVIDIA A100-SXM4-40GB": "A100 SXM",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe",
    "NVIDIA A100 80GB PCIe": "A100 PCIe",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA GeForce RTX 4090": "GeForce RTX 4090",
}
DATA_CENTRE = [n for n, row in REPORTED.items() if "RTX" not in row]


@pytest.mark.parametrize(("reported", "row"), REPORTED.items())
def test_every_listed_gpu_resolves_to_its_own_row(reported, row):
    gpu = hardware.find_gpu(reported)
    assert gpu is not None and gpu.name == row
    assert gpu.source and gpu.url.startswith("https://")
    for precision in hardware.PRECISIONS:
        assert hardware.peak_flops(reported, precision, tf32=False) == getattr(gpu, precision) * 1e12


def test_h200_is_listed_and_nvl_and_pcie_are_not_taken_for_sxm():
    assert hardware.peak_flops("NVIDIA H200", "bf16-mixed", tf32=False) == pytest.approx(989.4e12)
    assert hardware.peak_flops("NVIDIA H200 NVL", "bf16-mixed", tf32=False) == pytest.approx(835.5e12)
    assert hardware.peak_flops("NVIDIA H100 NVL", "bf16-mixed", tf32=False) == pytest.approx(835e12)
    assert hardware.peak_flops("NVIDIA H100 PCIe", "bf16-mixed", tf32=False) == pytest.approx(756e12)
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed", tf32=False) == pytest.approx(989.4e12)
    # Dense figures: half the datasheets' "with sparsity" ones (H100 SXM: 1,979 bf16 TFLOP/s with sparsity).
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "bf16", tf32=False) < 1.0e15


@pytest.mark.parametrize("reported", DATA_CENTRE)
def test_tensor_core_precisions_outrun_fp32_on_data_centre_parts(reported):
    gpu = hardware.find_gpu(reported)
    assert gpu.bf16 == gpu.fp16 > gpu.tf32 > gpu.fp32 > 0


def test_unknown_devices_and_precisions_have_no_peak():
    for name in ("NVIDIA L40", "NVIDIA GH200 480GB", "Tesla T4", "NVIDIA GeForce RTX 4090 Laptop GPU", "cpu: x"):
        assert hardware.find_gpu(name) is None and hardware.peak_flops(name, "bf16-mixed", tf32=True) is None
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "64-true", tf32=False) is None


def test_fp32_with_tf32_on_uses_the_tf32_peak():
    h100 = "NVIDIA H100 80GB HBM3"
    assert hardware.peak_flops(h100, "32-true", tf32=True) == hardware.peak_flops(h100, "tf32", tf32=False) == 494.7e12
    assert hardware.peak_flops(h100, "fp32", tf32=False) == 67e12
    assert hardware.peak_flops(h100, "bf16-mixed", tf32=True) == hardware.peak_flops(h100, "bf16", tf32=False)
    assert hardware.peak_flops(h100, "16-mixed", tf32=True) == hardware.peak_flops(h100, "fp16", tf32=False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """``torch.cuda.get_device_name`` answering the name the test sets."""
    name = {"value": "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name["value"])
    return name


def test_device_peak_comes_from_the_table_then_lightning_then_nothing(fake_gpu, monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert hardware.device_peak_flops(cuda, "32-true") == (494.7e12, hardware.TABLE_SOURCE)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert hardware.device_peak_flops(cuda, "32-true") == (67e12, hardware.TABLE_SOURCE)
    fake_gpu["value"] = "Tesla T4"  # not in the table; in Lightning's
    assert hardware.device_peak_flops(cuda, "16-mixed") == (65e12, hardware.LIGHTNING_SOURCE)
    fake_gpu["value"] = "NVIDIA Imaginary X1"  # in neither
    assert hardware.device_peak_flops(cuda, "bf16-mixed") == (None, None)
    assert hardware.device_peak_flops(torch.device("cpu"), "bf16-mixed") == (None, None)


def test_training_mfu_is_against_the_table_peak(fake_gpu):
    from ablations.training.train import Throughput

    throughput = Throughput(warmup=0)
    throughput.set_peak(torch.device("cuda"), "bf16-mixed")
    throughput.flops_per_step = int(2e14)
    throughput.step_times = [0.5, 1.0, 2.0]  # median 1 s: 2e14 FLOP/s of 989.4e12
    throughput.images = 12
    throughput.train_time_s, throughput.data_wait_s = 4.0, 1.0
    summary = throughput.summary()
    assert summary[names.TRAIN_MFU] == pytest.approx(2e14 / 989.4e12)
    assert summary[names.PEAK_FLOPS] == 989.4e12 and summary[names.PEAK_FLOPS_SOURCE] == hardware.TABLE_SOURCE
    assert summary[names.TRAIN_IPS] == pytest.approx(12 / 3.5) and summary[names.TRAIN_STEP_S] == 1.0
    assert summary[names.DATA_WAIT_SHARE] == pytest.approx(0.2)
    assert set(throughput.speed()) == {names.TRAIN_IPS, names.TRAIN_STEP_S, names.TRAIN_MFU}  # what is logged


def test_benchmark_mfu_is_against_the_table_peak(fake_gpu, monkeypatch):
    from ablations import bench
    from ablations.bench import runner

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert bench.peak_flops_and_source(torch.device("cuda"), "fp32") == (494.7e12, hardware.TABLE_SOURCE)
    assert bench.tf32_enabled(torch.device("cuda")) is True and bench.tf32_enabled(torch.device("cpu")) is None
    entry = runner._Entry(
        row={"name": "x"}, method=bench.Method(precision="bf16"), flops_per_step=int(1e12), times=[0.01, 0.01]
    )
    entry.per_repeat = [100.0]
    row = runner._finish(entry, torch.device("cuda"))
    assert row["mfu"] == pytest.approx(1e12 / 0.01 / 989.4e12)
    assert row["peak_flops_source"] == hardware.TABLE_SOURCE
