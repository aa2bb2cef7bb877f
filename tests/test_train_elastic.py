"""Elastic patching (``--run.elastic_patch_size``): each training step patches at a threshold drawn for a mean
patch size in the range; the run records its grid, resumes bitwise, and refuses bad ranges in one line."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_train import REPO, tiny_flags

from blt.config import PatchingConfig
from blt.training.cli import main
from blt.training.elastic import ElasticPatching

RANGE = ["--run.elastic_patch_size", "[2, 5]", "--run.target_patch_size", "null"]
TINY = [
    *tiny_flags(global_dim=32, val_batches=1),
    "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--run.checkpoint_every", "2",
    "--run.entropy_max_steps", "4", "--run.sample_bytes", "0", "--run.name", "run", *RANGE,
]  # fmt: skip
TIMING = ("bytes_per_s", "mfu", "mfu_6n")


def blt_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["blt", "--data.source", str(corpus), "--run.output_dir", str(out), *TINY, *extra]


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from conftest import make_corpus

    return make_corpus(tmp_path_factory.mktemp("elastic"))


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    assert main(blt_args(corpus, out)) == 0
    return out / "run"


def test_grid_interpolates_and_draws_depend_on_seed_and_step_only():
    grid = ElasticPatching((2.0, 4.0), "threshold", [2.0, 3.0, 4.0], [1.0, 2.0, 4.0], [2.0, 3.0, 4.0])
    assert grid.threshold(2.5) == 1.5 and grid.threshold(3.5) == 3.0
    assert grid.threshold(1.0) == 1.0 and grid.threshold(9.0) == 4.0  # clamped to the grid's ends
    assert grid.patching(3.0, PatchingConfig(threshold=9.0)).threshold == 2.0
    draws = [grid.draw(0, step) for step in range(50)]
    assert all(2.0 <= d <= 4.0 for d in draws) and len(set(draws)) == 50
    assert draws == [grid.draw(0, step) for step in range(50)]
    assert draws != [grid.draw(1, step) for step in range(50)]
    assert ElasticPatching.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
    point = ElasticPatching((3.0, 3.0), "threshold", [3.0], [1.5], [3.0])  # a range of one size
    assert point.threshold(3.0) == 1.5 and point.draw(7, 3) == 3.0


def test_elastic_run_varies_its_patch_sizes_and_records_its_range(straight):
    summary = json.loads((straight / "summary.json").read_text())
    elastic = summary["elastic"]
    assert elastic["patch_size_range"] == [2.0, 5.0] and elastic["field"] == "threshold"
    assert elastic["sizes"] == [2.0 + 3.0 * i / 8 for i in range(9)]
    assert elastic["thresholds"] == sorted(elastic["thresholds"]) and len(set(elastic["thresholds"])) == 9
    assert all(abs(a - s) < 0.05 for a, s in zip(elastic["achieved"], elastic["sizes"]))
    # validation and the export patch at the middle of the range: the grid's middle threshold
    config = json.loads((straight / "model" / "config.json").read_text())
    assert config["config"]["patching"]["threshold"] == elastic["thresholds"][4]

    steps = [r for r in rows(straight) if r["elastic_patch_size"]]
    assert [int(r["step"]) for r in steps] == list(range(6))
    grid = ElasticPatching.from_dict(elastic)
    drawn = [float(r["elastic_patch_size"]) for r in steps]
    assert drawn == pytest.approx([grid.draw(0, s) for s in range(6)])
    assert all(2.0 <= d <= 5.0 for d in drawn) and max(drawn) - min(drawn) > 1.0
    # each batch is patched at its own threshold: the batch of the largest draw has longer patches
    achieved = [float(r["patch_size"]) for r in steps]
    assert len(set(achieved)) > 1
    assert achieved[drawn.index(max(drawn))] > achieved[drawn.index(min(drawn))]


@pytest.mark.slow
def test_killed_and_resumed_elastic_run_equals_an_uninterrupted_one(corpus, straight, tmp_path):
    out = tmp_path / "runs"
    # the 4 entropy steps, then the BLT's steps 1-2 (checkpoint at 2): killed as its 3rd step starts
    cmd = [sys.executable, str(REPO / "tests" / "kill_at.py"), "step", "7", *blt_args(corpus, out)]
    killed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-1500:]
    assert not (out / "run" / "summary.json").exists()
    assert main([*blt_args(corpus, out), "--resume", "last"]) == 0
    expected, again = (load_file(d / "model" / "model.safetensors") for d in (straight, out / "run"))
    assert expected.keys() == again.keys() and all(expected[k].equal(again[k]) for k in expected)
    assert rows(out / "run") == rows(straight)
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (out / "run", straight))
    assert summary["elastic"] == reference["elastic"] and summary["val_bpb"] == reference["val_bpb"]


def test_resume_with_another_range_is_refused(corpus, straight, tmp_path, capsys):
    out = straight.parent  # a finished run: checked before anything is touched
    code = main([*blt_args(corpus, out), "--resume", "last", "--run.elastic_patch_size", "[2, 4]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "was trained with run.elastic_patch_size = [2.0, 5.0], this run has [2.0, 4.0]" in err[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--run.elastic_patch_size", "[5, 2]"], "min <= max, got min 5.0 > max 2.0"),
        (
            ["--run.elastic_patch_size", "[0.5, 2]"],
            "sizes must be >= 1 (positions per patch), got [0.5, 2.0]",
        ),
        (["--run.elastic_patch_size", "[2, 3, 4]"], "must be [min, max] (two numbers) or null"),
        (
            ["--blt.patching.scheme", "static", "--run.target_patch_size", "null"],
            "draws an entropy threshold per batch, but blt.patching.scheme 'static' has none",
        ),
        (
            ["--blt.patching.scheme", "space", "--run.target_patch_size", "null"],
            "blt.patching.scheme 'space' has none: set run.elastic_patch_size null",
        ),
    ],
)
def test_bad_elastic_settings_are_one_line_errors(extra, message, corpus, tmp_path, capsys):
    code = main(blt_args(corpus, tmp_path / "runs", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "run.elastic_patch_size" in err[0]
    assert not (tmp_path / "runs" / "run" / "entropy").exists()  # refused before any training


def test_forward_patches_under_the_given_patching_as_a_model_configured_with_it():
    from tiny_blt import random_ids, tiny_blt

    model, ids = tiny_blt(), random_ids(2, 48)
    low = dataclasses.replace(model.config.patching, threshold=model.config.patching.threshold - 0.3)
    given = model(ids, patching=low)
    own = model(ids)
    model.config.patching = low
    configured = model(ids)
    assert given.patch_lengths.equal(configured.patch_lengths) and given.logits.equal(configured.logits)
    assert (given.patch_lengths > 0).sum() > (own.patch_lengths > 0).sum()  # a lower threshold: more patches
    with pytest.raises(ValueError, match="give patch_lengths or patching, not both"):
        model(ids, patch_lengths=own.patch_lengths, patching=low)


@pytest.mark.parametrize("command", ["entropy", "baseline"])
def test_elastic_range_on_a_command_without_patching_is_refused(command, corpus, tmp_path, capsys):
    code = main([command, "--data.source", str(corpus), "--run.output_dir", str(tmp_path / "runs"), *RANGE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"run.elastic_patch_size ([2.0, 5.0]) patches BLT batches, but `{command}` trains" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made
