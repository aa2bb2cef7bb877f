"""One training stage: fit a task with Lightning, validate, checkpoint, export, score, summarise.

A stage directory holds ``checkpoints/last.ckpt`` (resumable Lightning checkpoint), ``metrics.csv``,
``tensorboard/``, ``model/`` (``save_pretrained`` export of the final model) and ``summary.json``. The
summary is written last and atomically: a stage with a summary is finished, its export complete.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.strategies import FSDPStrategy

from blt.checkpoint import CheckpointError, atomic_write
from blt.config import ConfigError, to_dict
from blt.data import DataConfig, iter_documents
from blt.eval.bpb import evaluate, scorer_for
from blt.eval.loading import load_model
from blt.layers import Block
from blt.training.callbacks import (
    LAST,
    STATE_KEY,
    AtomicCheckpointIO,
    LastCheckpoint,
    NonFiniteLossError,
    Throughput,
)
from blt.training.config import RunConfig
from blt.training.logs import loggers
from blt.training.modules import LMTask

SUMMARY = "summary.json"


@dataclass
class Resume:
    """A checkpoint to continue from, read and checked before Lightning loads it."""

    path: Path
    state: dict[str, Any]  # our part of it (STATE_KEY)
    step: int  # its optimizer step


def last_checkpoint(stage_dir: Path) -> Path | None:
    path = stage_dir / "checkpoints" / LAST
    return path if path.is_file() else None


def read_summary(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's summary.json, None while it has none (it is written atomically, as the last file)."""
    path = stage_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(stage_dir: Path, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2)
    atomic_write(stage_dir / SUMMARY, lambda tmp: Path(tmp).write_text(text))


# keys of a model section that may differ on resume: the BLT's entropy model and calibrated patching come
# from the checkpoint itself
FROM_CHECKPOINT = ("entropy_model", "patching")


def first_difference(saved: Any, now: Any, prefix: str) -> tuple[str, Any, Any] | None:
    """(dotted key, saved value, current value) of the first differing leaf, skipping FROM_CHECKPOINT."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return None if saved == now else (prefix.rstrip("."), saved, now)
    for key in sorted(set(saved) | set(now)):
        if key not in FROM_CHECKPOINT:
            diff = first_difference(saved.get(key), now.get(key), f"{prefix}{key}.")
            if diff is not None:
                return diff
    return None


def training_state(path: Path, command: str, sections: dict[str, Any]) -> Resume:
    """The checkpoint at ``path``, refused (before Lightning loads it) if it cannot resume ``command``
    with these config ``sections`` (the model section named like the command, and ``optim``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's advice to retry unsafely does not apply: say only what it is
        raise CheckpointError(
            f"--resume: {path} is not a plain tensor checkpoint written by blt-train; it was not loaded and "
            "nothing in it was executed"
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever failed, the file is not a checkpoint we can resume
        raise CheckpointError(f"--resume: {path} is not a readable training checkpoint ({e})") from None
    ours = state.get(STATE_KEY) if isinstance(state, dict) else None
    if ours is None or "cosine_steps" not in ours:
        raise CheckpointError(f"--resume: {path} is not a checkpoint written by this version of blt-train")
    if ours["kind"] != command:
        raise CheckpointError(f"--resume: {path} is a checkpoint of '{ours['kind']}', not of '{command}'")
    for name in (command, "optim"):
        diff = first_difference(ours["config"][name], to_dict(sections[name]), f"{name}.")
        if diff is not None:
            key, saved, now = diff
            raise CheckpointError(
                f"--resume: {path} was trained with {key} = {saved!r}, this run has {now!r}; "
                f"the {'model' if name == command else 'optimizer'} must match to resume"
            )
    return Resume(path, ours, int(state["global_step"]))


def strategy(name: Any):
    """Lightning strategy: FSDP shards every transformer block and saves whole tensors (for the export)."""
    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    return name


def instantiate(value: Any) -> Any:
    """A new object for a class given as ``{"class_path", "init_args"}`` (how jsonargparse keeps e.g.
    ``--trainer.strategy DDPStrategy --trainer.strategy.find_unused_parameters true``); each Trainer gets
    its own, as a Lightning strategy or profiler belongs to one Trainer. Other values as they are."""
    if isinstance(value, dict) and "class_path" in value:
        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: instantiate(v) for k, v in (value.get("init_args") or {}).items()})
    return value


def trainer_kwargs(trainer_args: dict[str, Any], run: RunConfig, stage_dir: Path, max_steps: int) -> dict:
    """The user's Trainer arguments, objects built, plus those the package sets itself."""
    args = {k: instantiate(v) for k, v in trainer_args.items()}
    return {**args, "strategy": strategy(args["strategy"]), **package_arguments(run, stage_dir, max_steps)}


# the settings Lightning reads to pick devices, processes and numerics, named when its message names none
HARDWARE = ("accelerator", "strategy", "devices", "num_nodes", "precision")


def trainer_error(e: MisconfigurationException, trainer_args: dict[str, Any]) -> ConfigError:
    """Lightning's refusal of the trainer settings as one line, naming the settings it is about."""
    text = " ".join(str(e).split())
    named = [f"trainer.{k}" for k in trainer_args if re.search(rf"\b{k}\b", text)]
    if not named:
        named = [f"trainer.{k}={trainer_args[k]}" for k in HARDWARE if k in trainer_args]
    return ConfigError(f"{', '.join(named)}: Lightning cannot run with these settings: {text}")


@contextmanager
def lightning_settings(trainer_args: dict[str, Any]):
    """Lightning's configuration errors as :class:`ConfigError` naming the ``--trainer.*`` settings."""
    try:
        yield
    except MisconfigurationException as e:
        raise trainer_error(e, trainer_args) from None


def package_arguments(run: RunConfig, stage_dir: Path, max_steps: int) -> dict[str, Any]:
    """The Trainer arguments the package sets itself (see blt.training.config.TRAINER_SKIP)."""
    return {
        "max_steps": max_steps,
        "max_epochs": -1,  # one endless epoch: the step budget ends the run
        "check_val_every_n_epoch": None,  # validate every val_check_interval batches
        "num_sanity_val_steps": 0,  # a sanity check would add a point to the validation curve
        "enable_checkpointing": False,  # LastCheckpoint writes the checkpoints
        "use_distributed_sampler": False,  # the batches are already sharded by rank
        "default_root_dir": stage_dir,
        "plugins": [AtomicCheckpointIO()],
    }


def check_trainer_settings(trainer_args: dict[str, Any], run: RunConfig) -> None:
    """Build (and drop) a Trainer with the user's settings, so Lightning refuses them before any work."""
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its device report comes again when the real Trainer starts
    try:
        with lightning_settings(trainer_args):
            L.Trainer(**trainer_kwargs(trainer_args, run, Path("."), trainer_args["max_steps"]), logger=False)
    finally:
        quiet.setLevel(level)


def build_trainer(
    trainer_args: dict[str, Any], run: RunConfig, stage_dir: Path, max_steps: int, resume: Resume | None
) -> tuple[L.Trainer, LastCheckpoint]:
    with lightning_settings(trainer_args):
        args = trainer_kwargs(trainer_args, run, stage_dir, max_steps)
    last = LastCheckpoint(stage_dir / "checkpoints", run.checkpoint_every, args["val_check_interval"])
    last.saved_step = resume.step if resume else -1
    callbacks = [last, Throughput(run.peak_flops)]
    if args.get("enable_progress_bar") is not False:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, (args.get("log_every_n_steps") or 10) // 2)))
    logs = loggers(stage_dir, resume.state["metrics_rows"] if resume else 0, resume.step if resume else 0)
    with lightning_settings(trainer_args):
        trainer = L.Trainer(**args, logger=logs, callbacks=callbacks)
    return trainer, last


def fit(
    task: LMTask,
    stage_dir: Path,
    trainer_args: dict[str, Any],
    run: RunConfig,
    max_steps: int,
    resume: Resume | None,
) -> dict[str, Any]:
    """Train ``task`` into ``stage_dir`` to ``max_steps``; returns the summary (also summary.json)."""
    trainer, last = build_trainer(trainer_args, run, stage_dir, max_steps, resume)
    try:
        with lightning_settings(trainer_args):
            trainer.fit(task, ckpt_path=resume.path if resume else None)
    except NonFiniteLossError as e:
        kept = (
            f"the last good checkpoint is {last.path}"
            if last.path.is_file()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(f"{e}; {kept}") from None
    validated = bool(task.val_curve) and task.val_curve[-1]["step"] == trainer.global_step
    if not validated:
        trainer.validate(task, verbose=False)
    if not validated or last.saved_step != trainer.global_step:
        last.save(trainer)  # the final state, with the last validation, is what --resume and the export use
    summary = {"name": stage_dir.name, **task.summary()}
    if trainer.is_global_zero:
        export(task, last.path, stage_dir / "model")
        if run.score_val_split:
            summary["val_split"] = score_val_split(stage_dir / "model", task.data)
        write_summary(stage_dir, summary)
    trainer.strategy.barrier()
    return summary


def export(task: LMTask, checkpoint: Path, directory: Path) -> None:
    """``save_pretrained`` of the model as saved in ``checkpoint`` (whole tensors, whatever the strategy)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model = task.build_model()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.save_pretrained(directory)


def score_val_split(model_dir: Path, data: DataConfig) -> dict[str, Any]:
    """The exported model's bits per byte on the whole validation split, as ``blt-eval bpb`` scores it:
    every byte of every document predicted once, in windows of the model's max_seq_len (stride half)."""
    scorer = scorer_for(load_model(model_dir))
    result = evaluate(scorer, iter_documents(data, "val"), flops=False)
    return {
        "bits_per_byte": result.bits_per_byte,
        "stderr": result.to_dict()["stderr"],
        "documents": result.n_documents,
        "bytes": result.n_bytes,
        "context": scorer.context,
    }
