"""A run's logs, ``metrics.csv`` and TensorBoard, continued across resumes and never left half written.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty and appends rows as they
come. Here the rows stay in memory and the whole file is rewritten atomically at every checkpoint
(:meth:`MetricsCSV.flush`), and each checkpoint records how many rows it covers. A run resumed from a
checkpoint starts from that many rows of the file: the rows logged after it and before a kill are logged
again by the resumed run, so they are replaced, never doubled.

TensorBoard reads every event file of a folder as one run; a resumed run writes its events into the same
folder with ``purge_step`` at its first step, which hides the earlier events from that step on.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from blt.checkpoint import atomic_write

METRICS = "metrics.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics file written by :class:`MetricsFile` (none if there is no file)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        # an empty cell is a metric this row did not log: drop it so the header is rebuilt exactly
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class MetricsFile:
    """The rows of ``metrics.csv``: the first ``keep`` rows already in it, then this run's rows."""

    def __init__(self, path: Path, keep: int):
        self.path = path
        self.rows: list[dict[str, Any]] = read_rows(path)[:keep] if keep else []

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self.rows) if step is None else step
        self.rows.append(row)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Nothing: summary.json and every checkpoint record the configuration."""

    def save(self) -> None:
        keys = sorted(set().union(*self.rows)) if self.rows else ["step"]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.rows)
                f.flush()
                os.fsync(f.fileno())

        atomic_write(self.path, write)


class MetricsCSV(CSVLogger):
    """Lightning's CSV logger writing ``<run dir>/metrics.csv`` through :class:`MetricsFile`."""

    def __init__(self, run_dir: Path, keep: int):
        super().__init__(run_dir, name="", version="")
        self.keep = keep

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsFile:
        if self._experiment is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = MetricsFile(Path(self.log_dir) / METRICS, self.keep)
        return self._experiment

    @rank_zero_only
    def save(self) -> None:
        """Nothing: Lightning calls it after every row; the file is written at checkpoints (:meth:`flush`)."""

    @rank_zero_only
    def flush(self) -> None:
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.flush()

    @property
    def rows(self) -> int:
        """Rows logged so far, kept ones included (on the first process; 0 elsewhere)."""
        return len(self.experiment.rows) if rank_zero_only.rank == 0 else 0


def after_earlier_events(folder: Path) -> None:
    """Wait, if need be, until a new event file would sort after every one in ``folder``.

    TensorBoard reads a run's event files in name order, and a name starts with the second it was made in;
    a resumed run's file made in the same second as the killed run's could sort first, and then the purge
    of the steps after the resumed checkpoint would be applied before the steps it must remove."""
    stamps = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*") if p.name.split(".")[3].isdigit()]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.05)


def loggers(run_dir: Path, keep_rows: int, first_step: int) -> list:
    """metrics.csv keeping ``keep_rows`` earlier rows, and TensorBoard continuing at ``first_step``."""
    after_earlier_events(run_dir / "tensorboard")
    return [
        MetricsCSV(run_dir, keep_rows),
        TensorBoardLogger(run_dir, name="tensorboard", version="", purge_step=first_step),
    ]
