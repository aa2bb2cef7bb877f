"""Lightning plumbing of a run: atomic checkpoints, the periodic "last" checkpoint, throughput and MFU."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

LAST = "last.ckpt"
STATE_KEY = "blt_training"  # our entry in a Lightning checkpoint

# dense bf16 / fp32 peak FLOP/s of common accelerators (vendor data sheets, without sparsity)
KNOWN_PEAKS = {
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "A10G": (125e12, 31.2e12),
    "L4": (121e12, 30.3e12),
    "V100": (125e12, 15.7e12),
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


def measured_cpu_peak(size: int = 1024, trials: int = 5) -> float:
    """FLOP/s of a float32 matmul on this CPU, the best of a few trials (other processes may share it)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device for MFU: a data-sheet value for known GPUs, measured on CPU, else None."""
    if device.type == "cpu":
        return measured_cpu_peak()
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, fp32) in KNOWN_PEAKS.items():
        if key in name:
            return fp32 if precision.startswith("32") else bf16
    return None


class Throughput(L.Callback):
    """Bytes per second over all ranks and model FLOPs utilisation, in the progress bar and the logs.

    The module reports the bytes of each batch (``last_batch_bytes``, summed over ranks) and its training
    FLOPs per byte (``training_flops_per_byte()``); MFU = FLOPs/s / (peak per device * devices).
    """

    def __init__(self, peak: float | None, smoothing: float = 0.9):
        self.peak = peak
        self.smoothing = smoothing
        self.rate: float | None = None
        self._last: float | None = None

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
            mfu = self.rate * pl_module.training_flops_per_byte() / (self.peak * trainer.world_size)
            pl_module.log("mfu", mfu, prog_bar=True, rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()  # validation time is not training throughput
