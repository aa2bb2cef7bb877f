"""Fault injection: a blt run killed (SIGKILL) at several points and resumed with --resume last ends with
exactly the files of an uninterrupted run: bitwise-equal weights, the same metrics.csv and summary.json.

Each killed run is a subprocess (tests/kill_at.py picks the moment); the reference and the resumes run in
this process. The runs are tiny: 4 entropy steps, then 4 BLT steps, a checkpoint every 2 steps and a
validation every 3 batches (so checkpoints are written both with and without a validation before them).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_train import REPO, tiny_flags

from blt.training.cli import main

TINY = [
    *tiny_flags(global_dim=32, val_batches=1),
    "--trainer.max_steps", "4", "--trainer.val_check_interval", "3", "--run.checkpoint_every", "2",
    "--run.sample_bytes", "0", "--run.name", "run",
]  # fmt: skip
TIMING = ("bytes_per_s", "mfu", "mfu_6n")  # wall-clock metrics: no two runs share them
STAGES = ("", "entropy")  # the BLT run directory and its entropy stage

pytestmark = pytest.mark.slow


def blt_args(corpus: Path, out: Path) -> list[str]:
    return ["blt", "--data.source", str(corpus), "--run.output_dir", str(out), *TINY]


def metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def files_of(run_dir: Path) -> dict[str, object]:
    """What must not depend on whether and where a run was killed."""
    out = {}
    for stage in STAGES:
        d = run_dir / stage
        out[f"{stage}/weights"] = load_file(d / "model" / "model.safetensors")
        out[f"{stage}/config"] = (d / "model" / "config.json").read_text()
        out[f"{stage}/summary"] = json.loads((d / "summary.json").read_text())
        out[f"{stage}/metrics"] = metrics(d / "metrics.csv")
        out[f"{stage}/tensorboard"] = tensorboard_points(d / "tensorboard")
    return out


def tensorboard_points(folder: Path) -> list[tuple[int, float]]:
    """(step, value) of the training loss as TensorBoard shows it: all event files of the folder as one
    run, the events a resumed run purged left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("loss")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from conftest import make_corpus

    return make_corpus(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("straight")
    assert main(blt_args(corpus, out)) == 0
    return files_of(out / "run")


@pytest.mark.parametrize(
    "point, n, where",
    [
        ("step", 3, "in the entropy stage, after its first checkpoint"),
        ("calibrate", 1, "between the entropy and the BLT stage"),
        ("checkpoint", 4, "while writing the BLT's last checkpoint (its step-2 one is on disk)"),
        ("export", 2, "while exporting the final BLT"),
        ("summary", 2, "while writing the BLT's summary.json"),
    ],
)
def test_killed_and_resumed_run_equals_an_uninterrupted_one(point, n, where, corpus, reference, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "tests" / "kill_at.py"), point, str(n), *blt_args(corpus, out)]
    killed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, f"{where}: not killed ({killed.returncode}): {killed.stderr[-1500:]}"
    assert not (out / "run" / "summary.json").exists()
    assert main([*blt_args(corpus, out), "--resume", "last"]) == 0
    again = files_of(out / "run")
    for key, expected in reference.items():
        if key.endswith("/weights"):
            assert expected.keys() == again[key].keys()
            assert all(expected[k].equal(again[key][k]) for k in expected), f"{where}: {key} differ"
        else:
            assert again[key] == expected, f"{where}: {key} differ"
    leftovers = [p.name for p in (out / "run").rglob(".*") if p.name != ".lock"]
    assert leftovers == [], f"{where}: temporary files left: {leftovers}"
