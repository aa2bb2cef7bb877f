"""Run ``train.py`` and SIGKILL it at a chosen point, as a crash or a preemption would.

    python tests/kill_at.py POINT N train-arguments...

POINT (N counts its occurrences in the process, from 1):

- ``step``: at the start of the Nth training step (any stage);
- ``checkpoint``: in the middle of the Nth checkpoint write (half of it in the temporary file);
- ``export``: in the middle of writing the Nth exported model's weights;
- ``summary``: in the middle of writing the Nth summary.json;
- ``calibrate``: when the blt command starts calibrating (between its entropy and BLT stages).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from blt.checkpoint import files as ckpt
from blt.training import callbacks, modules, pipeline, run
from blt.training.cli import main

POINT, N = sys.argv[1], int(sys.argv[2])
calls = 0


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def nth() -> bool:
    global calls
    calls += 1
    return calls == N


def half_then_die(tmp: str) -> None:
    with open(tmp, "wb") as f:
        f.write(b"half a file")
        f.flush()
        os.fsync(f.fileno())
    die()


def patch() -> None:
    if POINT == "step":
        step = modules.LMTask.training_step

        def training_step(self, batch, batch_idx):
            if nth():
                die()
            return step(self, batch, batch_idx)

        modules.LMTask.training_step = training_step
    elif POINT == "checkpoint":
        save = torch.save

        def torch_save(obj, f, *a, **k):
            if isinstance(obj, dict) and callbacks.STATE_KEY in obj and nth():
                f.write(b"half a checkpoint")
                f.flush()
                die()
            return save(obj, f, *a, **k)

        callbacks.torch.save = torch_save
    elif POINT == "export":
        save_file = ckpt.save_file
        ckpt.save_file = lambda state, tmp, **k: half_then_die(tmp) if nth() else save_file(state, tmp, **k)
    elif POINT == "summary":
        write = run.atomic_write
        run.atomic_write = lambda path, fn: write(path, half_then_die) if nth() else write(path, fn)
    elif POINT == "calibrate":
        pipeline.calibrate = lambda *a: die()
    else:
        raise SystemExit(f"unknown point {POINT!r}")


if __name__ == "__main__":
    patch()
    sys.exit(main(sys.argv[3:]))
