"""Training CLI and plumbing: configs, errors, schedule, atomic checkpoints, non-finite loss (fast tests)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from blt.training import callbacks, modules
from blt.training.cli import load_config, main
from blt.training.config import COMMANDS, READS
from blt.training.modules import adamw, lr_factor
from blt.training.run import build_trainer

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = str(REPO / "configs" / "tiny.yaml")

TINY = [
    "--data.seq_len", "32", "--data.batch_size", "4", "--data.val_fraction", "0.2",
    "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--run.sample_bytes", "0",
]  # fmt: skip
TINY_ENTROPY = [
    "--entropy.dim",
    "32",
    "--entropy.n_layers",
    "1",
    "--entropy.n_heads",
    "2",
    "--entropy.window",
    "16",
]


def tiny_args(corpus: Path, out: Path, *more: str, command: str = "entropy") -> list[str]:
    model = TINY_ENTROPY if "entropy" in READS[command] else []
    return ["--data.source", str(corpus), "--run.output_dir", str(out), *TINY, *model, *more]


def error_of(capsys, argv: list[str]) -> str:
    """The one-line error of a command that exits with code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------------------------------------------------
# configuration and command line


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_parses(path):
    config = load_config(["--config", str(path)])
    assert config.blt.vocab_size == 260 and config.entropy.vocab_size == 260
    assert config.optim.lr > 0 and config.trainer["max_steps"] > 0
    for command in COMMANDS:  # one file serves every command
        assert load_config(["--config", str(path)], command).data == config.data


def test_tiny_config_keeps_its_behaviour():
    config = load_config(["--config", TINY_YAML], "blt")
    trainer = config.trainer
    assert (trainer["max_steps"], trainer["val_check_interval"], trainer["limit_val_batches"]) == (
        800,
        100,
        8,
    )
    assert (trainer["log_every_n_steps"], trainer["gradient_clip_val"]) == (10, 1.0)
    assert (config.run.entropy_max_steps, config.run.checkpoint_every, config.run.target_patch_size) == (
        300,
        100,
        4.0,
    )
    assert config.baseline is None and config.blt.encoder.dim == 64


def test_overrides_after_the_file_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {seq_len: 64}\ntrainer: {max_steps: 7}\n")
    config = load_config(
        [
            "--config",
            str(path),
            "--trainer.max_steps",
            "9",
            "--optim.lr=0.5",
            "--trainer.precision",
            "bf16-mixed",
        ],
        "entropy",
    )
    assert (config.data.seq_len, config.trainer["max_steps"], config.optim.lr) == (64, 9, 0.5)
    assert config.trainer["precision"] == "bf16-mixed"


def test_lightning_trainer_arguments_keep_lightnings_names(tmp_path, capsys):
    argv = ["entropy", "--config", TINY_YAML, "--trainer.accumulate_grad_batches", "2",
            "--trainer.gradient_clip_val", "0.5", "--trainer.val_check_interval", "7",
            "--trainer.limit_val_batches", "3", "--trainer.log_every_n_steps", "5"]  # fmt: skip
    assert main([*argv, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert printed["accumulate_grad_batches"] == 2 and printed["gradient_clip_val"] == 0.5
    # ... and reach Lightning's Trainer unchanged
    config = load_config(argv[1:], "entropy")
    trainer, _ = build_trainer(config.trainer, config.run, tmp_path, 11, None)
    assert trainer.accumulate_grad_batches == 2 and trainer.gradient_clip_val == 0.5
    assert (trainer.val_check_interval, trainer.limit_val_batches, trainer.log_every_n_steps) == (7, 3, 5)
    assert trainer.max_steps == 11


def test_a_trainer_argument_may_be_a_class_with_its_arguments(tmp_path):
    """As in LightningCLI: a class path (or name) and its init arguments, built anew for every Trainer."""
    argv = ["--trainer.strategy", "DDPStrategy", "--trainer.strategy.find_unused_parameters", "true"]
    config = load_config([*argv, "--trainer.accelerator", "cpu"], "entropy")
    first, _ = build_trainer(config.trainer, config.run, tmp_path, 2, None)
    second, _ = build_trainer(config.trainer, config.run, tmp_path, 2, None)
    assert type(first.strategy).__name__ == "DDPStrategy" and first.strategy is not second.strategy
    assert first.strategy._ddp_kwargs["find_unused_parameters"] is True


def test_a_misspelt_trainer_argument_is_refused_by_name(capsys):
    err = error_of(capsys, ["entropy", "--trainer.acumulate_grad_batches", "2"])
    assert "--trainer.acumulate_grad_batches" in err
    # what the package sets itself is not an option
    assert "--trainer.logger" in error_of(capsys, ["entropy", "--trainer.logger", "false"])
    # the names this package used before are gone
    assert "--trainer.accumulate" in error_of(capsys, ["entropy", "--trainer.accumulate", "2"])


def test_unknown_key_is_named(capsys):
    assert "trainer.max_stepz" in error_of(capsys, ["entropy", "--trainer.max_stepz", "3"])


def test_unknown_key_in_a_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("blt:\n  encoder:\n    widht: 3\n")
    assert "unknown config key 'blt.encoder.widht'" in error_of(capsys, ["blt", "--config", str(path)])


def test_bad_values_and_commands_are_clear(capsys):
    assert "trainer.precision" in error_of(capsys, ["entropy", "--trainer.precision", "fp8"])
    err = error_of(capsys, ["train", "--trainer.max_steps", "1"])
    assert "'train'" in err and "entropy" in err and "baseline" in err
    assert "--entropy_checkpoint" in error_of(capsys, ["entropy", "--entropy_checkpoint", "x"])
    assert "trainer.max_steps must be > 0" in error_of(capsys, ["entropy", "--trainer.max_steps", "-1"])
    assert "trainer.val_check_interval" in error_of(
        capsys, ["entropy", "--trainer.val_check_interval", "0.5"]
    )
    assert "run.checkpoint_every" in error_of(capsys, ["entropy", "--run.checkpoint_every", "0"])


def test_a_command_refuses_options_of_sections_it_does_not_read(capsys):
    err = error_of(capsys, ["entropy", "--blt.encoder.dim", "3"])
    assert "--blt.encoder.dim" in err and "does not read the blt section" in err


def test_print_config_shows_the_sections_read_and_round_trips(tmp_path, capsys):
    assert main(["blt", "--config", TINY_YAML, "--data.seq_len", "99", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == ["data", *READS["blt"], "optim", "run", "trainer"]
    assert printed["data"]["seq_len"] == 99
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(printed))
    again = load_config(["--config", str(path)], "blt")
    expected = load_config(["--config", TINY_YAML, "--data.seq_len", "99"], "blt")
    for name in ("data", "entropy", "blt", "optim", "run", "trainer"):
        assert getattr(again, name) == getattr(expected, name)


def test_help_lists_every_field_with_its_doc(capsys):
    assert main(["blt", "--help"]) == 0
    out = capsys.readouterr().out
    for needle in ("--trainer.strategy", "--trainer.accumulate_grad_batches", "--optim.warmup_steps",
                   "--blt.patching.threshold", "--data.seq_len", "--run.target_patch_size", "--resume",
                   "--overwrite", "--entropy_checkpoint", "peak learning rate"):  # fmt: skip
        assert needle in out
    assert "--baseline.vocab_size" not in out and "--trainer.logger" not in out


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    err = error_of(capsys, ["entropy", *tiny_args(tmp_path / "nope.txt", tmp_path / "runs")])
    assert "does not exist" in err and "nope.txt" in err


def test_resume_without_checkpoint_is_a_clear_error(text_corpus, tmp_path, capsys):
    for command in COMMANDS:
        args = tiny_args(text_corpus, tmp_path / "runs", "--resume", "last", command=command)
        err = error_of(capsys, [command, *args])
        assert "no run to resume" in err
    missing = str(tmp_path / "x.ckpt")
    err = error_of(capsys, ["entropy", *tiny_args(text_corpus, tmp_path / "runs"), "--resume", missing])
    assert "checkpoint file not found" in err


def test_entropy_checkpoint_with_another_vocabulary_is_refused(text_corpus, tmp_path, capsys):
    ckpt = tmp_path / "entropy"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"kind": "blt-entropy", "config": {"vocab_size": 300}}))
    err = error_of(
        capsys, ["blt", *tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(ckpt))]
    )
    assert "vocabulary size 300" in err and "260" in err
    missing = str(tmp_path / "no")
    err = error_of(
        capsys, ["blt", *tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", missing)]
    )
    assert "does not exist" in err


def test_entropy_checkpoint_of_another_kind_is_refused_by_its_kind(text_corpus, tmp_path, capsys):
    ckpt = tmp_path / "bpe"  # a baseline's export: its vocabulary differs too, but the kind is the problem
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"kind": "blt-baseline", "config": {"vocab_size": 300}}))
    err = error_of(
        capsys, ["blt", *tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(ckpt))]
    )
    assert "kind 'blt-baseline', not an entropy model" in err and "vocabulary" not in err


def test_entropy_checkpoint_may_be_a_run_directory(text_corpus, tmp_path, capsys):
    """A run directory stands for its exported model/ (what `train.py entropy` prints as its run dir)."""
    model_dir = tmp_path / "entropy-run" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"kind": "blt-entropy", "config": {"vocab_size": 300}}))
    args = tiny_args(text_corpus, tmp_path / "runs", "--entropy_checkpoint", str(tmp_path / "entropy-run"))
    assert "vocabulary size 300" in error_of(
        capsys, ["blt", *args]
    )  # read from entropy-run/model/config.json


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
        text_corpus, tmp_path / "runs", "--trainer.max_steps", "8", "--run.checkpoint_every", "2"
    )
    assert main(["entropy", *args]) == 1
    err = capsys.readouterr().err
    assert "not finite" in err and "at step 5" in err and "last good checkpoint" in err
    last = tmp_path / "runs" / "default-entropy" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "runs" / "default-entropy" / "summary.json").exists()


class FakeTrainer:
    """What LastCheckpoint reads and calls: the step counters, the state, and the strategy's save."""

    def __init__(self):
        self.global_step, self.saved, self.loggers = 0, [], []
        self.fit_loop = type("Loop", (), {"epoch_loop": type("Epoch", (), {"total_batch_idx": 0})()})()
        self._checkpoint_connector = self
        self.strategy = self

    def dump_checkpoint(self, weights_only):
        return {"global_step": self.global_step, callbacks.STATE_KEY: {}}

    def save_checkpoint(self, checkpoint, path):
        self.saved.append(checkpoint["global_step"])

    def barrier(self, name=None):
        pass


def test_last_checkpoint_is_never_written_mid_accumulation_at_step_0():
    trainer, last = FakeTrainer(), callbacks.LastCheckpoint("unused", every=2, val_every=100)
    # accumulate 2: batches 0,1 make step 1, batches 2,3 step 2; global_step counts finished steps
    for batch, step in enumerate([0, 1, 1, 2, 2, 3]):
        last.on_train_batch_start(trainer, None, None, batch)
        trainer.global_step, trainer.fit_loop.epoch_loop.total_batch_idx = step, batch
        last.on_train_batch_end(trainer, None, None, None, batch)
    last.on_train_end(trainer, None)
    assert trainer.saved == [2]


def test_last_checkpoint_is_written_after_its_batch_is_logged():
    """The state is taken at the step's end, the file written at the next batch's start (once the
    step's metrics rows are logged and flushed), holding how many rows it covers."""
    trainer, last = FakeTrainer(), callbacks.LastCheckpoint("unused", every=1, val_every=100)
    flushed = []

    class Rows:
        rows = 0

        def flush(self):
            flushed.append(self.rows)

    rows = Rows()
    trainer.loggers = [rows]
    written = []
    trainer.save_checkpoint = lambda checkpoint, path: written.append(dict(checkpoint[callbacks.STATE_KEY]))
    trainer.global_step = 1
    last.on_train_batch_end(trainer, None, None, None, 0)
    assert written == []  # held until Lightning has logged the batch
    rows.rows = 1  # Lightning logs the batch's row after on_train_batch_end
    last.on_train_batch_start(trainer, None, None, 1)
    assert written == [{"metrics_rows": 1}] and flushed == [1] and last.saved_step == 1


# ---------------------------------------------------------------------------------------------------------
# settings that fail together, caught before any work


def test_sequence_lengths_are_checked_against_every_model_before_anything_trains(
    text_corpus, tmp_path, capsys
):
    base = [
        "--config",
        TINY_YAML,
        "--data.source",
        str(text_corpus),
        "--run.output_dir",
        str(tmp_path / "runs"),
    ]
    err = error_of(capsys, ["blt", *base, "--data.seq_len", "2000"])
    assert "data.seq_len (2000)" in err and "entropy.max_seq_len (1024)" in err
    err = error_of(capsys, ["blt", *base, "--data.seq_len", "2000", "--entropy.max_seq_len", "4096"])
    assert "data.seq_len (2000)" in err and "blt.encoder.max_seq_len (1024)" in err
    err = error_of(capsys, ["entropy", *base, "--data.seq_len", "5000"])
    assert "data.seq_len (5000)" in err and "entropy.max_seq_len (1024)" in err
    err = error_of(capsys, ["baseline", *base, "--data.seq_len", "2000"])
    assert "data.seq_len (2000)" in err and "baseline.max_seq_len (1024)" in err
    err = error_of(capsys, ["blt", *base, "--blt.global_transformer.max_seq_len", "64"])
    assert "256 patches" in err and "blt.global_transformer.max_seq_len (64)" in err
    err = error_of(capsys, ["blt", *base, "--blt.patching.scheme", "static"])
    assert "run.target_patch_size (4.0)" in err and "'static'" in err
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_lightning_refusals_are_one_line_naming_the_setting(text_corpus, tmp_path, capsys):
    args = tiny_args(text_corpus, tmp_path / "runs")
    err = error_of(capsys, ["entropy", *args, "--trainer.accelerator", "gpu"])
    assert "trainer.accelerator=gpu" in err and "Lightning cannot run with these settings" in err
    err = error_of(capsys, ["entropy", *args, "--trainer.limit_val_batches", "2.5"])
    assert "trainer.limit_val_batches" in err
    assert not (tmp_path / "runs").exists()


def test_a_folder_of_binary_files_names_what_it_skipped(tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    err = error_of(
        capsys, ["entropy", "--data.source", str(folder), "--run.output_dir", str(tmp_path / "runs")]
    )
    assert "the corpus is empty" in err and "skipped 1 binary file" in err and "image.png" in err


def test_a_setting_under_the_wrong_section_names_the_right_one(capsys):
    """--trainer.* are Lightning's own arguments; the package's settings are --run.*, and the error says so."""
    err = error_of(capsys, ["blt", "--trainer.compile", "true"])
    assert "unrecognized arguments: --trainer.compile true (did you mean --run.compile?)" in err
    assert "did you mean" not in error_of(capsys, ["blt", "--trainer.bogus", "1"])
