"""The training commands as explicit stages, each a function of ready configs and weights.

    entropy   train the entropy model
    blt       1. train the entropy model into <run>/entropy (or load --entropy_checkpoint)
              2. calibrate the patching threshold to run.target_patch_size (and, with
                 run.elastic_patch_size, at a grid of sizes over that range: blt.training.elastic)
              3. train the BLT, its frozen entropy model patching every batch on the fly
    baseline  1. train the BPE tokenizer (<run>/tokenizer.model)  2. tokenize the corpus
              3. train the tokenized model

:func:`run_command` checks everything a user can get wrong before the first stage starts (settings,
sequence lengths, corpus, checkpoints, the run directory), holds the run directory's lock while the stages
run, and hands each stage what it needs. With ``--resume`` the stage a checkpoint belongs to continues
from it, finished stages before it are reused, and a finished run is left untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from blt.baseline import TOKENIZER_FILE, BPETokenizer, train_tokenizer
from blt.checkpoint import CheckpointError, directory_of, entropy_vocab_size
from blt.config import BLTConfig, ConfigError, PatchingConfig, from_dict
from blt.data import SPLITS, PackedBatches, iter_documents, load_split
from blt.model import BLT
from blt.patcher import EntropyModel, calibrate_threshold, patch_lengths
from blt.patcher.schemes import ENTROPY_SCHEMES
from blt.training.callbacks import say
from blt.training.config import TrainConfig
from blt.training.datamodule import token_stream
from blt.training.elastic import ElasticPatching
from blt.training.modules import BaselineTask, BLTTask, EntropyTask
from blt.training.run import (
    Resume,
    check_trainer_settings,
    fit,
    last_checkpoint,
    read_summary,
    training_state,
)
from blt.training.rundir import check_location, held, lock, refuse_or_clear, remove_temporaries


@dataclass
class Flags:
    """The options of a command that are not config sections."""

    resume: str | None = None  # "last" or a checkpoint path
    overwrite: bool = False
    entropy_checkpoint: str | None = None  # blt only


@dataclass
class Stage:
    """One training stage: the task it trains, where it writes, how far it trains, where it starts."""

    task: str  # "entropy", "blt" or "baseline"
    dir: Path
    max_steps: int
    steps_setting: str  # the setting max_steps comes from, for messages
    resume: Resume | None = None  # continue from this checkpoint
    reuse: bool = False  # finished earlier: its model is used as it is


# ----------------------------------------------------------------------------------------------------------
# the command: checks, plan, lock, stages


def run_command(command: str, cfg: TrainConfig, flags: Flags) -> dict[str, Any] | None:
    """Run ``command``; returns the final stage's summary (None on ranks other than the first)."""
    run_dir = cfg.run_dir(command)
    first = rank_zero_only.rank == 0  # the other ranks of a distributed run start after it has checked
    if flags.resume is not None and flags.overwrite:
        raise ConfigError("--overwrite starts the run again from nothing; it does not go with --resume")
    check_location(Path(cfg.run.output_dir), run_dir)
    if first and flags.resume is None and not flags.overwrite:
        refuse_or_clear(run_dir, overwrite=False)  # before any work; checked again under the lock
    entropy_dir = entropy_checkpoint(flags.entropy_checkpoint, cfg, run_dir, flags)
    stages = plan(command, cfg, run_dir, flags, entropy_dir)
    check_settings(command, cfg, stages)
    check_trainer_settings(cfg.trainer, cfg.run)
    check_corpus(command, cfg)
    final = stages[-1]
    if final.reuse:
        say(complete_message(run_dir, final, cfg))
        return read_summary(final.dir)
    with lock(run_dir):
        if first and flags.resume is None:
            refuse_or_clear(run_dir, flags.overwrite)
        if first:
            remove_temporaries(run_dir)
        if command == "entropy":
            return report(train_entropy(cfg, final), final, cfg.trainer["limit_val_batches"])
        if command == "blt":
            return blt_stages(cfg, stages, entropy_dir)
        return baseline_stages(cfg, final, resuming=flags.resume is not None)


def plan(
    command: str, cfg: TrainConfig, run_dir: Path, flags: Flags, entropy_dir: Path | None
) -> list[Stage]:
    """The stages ``command`` runs, each with its checkpoint to resume from (if any)."""
    final = Stage(command, run_dir, cfg.trainer["max_steps"], "trainer.max_steps")
    final.resume = resume_of(final, cfg, flags.resume, run_dir)
    stages = [final]
    needs_entropy = cfg.blt is not None and cfg.blt.patching.scheme in ENTROPY_SCHEMES
    if command == "blt" and final.resume is None and entropy_dir is None and needs_entropy:
        steps = cfg.run.entropy_max_steps or cfg.trainer["max_steps"]
        setting = "run.entropy_max_steps" if cfg.run.entropy_max_steps else "trainer.max_steps"
        stage = Stage("entropy", run_dir / "entropy", steps, setting)
        if flags.resume is not None and read_summary(stage.dir) is not None:
            stage.reuse = True
        elif flags.resume is not None and last_checkpoint(stage.dir) is not None:
            stage.resume = training_state(last_checkpoint(stage.dir), "entropy", sections(cfg, "entropy"))
        stages.insert(0, stage)
    for stage in stages:
        if stage.resume is not None and stage.max_steps < stage.resume.step:
            raise ConfigError(
                f"--resume: {stage.resume.path} is at step {stage.resume.step}, past {stage.steps_setting} "
                f"({stage.max_steps}); give a {stage.steps_setting} of at least {stage.resume.step}"
            )
    final.reuse = is_complete(final)
    return stages


def sections(cfg: TrainConfig, task: str) -> dict[str, Any]:
    return {task: getattr(cfg, task), "optim": cfg.optim}


def resume_of(stage: Stage, cfg: TrainConfig, resume: str | None, run_dir: Path) -> Resume | None:
    """The checkpoint ``--resume`` names for ``stage``; None to start the stage from its beginning."""
    if resume is None:
        return None
    if resume == "last":
        path = last_checkpoint(stage.dir)
        if path is None:
            if held(run_dir):  # stopped before the stage's first checkpoint: it starts again
                return None
            raise CheckpointError(
                f"--resume last: no run to resume in {run_dir} (no checkpoints/last.ckpt); run without "
                "--resume to start it, or check --run.output_dir / --run.name"
            )
    else:
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"--resume: checkpoint file not found: {path}")
    return training_state(path, stage.task, sections(cfg, stage.task))


def is_complete(stage: Stage) -> bool:
    """Resumed at its final step with nothing more to train, and exported and summarised after it."""
    if stage.resume is None or stage.max_steps != stage.resume.step:
        return False
    summary = read_summary(stage.dir)
    return summary is not None and summary.get("steps") == stage.resume.step


def complete_message(run_dir: Path, stage: Stage, cfg: TrainConfig) -> str:
    step, cosine = stage.resume.step, stage.resume.state["cosine_steps"]
    floor = cfg.optim.lr * cfg.optim.min_lr_ratio
    return (
        f"{run_dir} is complete: it trained all {step} steps, and its model/ and summary.json are written; "
        f"nothing to do, no file was touched. To train it further, resume with a larger "
        f"--trainer.max_steps: its learning-rate schedule ended at step {cosine}, so the added steps run "
        f"at the final learning rate {floor:g} (optim.min_lr_ratio x optim.lr)"
    )


def schedule_note(stage: Stage, cfg: TrainConfig) -> str | None:
    """What a resume with another step budget does to the learning rate (the schedule never changes)."""
    cosine, n = stage.resume.state["cosine_steps"], stage.max_steps
    if n == cosine:
        return None
    if n > cosine:
        floor = cfg.optim.lr * cfg.optim.min_lr_ratio
        return (
            f"{stage.steps_setting} is {n}, the checkpoint's cosine schedule ends at step {cosine}: the "
            f"schedule is kept, steps {max(cosine, stage.resume.step) + 1}-{n} run at its final learning rate "
            f"{floor:g} (recorded in summary.json under 'schedule')"
        )
    return (
        f"{stage.steps_setting} is {n}, the checkpoint's cosine schedule ends at step {cosine}: the schedule "
        f"is kept, so this run stops before the learning rate reaches its final value (recorded in "
        "summary.json under 'schedule')"
    )


# ----------------------------------------------------------------------------------------------------------
# checks before any work


def check_settings(command: str, cfg: TrainConfig, stages: list[Stage]) -> None:
    """Settings that only fail together: sequence lengths against every model's max_seq_len, and
    calibration against the patching scheme. Checked with the configs the stages will really use."""
    n = cfg.data.seq_len
    limits = []
    if any(s.task == "entropy" and not s.reuse for s in stages):
        limits.append(("entropy.max_seq_len", cfg.entropy.max_seq_len))
    if command == "blt":
        blt = blt_config(cfg, stages[-1])
        limits += [("blt.encoder.max_seq_len", blt.encoder.max_seq_len)]
        limits += [("blt.decoder.max_seq_len", blt.decoder.max_seq_len)]
    if command == "baseline":  # in tokens: at most as many as bytes
        limits.append(("baseline.max_seq_len", cfg.baseline.max_seq_len))
    for name, limit in limits:
        if n > limit:
            raise ConfigError(
                f"data.seq_len ({n}) is longer than {name} ({limit}): lower data.seq_len or raise {name}"
            )
    if command == "blt":
        check_patches(
            cfg, blt, calibrating=stages[-1].resume is None and cfg.run.target_patch_size is not None
        )
        check_elastic(cfg, blt, stages[-1])
    elif cfg.run.elastic_patch_size is not None:  # silently training without it would mislead
        raise ConfigError(
            f"run.elastic_patch_size ({cfg.run.elastic_patch_size}) patches BLT batches, but `{command}` "
            "trains no patched model: set run.elastic_patch_size null or train `blt`"
        )


def check_patches(cfg: TrainConfig, blt: BLTConfig, calibrating: bool) -> None:
    """The global transformer must fit a window's patches; calibration needs an entropy scheme."""
    n, scheme = cfg.data.seq_len, blt.patching.scheme
    patches = math.ceil(n / blt.patching.patch_size) if scheme == "static" else n
    if patches > blt.global_transformer.max_seq_len:
        raise ConfigError(
            f"data.seq_len ({n}) makes up to {patches} patches per window under blt.patching.scheme "
            f"{scheme!r}, more than blt.global_transformer.max_seq_len ({blt.global_transformer.max_seq_len}): "
            "lower data.seq_len or raise that max_seq_len"
        )
    if calibrating and scheme not in ENTROPY_SCHEMES:
        raise ConfigError(
            f"run.target_patch_size ({cfg.run.target_patch_size}) calibrates an entropy threshold, but "
            f"blt.patching.scheme {scheme!r} has none: set run.target_patch_size null"
        )


def check_elastic(cfg: TrainConfig, blt: BLTConfig, stage: Stage) -> None:
    """Elastic patching needs a threshold to draw; a resumed run keeps the range it started with."""
    sizes = cfg.run.elastic_patch_size
    if sizes is not None and blt.patching.scheme not in ENTROPY_SCHEMES:
        raise ConfigError(
            f"run.elastic_patch_size ({sizes}) draws an entropy threshold per batch, but "
            f"blt.patching.scheme {blt.patching.scheme!r} has none: set run.elastic_patch_size null or use "
            f"one of the schemes {list(ENTROPY_SCHEMES)}"
        )
    if stage.resume is not None:
        saved = elastic_of(stage)
        saved_sizes = saved and list(saved.patch_size_range)
        if saved_sizes != (sizes and [float(s) for s in sizes]):
            raise ConfigError(
                f"--resume: {stage.resume.path} was trained with run.elastic_patch_size = {saved_sizes}, this "
                f"run has {sizes}; give the checkpoint's range to resume"
            )


def elastic_of(stage: Stage) -> ElasticPatching | None:
    """The elastic grid a resumed checkpoint was trained with (None: without elastic patching)."""
    saved = stage.resume.state["extras"].get("elastic")
    return ElasticPatching.from_dict(saved) if saved else None


def check_corpus(command: str, cfg: TrainConfig) -> None:
    """Corpus errors (missing path, empty split, too few windows) before any model is built."""
    for split in SPLITS:
        load_split(cfg.data, split)
        if command != "baseline":  # the baseline's windows are tokens, known once it is tokenized
            PackedBatches(cfg.data, split)


def check_entropy_vocab(directory: Path, vocab_size: int) -> None:
    """The entropy model must predict the BLT's ids: refuse another vocabulary before loading anything."""
    found = entropy_vocab_size(directory)  # refuses a directory of a kind that holds no entropy model
    if found != vocab_size:
        raise CheckpointError(
            f"entropy checkpoint {directory} has vocabulary size {found}, but the BLT's is {vocab_size} "
            "(blt.vocab_size): they must match"
        )


def entropy_checkpoint(path: str | None, cfg: TrainConfig, run_dir: Path, flags: Flags) -> Path | None:
    """The entropy model directory ``--entropy_checkpoint`` names, checked before anything is loaded:
    of an entropy model's kind, and predicting the BLT's ids."""
    if path is None:
        return None
    directory = directory_of(path)  # a hub id's snapshot, a run directory's model/
    if not directory.exists():
        raise CheckpointError(f"--entropy_checkpoint: directory does not exist: {path}")
    check_entropy_vocab(directory, cfg.blt.vocab_size)
    if flags.overwrite and run_dir.resolve() in directory.resolve().parents:
        raise ConfigError(f"--entropy_checkpoint {directory} is inside {run_dir}, which --overwrite removes")
    return directory


# ----------------------------------------------------------------------------------------------------------
# stages


def fit_stage(cfg: TrainConfig, stage: Stage, make_task) -> dict[str, Any]:
    """Seed, build the stage's task (``make_task(cosine_steps)``) and train it."""
    L.seed_everything(cfg.run.seed, verbose=False)
    cosine = stage.resume.state["cosine_steps"] if stage.resume else stage.max_steps
    if stage.resume is not None:
        say(f"resuming {stage.dir} at step {stage.resume.step} from {stage.resume.path}")
        note = schedule_note(stage, cfg)
        if note:
            say(note)
    return fit(make_task(cosine), stage.dir, cfg.trainer, cfg.run, stage.max_steps, stage.resume)


def train_entropy(cfg: TrainConfig, stage: Stage) -> dict[str, Any]:
    return fit_stage(
        cfg, stage, lambda cosine: EntropyTask(cfg.entropy, cfg.data, cfg.optim, cosine, cfg.run.compile)
    )


def blt_stages(cfg: TrainConfig, stages: list[Stage], entropy_dir: Path | None) -> dict[str, Any]:
    final = stages[-1]
    if final.resume is not None:  # the checkpoint holds the entropy model and the calibrated patching
        say("resuming the BLT: its entropy model and calibrated patching come from its checkpoint")
        summary = fit_stage(cfg, final, blt_task(cfg, blt_config(cfg, final), None, elastic_of(final)))
    else:
        entropy = entropy_model(cfg, stages[0] if len(stages) > 1 else None, entropy_dir)
        patching, elastic = calibrate(entropy, cfg) if entropy is not None else (cfg.blt.patching, None)
        config = replace(cfg.blt, entropy_model=entropy and entropy.config, patching=patching)
        say(f"stage 3/3: training the BLT ({final.max_steps} steps) into {final.dir}")
        summary = fit_stage(cfg, final, blt_task(cfg, config, entropy and entropy.state_dict(), elastic))
    report(summary, final, cfg.trainer["limit_val_batches"])
    if cfg.run.sample_bytes:
        say_sample(cfg, final.dir / "model")
    return summary


def blt_config(cfg: TrainConfig, stage: Stage) -> BLTConfig:
    """The BLT's config: a resumed run's comes from its checkpoint (entropy model, calibrated patching)."""
    if stage.resume is None:
        return cfg.blt
    return from_dict(BLTConfig, stage.resume.state["config"]["blt"], prefix="blt.")


def blt_task(cfg: TrainConfig, config: BLTConfig, patcher_state, elastic: ElasticPatching | None):
    return lambda cosine: BLTTask(
        config, cfg.data, cfg.optim, cosine, cfg.run.compile, patcher_state, elastic, cfg.run.seed
    )


def entropy_model(cfg: TrainConfig, stage: Stage | None, checkpoint: Path | None) -> EntropyModel | None:
    """Stage 1 of blt: the entropy model that patches the BLT's input, trained here or given."""
    if checkpoint is not None:
        say(f"stage 1/3: patching with the entropy model in {checkpoint}")
        return EntropyModel.from_pretrained(checkpoint)
    if stage is None:  # a patching scheme without entropies
        return None
    if stage.reuse:
        say(f"stage 1/3: reusing the entropy model trained in {stage.dir}")
    else:
        say(f"stage 1/3: training the entropy model ({stage.max_steps} steps) into {stage.dir}")
        report(train_entropy(cfg, stage), stage, cfg.trainer["limit_val_batches"])
    return EntropyModel.from_pretrained(stage.dir / "model")


def sample_rows(cfg: TrainConfig, split: str, sample_bytes: int = 32768) -> torch.Tensor:
    """The first windows of ``split`` in corpus order, about ``sample_bytes`` of them: [N, seq_len]."""
    packed = PackedBatches(cfg.data, split, shuffle=False)
    n = min(len(packed), math.ceil(sample_bytes / (cfg.data.batch_size * cfg.data.seq_len)))
    return torch.cat([packed.batch_at(i)[:, :-1] for i in range(n)])


@torch.no_grad()
def calibrate(entropy: EntropyModel, cfg: TrainConfig) -> tuple[PatchingConfig, ElasticPatching | None]:
    """Stage 2 of blt: the threshold giving run.target_patch_size on training windows (else as given),
    and under run.elastic_patch_size the thresholds over its range (None without it)."""
    patching, elastic, sizes = cfg.blt.patching, None, cfg.run.elastic_patch_size
    target = cfg.run.target_patch_size
    if sizes is not None and target is None:  # validation and the export patch in the middle of the range
        target = (sizes[0] + sizes[1]) / 2
    if target is not None:
        rows = sample_rows(cfg, "train")
        docs, entropies = list(rows), list(entropy.entropies(rows))
        calibration = calibrate_threshold(docs, entropies, target, patching=patching)
        if sizes is not None:
            elastic = ElasticPatching.calibrate(docs, entropies, (sizes[0], sizes[1]), patching)
            grid = ", ".join(f"{s:g}: {t:.4f}" for s, t in zip(elastic.sizes, elastic.thresholds))
            say(f"stage 2/3: elastic patching over mean patch sizes {sizes}, {elastic.field} by size: {grid}")
        patching = calibration.patching(patching)
        say(f"stage 2/3: patching calibrated on {rows.numel():,} training bytes: {calibration}")
    if patching.scheme in ENTROPY_SCHEMES:
        rows = sample_rows(cfg, "val")
        patches = int((patch_lengths(rows, patching, entropy.entropies(rows)) > 0).sum())
        say(
            f"stage 2/3: on {rows.numel():,} validation bytes the mean patch size is {rows.numel() / patches:.3f}"
        )
    return patching, elastic


def baseline_stages(cfg: TrainConfig, final: Stage, resuming: bool) -> dict[str, Any]:
    tokenizer = tokenizer_stage(cfg, final.dir, resuming)
    say("stage 2/3: tokenizing the training and validation splits")
    tokens = {split: token_stream(cfg.data, split, tokenizer.encode) for split in SPLITS}
    say(f"stage 3/3: training the tokenized baseline ({final.max_steps} steps) into {final.dir}")
    summary = fit_stage(
        cfg,
        final,
        lambda cosine: BaselineTask(
            cfg.baseline, cfg.data, cfg.optim, cosine, cfg.run.compile, tokenizer, tokens
        ),
    )
    return report(summary, final, cfg.trainer["limit_val_batches"])


def tokenizer_stage(cfg: TrainConfig, run_dir: Path, resuming: bool) -> BPETokenizer:
    """Stage 1 of baseline: the BPE tokenizer, trained on the training split (kept for resuming)."""
    path = run_dir / TOKENIZER_FILE
    if resuming and path.is_file():
        say(f"stage 1/3: reusing the tokenizer {path}")
        return BPETokenizer.load(path)
    say(f"stage 1/3: training a {cfg.baseline.vocab_size}-piece BPE tokenizer on the training split")
    tokenizer = train_tokenizer(
        iter_documents(cfg.data, "train"), cfg.baseline.vocab_size, cfg.baseline.tokenizer
    )
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(path)
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# what the user sees


def report(summary: dict[str, Any], stage: Stage, limit: Any) -> dict[str, Any]:
    """The stage's two validation numbers, each saying what it measures."""
    seen, split = summary["val_bytes"], summary["val_split_bytes"]
    say(
        f"\n{stage.task}: validation bits-per-byte {summary['val_bpb']:.3f} after {summary['steps']} steps "
        f"({summary['bytes_seen']:,} training bytes), measured on {seen:,} bytes: the first "
        f"{limit} batches (trainer.limit_val_batches) of the validation split, {seen / split:.0%} of its "
        f"{split:,} bytes"
    )
    whole = summary.get("val_split")
    if whole:
        se = "" if whole["stderr"] is None else f" ± {whole['stderr']:.3f}"
        say(
            f"{stage.task}: whole validation split, every byte predicted once (as blt-eval bpb): "
            f"{whole['bits_per_byte']:.3f}{se} bits per byte over {whole['documents']} documents"
        )
    say(f"{stage.task}: run directory {stage.dir}")
    return summary


@rank_zero_only
def say_sample(cfg: TrainConfig, model_dir: Path) -> None:
    """Continue the start of the first validation document with the exported model."""
    prompt = next(iter_documents(cfg.data, "val"))[:48]
    model = BLT.from_pretrained(model_dir)
    n = cfg.run.sample_bytes
    new = model.generate(prompt, n, temperature=0.8, top_k=20, seed=cfg.run.seed)
    say(
        f"sample (prompt, then {n} generated bytes):\n"
        f"{prompt.decode('utf-8', errors='replace')}|{new.decode('utf-8', errors='replace')}"
    )
