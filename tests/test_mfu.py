"""MFU: the peak FLOP/s of a device (data sheet by GPU name, else a measured matmul) and both MFUs the
Throughput callback logs. GPU names are mocked: nothing here needs a GPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from blt.config import EntropyModelConfig
from blt.data import DataConfig
from blt.eval.flops import entropy_flops_per_byte, non_embedding_params, six_n_flops_per_byte
from blt.patcher import EntropyModel
from blt.training import callbacks
from blt.training.callbacks import KNOWN_PEAKS, Throughput, known_peak, peak_flops, precision_dtype

CUDA = torch.device("cuda", 0)  # a device object needs no GPU; every query about it is mocked below

# names as torch.cuda.get_device_name reports them -> (dense bf16, fp32) peak of the data sheet
GPUS = {
    "NVIDIA A100-SXM4-80GB": (312e12, 19.5e12),
    "NVIDIA A100-PCIE-40GB": (312e12, 19.5e12),
    "NVIDIA A100 80GB PCIe": (312e12, 19.5e12),
    "NVIDIA H100 80GB HBM3": (989e12, 67e12),
    "NVIDIA H100 PCIe": (756e12, 51e12),
    "NVIDIA H100 NVL": (835e12, 60e12),
    "NVIDIA H200": (989e12, 67e12),
    "NVIDIA H200 NVL": (835e12, 60e12),
    "NVIDIA B200": (2250e12, 75e12),
    "NVIDIA L40S": (362e12, 91.6e12),
    "NVIDIA L40": (181e12, 90.5e12),
    "NVIDIA L4": (121e12, 30.3e12),
}


@pytest.fixture
def gpu_named(monkeypatch):
    """``gpu_named(name)``: torch.cuda reports that name; measuring a peak is refused unless allowed."""

    def name(value: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: value)

    def no_measuring(*args, **kwargs):
        raise AssertionError("a GPU in the table must not be measured")

    monkeypatch.setattr(callbacks, "measured_peak", no_measuring)
    return name


@pytest.mark.parametrize("name", GPUS)
def test_peak_of_each_listed_gpu_by_name(name, gpu_named):
    gpu_named(name)
    bf16, fp32 = GPUS[name]
    assert peak_flops(CUDA, "bf16-mixed") == bf16
    assert peak_flops(CUDA, "bf16-true") == bf16
    assert peak_flops(CUDA, "16-mixed") == bf16  # fp16 runs at the bf16 rate
    assert peak_flops(CUDA, "32-true") == fp32
    assert peak_flops(CUDA, "32") == fp32


def test_peak_table_lists_the_datacenter_gpus():
    for key in ("A100", "H100", "H100 PCIe", "H100 NVL", "H200", "B200", "L40S"):
        assert key in KNOWN_PEAKS


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA H800", "NVIDIA L20", "Tesla T4"])
def test_names_are_matched_on_whole_words(name):
    assert known_peak(name, torch.bfloat16) is None  # "H200" is not "GH200", "L4" not "L40S" or "L20"


def test_unknown_gpu_gets_a_measured_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Mystery 9000")
    calls = []

    def measured(device, dtype):
        calls.append((device, dtype))
        return 123e12

    monkeypatch.setattr(callbacks, "measured_peak", measured)
    assert peak_flops(CUDA, "bf16-mixed") == 123e12
    assert peak_flops(CUDA, "32-true") == 123e12
    assert calls == [(CUDA, torch.bfloat16), (CUDA, torch.float32)]


def test_fp64_is_measured_even_on_a_known_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(
        callbacks, "measured_peak", lambda device, dtype: 7e12 if dtype == torch.float64 else 0
    )
    assert peak_flops(CUDA, "64-true") == 7e12


def test_cpu_peak_is_measured_in_the_training_dtype(monkeypatch):
    calls = []
    monkeypatch.setattr(
        callbacks, "measured_peak", lambda device, dtype: calls.append((device.type, dtype)) or 1.0
    )
    peak_flops(torch.device("cpu"), "32-true")
    peak_flops(torch.device("cpu"), "bf16-mixed")
    assert calls == [("cpu", torch.float32), ("cpu", torch.bfloat16)]


def test_measured_peak_runs_a_real_matmul():
    for dtype in (torch.float32, torch.bfloat16):
        peak = callbacks.measured_peak("cpu", dtype, size=64, trials=2)
        assert peak > 0 and peak != float("inf")


@pytest.mark.parametrize(
    "precision, dtype",
    [
        ("bf16-mixed", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("32-true", torch.float32),
        ("64-true", torch.float64),
    ],
)
def test_precision_dtype(precision, dtype):
    assert precision_dtype(precision) == dtype


class FakeTask(SimpleNamespace):
    """What Throughput reads of a training task (blt.training.modules.EntropyTask's attributes)."""

    def training_flops_per_byte(self) -> float:
        return entropy_flops_per_byte(self.config, self.data.seq_len).training_flops_per_byte

    def log(self, name, value, **kwargs) -> None:
        self.logged[name] = value


def test_throughput_logs_both_mfus():
    config = EntropyModelConfig(dim=16, n_layers=2, n_heads=2, ffn_dim=32, window=None)
    model = EntropyModel(config)
    task = FakeTask(
        kind="entropy", model=model, config=config, data=DataConfig(seq_len=64), device=torch.device("cpu"),
        last_batch_bytes=4096, logged={},
    )  # fmt: skip
    trainer = SimpleNamespace(world_size=2, precision="32-true")
    callback = Throughput(peak=1e9)
    callback.setup(trainer, task, "fit")
    callback.on_train_start(trainer, task)
    callback.on_train_batch_end(trainer, task, None, None, 0)
    rate = task.logged["bytes_per_s"]
    assert task.logged["mfu"] == pytest.approx(rate * task.training_flops_per_byte() / 2e9)
    six_n = six_n_flops_per_byte(config, non_embedding_params(model), 64)
    assert task.logged["mfu_6n"] == pytest.approx(rate * six_n / 2e9)
    # the 6N figure counts every key of the context: above the paper's count, by less than 2x
    assert 1 < task.logged["mfu_6n"] / task.logged["mfu"] < 2


def test_throughput_leaves_out_mfu_6n_for_other_modules():
    task = FakeTask(
        last_batch_bytes=10, logged={}, device=torch.device("cpu"), training_flops_per_byte=lambda: 5.0
    )
    trainer = SimpleNamespace(world_size=1, precision="32-true")
    callback = Throughput(peak=1e9)
    callback.setup(trainer, task, "fit")
    callback.on_train_start(trainer, task)
    callback.on_train_batch_end(trainer, task, None, None, 0)
    assert "mfu" in task.logged and "mfu_6n" not in task.logged
