"""Lightning plumbing of a run: atomic checkpoints, the periodic "last" checkpoint, throughput and MFU."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from blt.eval.flops import blt_params, blt_six_n_flops_per_byte, non_embedding_params, six_n_flops_per_byte

LAST = "last.ckpt"
STATE_KEY = "blt_training"  # our entry in a Lightning checkpoint

# Dense (no sparsity) bf16 tensor-core and fp32 (CUDA-core) peak FLOP/s per GPU, from the vendors' data
# sheets. Keys match torch.cuda.get_device_name on whole words, the longest matching key winning: "H100"
# is the SXM part ("NVIDIA H100 80GB HBM3"), "H100 PCIe" and "H100 NVL" the cards; "L4" never matches
# "L40S". fp16 runs at the bf16 rate on all of them. fp32 is the rate without TF32: with TF32 matmuls
# enabled, pass run.peak_flops instead.
KNOWN_PEAKS = {
    "A100": (312e12, 19.5e12),  # SXM and PCIe
    "H100": (989e12, 67e12),  # SXM5
    "H100 PCIe": (756e12, 51e12),
    "H100 NVL": (835e12, 60e12),
    "H200": (989e12, 67e12),  # SXM
    "H200 NVL": (835e12, 60e12),
    "B200": (2250e12, 75e12),  # HGX B200
    "L40S": (362e12, 91.6e12),
    "L40": (181e12, 90.5e12),
    "A10G": (125e12, 31.2e12),
    "L4": (121e12, 30.3e12),
    "V100": (125e12, 15.7e12),  # no bf16 tensor cores: the first figure is fp16's
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
}


@rank_zero_only
def say(text: str = "") -> None:
    """Print on the first process only."""
    print(text, flush=True)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file of the same folder, fsync, then rename over the target.

    A process killed mid-write leaves at most a stray temporary file, never a truncated checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class LastCheckpoint(L.Callback):
    """Write ``<folder>/last.ckpt`` every ``every`` optimizer steps, after the step so it is resumable.

    The state is taken right after the step (``on_train_batch_end``), but the file is written only once
    Lightning has logged that batch's metrics (at the next batch's start, or when training ends), right
    after ``metrics.csv`` is flushed: the checkpoint records how many metrics rows it covers, and a run
    resumed from it keeps exactly those rows. When validation runs after the same batch, the checkpoint
    waits for it (as Lightning's own checkpoints do): a resumed run skips that validation, so the
    checkpoint must already hold its result.
    """

    def __init__(self, folder: str | Path, every: int, val_every: int):
        self.path = Path(folder) / LAST
        self.every, self.val_every = every, val_every
        self.saved_step = -1
        self._pending = False  # waiting for this batch's validation
        self._held: dict[str, Any] | None = None  # taken, waiting for this batch's metrics rows

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # step 0 is never saved: with gradient accumulation it would hold a half-accumulated step
        if step > 0 and step % self.every == 0 and step != self.saved_step:
            if (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % self.val_every == 0:
                self._pending = True
            else:
                self._held = self.state(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pending and trainer.state.fn == "fit":
            self._pending = False
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Take the state and write it now (every rank calls it: FSDP gathers; rank 0 writes)."""
        self._held = self.state(trainer)
        self.write(trainer)

    def state(self, trainer: L.Trainer) -> dict[str, Any]:
        # what Trainer.save_checkpoint writes, taken now: nothing changes the tensors it holds before
        # the next optimizer step, which comes after the write
        return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)

    def write(self, trainer: L.Trainer) -> None:
        if self._held is None:
            return
        metrics = next((lg for lg in trainer.loggers if hasattr(lg, "flush")), None)
        if metrics is not None:
            metrics.flush()  # the rows the checkpoint covers are on disk before it is
            self._held[STATE_KEY]["metrics_rows"] = metrics.rows
        trainer.strategy.save_checkpoint(self._held, self.path)
        trainer.strategy.barrier("LastCheckpoint.write")
        self.saved_step, self._held = self._held["global_step"], None


def measured_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    trials: int = 5,
) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype``, the best of a few trials (other processes may
    share the device): the peak of devices without a data-sheet value, the CPU and unknown GPUs."""
    device = torch.device(device)
    size = size or (1024 if device.type == "cpu" else 4096)
    reps = 1 if device.type == "cpu" else 20  # GPU matmuls take microseconds: time a burst of them
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def burst() -> float:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    burst()  # warm-up: kernel selection, allocator
    return 2 * size**3 * reps / min(burst() for _ in range(trials))


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting ("bf16-mixed", "16-mixed", "32-true", ...)."""
    if "bf16" in precision:
        return torch.bfloat16
    if "16" in precision:
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def _names(key: str, name: str) -> bool:
    """Whether device name ``name`` holds ``key`` as whole words (a space in the key may be a hyphen)."""
    words = r"[ -]".join(re.escape(word) for word in key.split())
    return re.search(rf"(?<![a-z0-9]){words}(?![a-z0-9])", name, re.IGNORECASE) is not None


def known_peak(name: str, dtype: torch.dtype) -> float | None:
    """The data-sheet peak of a GPU called ``name`` for matmuls in ``dtype`` (None: not in the table)."""
    matches = [key for key in KNOWN_PEAKS if _names(key, name)]
    if not matches or dtype == torch.float64:
        return None
    bf16, fp32 = KNOWN_PEAKS[max(matches, key=len)]
    return fp32 if dtype == torch.float32 else bf16


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device for MFU: the data sheet's for known GPUs, else measured by a matmul
    (the CPU, unknown GPUs); None for other device types."""
    dtype = precision_dtype(precision)
    if device.type == "cuda":
        peak = known_peak(torch.cuda.get_device_name(device), dtype)
        return peak if peak is not None else measured_peak(device, dtype)
    if device.type == "cpu":
        return measured_peak(device, torch.float32 if dtype == torch.float64 else dtype)
    return None


def six_n_rule(task) -> Callable[[], float] | None:
    """The 6N figure per byte of a training task (:mod:`blt.training.modules`), as a function of its state.

    Parameters are counted now (before a strategy shards them); a BLT's figure follows its mean patch
    size as training goes on. None for a module that is not one of the package's tasks.
    """
    kind = getattr(task, "kind", None)
    if kind not in ("entropy", "blt", "baseline"):
        return None
    context = task.data.seq_len
    if kind == "blt":
        local, global_ = blt_params(task.model)
        return lambda: blt_six_n_flops_per_byte(
            task.config, local, global_, task.mean_patch_size(task.patch_sums), context
        )
    n = non_embedding_params(task.model)
    per_token = getattr(task, "bytes_per_token", 1.0)  # the baseline's bytes per BPE token
    return lambda: six_n_flops_per_byte(task.config, n, context, per_token)


class Throughput(L.Callback):
    """Bytes per second over all ranks and model FLOPs utilisation, in the progress bar and the logs.

    The module reports the bytes of each batch (``last_batch_bytes``, summed over ranks); MFU is the
    training FLOPs per byte times bytes/s over (peak per device x devices), with two FLOP counts:

    - ``mfu``: the BLT paper's accounting (``training_flops_per_byte()``, :mod:`blt.eval.flops`): 3x the
      forward matrix products of the config, attention over the keys a causal query actually attends to
      (``(T + 1) / 2`` on average, or its window), embeddings 0, the global model once per patch;
    - ``mfu_6n``: the 6N figure of torchtitan and nanoGPT (:func:`blt.eval.flops.six_n_flops_per_token`):
      6 x non-embedding parameters + 12 x layers x width x context, every key of the context counted, so
      a little higher, and comparable with what those code bases report.

    The peak is the data sheet's dense figure for the precision (``KNOWN_PEAKS``), or measured by a
    matmul on the CPU and on GPUs the table does not know.
    """

    def __init__(self, peak: float | None, smoothing: float = 0.9):
        self.peak = peak
        self.smoothing = smoothing
        self.rate: float | None = None
        self.six_n: Callable[[], float] | None = None
        self._last: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.six_n = six_n_rule(pl_module)  # runs before the strategy wraps (and FSDP shards) the model

    def on_train_start(self, trainer, pl_module) -> None:
        if self.peak is None:
            self.peak = peak_flops(pl_module.device, str(trainer.precision))
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        rate = pl_module.last_batch_bytes / max(now - self._last, 1e-9)
        self._last = now
        self.rate = rate if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * rate
        pl_module.log("bytes_per_s", self.rate, prog_bar=True, rank_zero_only=True)
        if self.peak:
            capacity = self.peak * trainer.world_size
            mfu = self.rate * pl_module.training_flops_per_byte() / capacity
            pl_module.log("mfu", mfu, prog_bar=True, rank_zero_only=True)
            if self.six_n is not None:
                pl_module.log("mfu_6n", self.rate * self.six_n() / capacity, rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()  # validation time is not training throughput
