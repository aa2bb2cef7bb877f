"""A run directory as a user meets it again: re-runs, --overwrite, --resume of a finished run, extending,
two processes at once, and the numbers a finished run reports (tiny entropy runs, in this process)."""

from __future__ import annotations

import csv
import fcntl
import json
import pickle
from pathlib import Path

import pytest
import torch

from blt.eval.cli import main as blt_eval
from blt.training.callbacks import STATE_KEY
from blt.training.cli import main

TINY = [
    "--data.seq_len", "32", "--data.batch_size", "4", "--data.val_fraction", "0.2",
    "--entropy.dim", "32", "--entropy.n_layers", "1", "--entropy.n_heads", "2", "--entropy.window", "16",
    "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.val_check_interval", "2", "--run.checkpoint_every", "2", "--optim.warmup_steps", "1",
]  # fmt: skip

pytestmark = pytest.mark.slow


def entropy(corpus: Path, out: Path, *more: str) -> list[str]:
    return ["entropy", "--data.source", str(corpus), "--run.output_dir", str(out), *TINY, *more]


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``run_dir`` with its bytes and modification time."""
    return {
        str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in run_dir.rglob("*")
        if p.is_file()
    }


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def finished(text_corpus, tmp_path) -> Path:
    """A finished 4-step entropy run."""
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "4")) == 0
    return tmp_path / "runs" / "default-entropy"


def test_a_re_run_never_replaces_a_run_without_overwrite(finished, text_corpus, tmp_path, capsys):
    before = snapshot(finished)
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "4")) == 2
    err = capsys.readouterr().err
    assert f"run directory {finished} already holds a run" in err
    assert "--resume last" in err and "--run.name" in err and "--overwrite" in err
    assert snapshot(finished) == before

    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "2", "--overwrite")) == 0
    assert "removing the earlier run" in capsys.readouterr().out
    assert json.loads((finished / "summary.json").read_text())["steps"] == 2
    assert [r["step"] for r in rows(finished) if r["loss"]] == ["0", "1"]  # the new run's rows only
    assert main(entropy(text_corpus, tmp_path / "runs", "--overwrite", "--resume", "last")) == 2
    assert "does not go with --resume" in capsys.readouterr().err


def test_resume_of_a_finished_run_touches_nothing(finished, text_corpus, tmp_path, capsys):
    before = snapshot(finished)
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "4", "--resume", "last")) == 0
    out = capsys.readouterr().out
    assert f"{finished} is complete" in out and "larger --trainer.max_steps" in out
    assert snapshot(finished) == before


def test_extending_a_finished_run_keeps_its_schedule_and_its_metrics(finished, text_corpus, tmp_path, capsys):
    first = rows(finished)
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "6", "--resume", "last")) == 0
    out = capsys.readouterr().out
    assert "schedule ends at step 4" in out and "steps 5-6 run at its final learning rate" in out
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["schedule"] == {
        "warmup_steps": 1,
        "cosine_steps": 4,
        "max_steps": 6,
    }
    assert rows(finished)[: len(first)] == first and len(rows(finished)) > len(first)
    # the learning rate of the added steps is the floor of the unchanged cosine
    state = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["lr_schedulers"][0]["_last_lr"] == pytest.approx([3e-3 * 0.1, 3e-3 * 0.1])
    # a checkpoint past the step budget does not resume
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "3", "--resume", "last")) == 2
    assert "is at step 6, past trainer.max_steps (3)" in capsys.readouterr().err


def test_a_shorter_resume_keeps_the_schedule_and_says_so(text_corpus, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(entropy(text_corpus, out, "--trainer.max_steps", "2", "--run.name", "r")) == 0
    # pretend the run was meant to be 8 steps long and stopped at 2: resume it to 4
    ckpt = out / "r" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state[STATE_KEY]["cosine_steps"] = 8
    torch.save(state, ckpt)
    assert (
        main(entropy(text_corpus, out, "--trainer.max_steps", "4", "--run.name", "r", "--resume", "last"))
        == 0
    )
    assert "stops before the learning rate reaches its final value" in capsys.readouterr().out
    assert json.loads((out / "r" / "summary.json").read_text())["schedule"]["cosine_steps"] == 8


def test_a_second_process_on_the_same_run_directory_is_refused(text_corpus, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "default-entropy"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as holder:  # another training process holds the run directory
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("12345\n")
        holder.flush()
        assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "2")) == 2
        err = capsys.readouterr().err
        assert f"run directory {run_dir} is in use by another training process (pid 12345)" in err
    # released (as the kernel does when a process dies): the run goes ahead
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "2")) == 0


def test_the_two_validation_numbers_say_what_they_measure(text_corpus, tmp_path, capsys):
    assert main(entropy(text_corpus, tmp_path / "runs", "--trainer.max_steps", "2")) == 0
    run_dir = tmp_path / "runs" / "default-entropy"
    summary = json.loads((run_dir / "summary.json").read_text())
    out = capsys.readouterr().out
    seen, split = summary["val_bytes"], summary["val_split_bytes"]
    assert 0 < seen < split  # 2 batches of 4 windows of 32 bytes, of the whole split
    assert seen <= 2 * 4 * 32
    assert f"measured on {seen:,} bytes: the first 2 batches (trainer.limit_val_batches)" in out
    assert f"of its {split:,} bytes" in out
    whole = summary["val_split"]
    assert whole["bytes"] == split and "whole validation split, every byte predicted once" in out
    # the whole-split number is blt-eval's own
    args = ["bpb", "--checkpoint", str(run_dir / "model"), "--data.source", str(text_corpus), "--json"]
    assert blt_eval([*args, "--data.val_fraction", "0.2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bits_per_byte"] == pytest.approx(whole["bits_per_byte"], rel=1e-12)
    assert printed["n_bytes"] == whole["bytes"]


def test_resume_refuses_a_pickle_checkpoint_without_running_it(text_corpus, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    run_dir = tmp_path / "runs" / "default-entropy"
    (run_dir / "checkpoints").mkdir(parents=True)
    with open(run_dir / "checkpoints" / "last.ckpt", "wb") as f:
        pickle.dump({STATE_KEY: Evil()}, f, protocol=2)
    assert main(entropy(text_corpus, tmp_path / "runs", "--resume", "last")) == 2
    err = capsys.readouterr().err
    assert "not a plain tensor checkpoint" in err and "nothing in it was executed" in err
    assert "weights_only" not in err and not marker.exists()


def test_training_on_an_output_dir_that_is_a_file_is_a_clear_error(text_corpus, tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    assert main(entropy(text_corpus, tmp_path / "runs")) == 2
    assert f"run.output_dir: {tmp_path / 'runs'} is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "default-entropy").write_text("a file where the run directory goes")
    assert main(entropy(text_corpus, tmp_path / "out")) == 2
    assert "is a file, not a folder (choose another --run.name)" in capsys.readouterr().err


def test_overwrite_refuses_to_delete_the_entropy_model_it_would_use(text_corpus, tmp_path, capsys):
    inside = tmp_path / "runs" / "default-blt" / "entropy" / "model"
    inside.mkdir(parents=True)
    (inside / "config.json").write_text(json.dumps({"kind": "blt-entropy", "config": {"vocab_size": 260}}))
    args = ["blt", "--data.source", str(text_corpus), "--run.output_dir", str(tmp_path / "runs")]
    assert main([*args, "--entropy_checkpoint", str(inside), "--overwrite"]) == 2
    assert "which --overwrite removes" in capsys.readouterr().err
    assert (inside / "config.json").is_file()
