"""The run directory: what it holds, who may write it, and what a new command may do with it.

- A run directory that holds a run (any of :data:`ARTEFACTS`) is never written over by a new run: a
  command without ``--resume`` stops before any work unless ``--overwrite`` says to replace it.
- One process at a time: the first process of a command holds an exclusive ``flock`` on
  ``<run dir>/.lock``. The kernel releases it when the process ends, however it ends, so a killed run
  never leaves the directory locked.
- Only the first process (global rank 0) checks, locks and clears; the other ranks of a distributed run
  start after it and write only what Lightning gives each rank to write.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from blt.config import ConfigError

# what a run writes into its directory (the blt command's entropy stage is a run of its own in entropy/)
ARTEFACTS = (
    "summary.json",
    "metrics.csv",
    "checkpoints",
    "model",
    "tensorboard",
    "entropy",
    "tokenizer.model",
)
LOCK = ".lock"
# temporary files of the atomic writers (checkpoint, summary, metrics, export, tokenizer) killed mid-write
TEMPORARY = re.compile(
    r"^\.(last\.ckpt|summary\.json|metrics\.csv|model\.safetensors|config\.json|tokenizer\.model)\..+"
)


class RunDirectoryError(ConfigError):
    """The run directory cannot be used as asked (it holds a run, is in use, or is not a folder)."""


def check_location(output_dir: Path, run_dir: Path) -> None:
    """The output folder and the run directory must be folders (or not exist yet), not files."""
    for path in (output_dir, *output_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise RunDirectoryError(f"run.output_dir: {path} is a file, not a folder")
            break
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(
            f"run directory {run_dir} is a file, not a folder (choose another --run.name)"
        )


def held(run_dir: Path) -> list[str]:
    """The artefacts of a run that ``run_dir`` holds (none: a new run may start there)."""
    return [name for name in ARTEFACTS if (run_dir / name).exists()]


def refuse_or_clear(run_dir: Path, overwrite: bool) -> None:
    """Before a new run: stop if the directory holds a run, unless ``overwrite`` (then remove it)."""
    found = held(run_dir)
    if not found:
        return
    if not overwrite:
        raise RunDirectoryError(
            f"run directory {run_dir} already holds a run ({', '.join(found)}); continue it with --resume "
            "last, choose another --run.name, or replace it with --overwrite"
        )
    print(f"--overwrite: removing the earlier run in {run_dir} ({', '.join(found)})", flush=True)
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def remove_temporaries(run_dir: Path) -> None:
    """Drop what atomic writers killed mid-write left behind (never read; a checkpoint's may be large)."""
    for path in run_dir.rglob(".*"):
        if path.is_file() and TEMPORARY.match(path.name):
            path.unlink()


@contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (first process only); refuse if another process holds it."""
    if rank_zero_only.rank != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            raise RunDirectoryError(
                f"run directory {run_dir} is in use by another training process"
                + (f" (pid {pid})" if pid else "")
                + "; wait for it to end, or choose another --run.name"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield  # closing the file releases the lock
