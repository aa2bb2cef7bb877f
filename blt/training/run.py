"""One training stage: build the task, fit it with Lightning, validate, checkpoint, export, summarise.

A run directory holds ``checkpoints/last.ckpt`` (resumable Lightning checkpoint), ``metrics.csv``,
``tensorboard/``, ``model/`` (``save_pretrained`` export of the final model) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only

from blt.checkpoint import CheckpointError
from blt.config import to_dict
from blt.layers import Block
from blt.training.callbacks import LAST, AtomicCheckpointIO, LastCheckpoint, NonFiniteLossError, Throughput
from blt.training.config import RunConfig
from blt.training.modules import STATE_KEY, LMTask, task_for

SUMMARY = "summary.json"
# a fresh run replaces these in its directory (a resumed run appends to the logs)
STALE = ("metrics.csv", SUMMARY, f"checkpoints/{LAST}")
TB_EVENTS = "events.out.tfevents.*"


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / LAST
    return path if path.is_file() else None


def resolve_resume(resume: str, run_dir: Path) -> Path:
    """``--resume`` as a checkpoint file: a path, or "last" for the run directory's last checkpoint."""
    if resume == "last":
        path = last_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(
                f"--resume last: no checkpoint to resume in {run_dir / 'checkpoints'} (run without --resume "
                "to start, or check --trainer.output_dir / --trainer.name)"
            )
        return path
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume: checkpoint file not found: {path}")
    return path


def strategy(name: str):
    """Lightning strategy: FSDP shards every transformer block and saves whole tensors (for the export)."""
    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    return name


def build_trainer(run: RunConfig, run_dir: Path, max_steps: int) -> tuple[L.Trainer, LastCheckpoint]:
    tc = run.trainer
    last = LastCheckpoint(run_dir / "checkpoints", tc.checkpoint_every, tc.val_every)
    callbacks = [last, Throughput(tc.peak_flops)]
    if tc.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, tc.log_every // 2)))
    loggers = [
        CSVLogger(run_dir, name="", version=""),
        TensorBoardLogger(run_dir, name="tensorboard", version=""),
    ]
    trainer = L.Trainer(
        accelerator=tc.accelerator,
        strategy=strategy(tc.strategy),
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        precision=tc.precision,
        max_steps=max_steps,
        max_epochs=-1,
        accumulate_grad_batches=tc.accumulate,
        gradient_clip_val=run.optim.grad_clip,
        val_check_interval=tc.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=tc.log_every,
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # LastCheckpoint writes the checkpoints
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        default_root_dir=run_dir,
        use_distributed_sampler=False,  # the batches are already sharded by rank
    )
    return trainer, last


def fit(
    command: str, run: RunConfig, run_dir: Path, max_steps: int, resume: Path | None, **task_args: Any
) -> dict[str, Any]:
    """Train ``command``'s model into ``run_dir``; returns the summary (also written as summary.json)."""
    if resume is None and rank_zero_only.rank == 0:
        stale = [run_dir / name for name in STALE] + list((run_dir / "tensorboard").glob(TB_EVENTS))
        for path in stale:
            path.unlink(missing_ok=True)
    L.seed_everything(run.trainer.seed, verbose=False)
    task = task_for(command, run, max_steps, **task_args)
    trainer, last = build_trainer(run, run_dir, max_steps)
    try:
        trainer.fit(task, ckpt_path=resume)
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
    summary = {"name": run_dir.name, **task.summary()}
    if trainer.is_global_zero:
        export(task, last.path, run_dir / "model")
        (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    trainer.strategy.barrier()
    return summary


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


def training_state(path: Path, command: str, run: RunConfig) -> dict[str, Any]:
    """Our part of a Lightning checkpoint, refused (before Lightning loads it) if it cannot resume ``run``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever failed, the file is not a checkpoint we can resume
        raise CheckpointError(f"--resume: {path} is not a readable training checkpoint ({e})") from None
    ours = state.get(STATE_KEY) if isinstance(state, dict) else None
    if ours is None:
        raise CheckpointError(f"--resume: {path} is not a checkpoint written by blt-train")
    if ours["kind"] != command:
        raise CheckpointError(f"--resume: {path} is a checkpoint of '{ours['kind']}', not of '{command}'")
    # the model section named like the command must match the checkpoint's
    diff = first_difference(ours["config"][command], to_dict(getattr(run, command)), f"{command}.")
    if diff is not None:
        key, saved, now = diff
        raise CheckpointError(
            f"--resume: {path} was trained with {key} = {saved!r}, this run has {now!r}; "
            "the model must match to resume"
        )
    return ours


def export(task: LMTask, checkpoint: Path, directory: Path) -> None:
    """``save_pretrained`` of the model as saved in ``checkpoint`` (whole tensors, whatever the strategy)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model = task.build_model()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.save_pretrained(directory)
