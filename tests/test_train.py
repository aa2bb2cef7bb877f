"""Training CLI and plumbing: configs, errors, schedule, atomic checkpoints, non-finite loss (fast tests)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from blt.checkpoint import CheckpointError
from blt.training import callbacks, modules
from blt.training.cli import main, parse_args, resume_checkpoint
from blt.training.config import SECTIONS, load_run_config
from blt.training.modules import adamw, lr_factor

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "--data.seq_len", "32", "--data.batch_size", "4", "--data.val_fraction", "0.2",
    "--entropy.dim", "32", "--entropy.n_layers", "1", "--entropy.n_heads", "2", "--entropy.window", "16",
    "--trainer.val_batches", "2", "--trainer.log_every", "1", "--trainer.progress_bar", "false",
    "--trainer.sample_bytes", "0",
]  # fmt: skip


def tiny_args(corpus: Path, out: Path, *more: str) -> list[str]:
    return ["--data.source", str(corpus), "--trainer.output_dir", str(out), *TINY, *more]


# ---------------------------------------------------------------------------------------------------------
# configuration and command line


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_parses(path):
    run = load_run_config(path, [])
    assert run.blt.vocab_size == 260
    assert run.optim.lr > 0


def test_overrides_are_coerced_and_merged_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {seq_len: 64}\ntrainer: {max_steps: 7}\n")
    run = load_run_config(
        path, ["--trainer.max_steps", "9", "--optim.lr=0.5", "--trainer.precision", "bf16-mixed"]
    )
    assert (run.data.seq_len, run.trainer.max_steps, run.optim.lr, run.trainer.precision) == (
        64,
        9,
        0.5,
        "bf16-mixed",
    )


def test_parse_args_separates_flags_and_overrides():
    command, flags, overrides = parse_args(
        ["blt", "--config", "c.yaml", "--resume=last", "--print_config", "--data.seq_len", "8", "--x.y=1"]
    )
    assert command == "blt"
    assert flags == {"--config": "c.yaml", "--resume": "last", "--print_config": True}
    assert overrides == ["--data.seq_len", "8", "--x.y=1"]


def test_unknown_key_is_named(capsys):
    assert main(["entropy", "--trainer.max_stepz", "3"]) == 2
    assert "unknown config key 'trainer.max_stepz'" in capsys.readouterr().err


def test_unknown_key_in_a_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("blt:\n  encoder:\n    widht: 3\n")
    assert main(["blt", "--config", str(path)]) == 2
    assert "unknown config key 'blt.encoder.widht'" in capsys.readouterr().err


def test_bad_values_and_commands_are_clear(capsys):
    assert main(["entropy", "--trainer.precision", "fp8"]) == 2
    assert "trainer.precision" in capsys.readouterr().err
    assert main(["train", "--trainer.max_steps", "1"]) == 2
    assert "expected a command" in capsys.readouterr().err
    assert main(["entropy", "--entropy_checkpoint", "x"]) == 2
    assert "blt command only" in capsys.readouterr().err


def test_print_config_round_trips(tmp_path, capsys):
    assert (
        main(
            ["blt", "--config", str(REPO / "configs" / "tiny.yaml"), "--data.seq_len", "99", "--print_config"]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == list(SECTIONS["blt"])
    assert printed["data"]["seq_len"] == 99
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(printed))
    again, expected = (
        load_run_config(path, []),
        load_run_config(REPO / "configs" / "tiny.yaml", ["--data.seq_len", "99"]),
    )
    assert all(getattr(again, s) == getattr(expected, s) for s in SECTIONS["blt"])


def test_help_lists_every_field_with_its_doc(capsys):
    assert main(["blt", "--help"]) == 0
    out = capsys.readouterr().out
    for needle in ("--trainer.strategy", "--optim.warmup_steps", "--blt.patching.threshold", "--data.seq_len",
                   "--resume PATH|last", "peak learning rate"):  # fmt: skip
        assert needle in out
    assert "--baseline.vocab_size" not in out


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["entropy", *tiny_args(missing, tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nope.txt" in err


def test_resume_without_checkpoint_is_a_clear_error(text_corpus, tmp_path, capsys):
    for command in ("entropy", "blt", "baseline"):
        assert main([command, *tiny_args(text_corpus, tmp_path / "runs"), "--resume", "last"]) == 2
        assert "no checkpoint to resume" in capsys.readouterr().err
    assert (
        main(["entropy", *tiny_args(text_corpus, tmp_path / "runs"), "--resume", str(tmp_path / "x.ckpt")])
        == 2
    )
    assert "checkpoint file not found" in capsys.readouterr().err


def test_resume_last_of_a_blt_run_killed_in_its_entropy_stage(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        resume_checkpoint("blt", "last", run_dir, staged=True)
    (run_dir / "entropy" / "checkpoints").mkdir(parents=True)
    (run_dir / "entropy" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_checkpoint("blt", "last", run_dir, staged=True) is None  # the entropy stage resumes first
    with pytest.raises(CheckpointError):  # with --entropy_checkpoint there is no stage to resume
        resume_checkpoint("blt", "last", run_dir, staged=False)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_checkpoint("blt", "last", run_dir, staged=True) == run_dir / "checkpoints" / "last.ckpt"
    assert resume_checkpoint("entropy", None, run_dir, staged=False) is None


def test_entropy_checkpoint_with_another_vocabulary_is_refused(text_corpus, tmp_path, capsys):
    ckpt = tmp_path / "entropy"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"kind": "blt-entropy", "config": {"vocab_size": 300}}))
    args = tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(ckpt))
    assert main(["blt", *args]) == 2
    err = capsys.readouterr().err
    assert "vocabulary size 300" in err and "260" in err
    assert (
        main(
            ["blt", *tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(tmp_path / "no"))]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_entropy_checkpoint_of_another_kind_is_refused_by_its_kind(text_corpus, tmp_path, capsys):
    ckpt = tmp_path / "bpe"  # a baseline's export: its vocabulary differs too, but the kind is the problem
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"kind": "blt-baseline", "config": {"vocab_size": 300}}))
    assert main(["blt", *tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(ckpt))]) == 2
    err = capsys.readouterr().err
    assert "kind 'blt-baseline', not an entropy model" in err and "vocabulary" not in err


# ---------------------------------------------------------------------------------------------------------
# optimisation


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup=10, total=110, min_ratio=0.1) for s in range(120)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[60] == pytest.approx(0.55)
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)


def test_adamw_decays_matrices_but_not_norms():
    from blt.config import EntropyModelConfig
    from blt.patcher import EntropyModel
    from blt.training.config import OptimConfig

    model = EntropyModel(EntropyModelConfig(dim=16, n_layers=1, n_heads=2))
    opt = adamw(model, OptimConfig(weight_decay=0.3))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------------------
# checkpoints and failure


def test_atomic_checkpoint_survives_a_crash_mid_write(tmp_path, monkeypatch):
    io = callbacks.AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    text_corpus, tmp_path, monkeypatch, capsys
):
    score = modules.EntropyTask.score

    def nan_at_step_5(self, batch):
        sums = score(self, batch)
        if self.training and self.global_step == 4:
            sums["nll"] = sums["nll"] * math.nan
        return sums

    monkeypatch.setattr(modules.EntropyTask, "score", nan_at_step_5)
    args = tiny_args(
        text_corpus, tmp_path / "runs", "--trainer.max_steps", "8", "--trainer.checkpoint_every", "2"
    )
    assert main(["entropy", *args]) == 1
    err = capsys.readouterr().err
    assert "not finite" in err and "at step 5" in err and "last good checkpoint" in err
    last = tmp_path / "runs" / "default-entropy" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "runs" / "default-entropy" / "summary.json").exists()


def test_last_checkpoint_is_never_written_mid_accumulation_at_step_0():
    class FakeTrainer:  # what LastCheckpoint reads: the step counters, and save_checkpoint
        def __init__(self):
            self.global_step, self.saved = 0, []
            self.fit_loop = type("Loop", (), {"epoch_loop": type("Epoch", (), {"total_batch_idx": 0})()})()

        def save_checkpoint(self, path, weights_only):
            self.saved.append(self.global_step)

    trainer, last = FakeTrainer(), callbacks.LastCheckpoint("unused", every=2, val_every=100)
    # accumulate 2: batches 0,1 make step 1, batches 2,3 step 2; global_step counts finished steps
    for batch, step in enumerate([0, 1, 1, 2, 2, 3]):
        trainer.global_step, trainer.fit_loop.epoch_loop.total_batch_idx = step, batch
        last.on_train_batch_end(trainer, None, None, None, batch)
    assert trainer.saved == [2]


def test_a_fresh_run_drops_the_tensorboard_events_of_an_earlier_run(text_corpus, tmp_path):
    board = tmp_path / "runs" / "default-entropy" / "tensorboard"
    board.mkdir(parents=True)
    (board / "events.out.tfevents.1.earlier-run").write_bytes(b"old curves")
    assert main(["entropy", *tiny_args(text_corpus, tmp_path / "runs", "--trainer.max_steps", "2")]) == 0
    events = [p.name for p in board.glob("events.out.tfevents.*")]
    assert events and "events.out.tfevents.1.earlier-run" not in events


def test_entropy_checkpoint_may_be_a_run_directory(text_corpus, tmp_path, capsys):
    """A run directory stands for its exported model/ (what `train.py entropy` prints as its run dir)."""
    model_dir = tmp_path / "entropy-run" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"kind": "blt-entropy", "config": {"vocab_size": 300}}))
    args = tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(tmp_path / "entropy-run"))
    assert main(["blt", *args]) == 2
    assert "vocabulary size 300" in capsys.readouterr().err  # read from entropy-run/model/config.json
