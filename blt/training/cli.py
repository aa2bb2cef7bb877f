"""``train.py`` / ``blt-train``: train the entropy model, the BLT or the tokenized baseline.

    python train.py {entropy,blt,baseline} [--config FILE] [--section.key value ...]
                    [--resume PATH|last] [--entropy_checkpoint DIR] [--print_config] [--help]

Conventions of LightningCLI without its dependencies: a YAML file of sections (``data``, ``entropy``,
``blt``, ``baseline``, ``optim``, ``trainer``) overridden by ``--section.key value``; ``--print_config``
prints the merged YAML and exits; ``--help`` lists every field with its documentation. ``blt`` without
``--entropy_checkpoint`` first trains an entropy model into ``<run dir>/entropy``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import yaml
from lightning.pytorch.utilities import rank_zero_only

from blt.baseline import TOKENIZER_FILE, BPETokenizer, train_tokenizer
from blt.checkpoint import CheckpointError, entropy_vocab_size, model_directory
from blt.config import BLTConfig, ConfigError, describe, from_dict, to_dict
from blt.data import iter_documents, load_split
from blt.model import BLT
from blt.patcher.schemes import ENTROPY_SCHEMES
from blt.training.callbacks import NonFiniteLossError, say
from blt.training.config import COMMANDS, SECTIONS, RunConfig, load_run_config, run_name
from blt.training.run import SUMMARY, fit, last_checkpoint, resolve_resume, training_state

USAGE = (
    "usage: train.py {entropy,blt,baseline} [--config FILE] [--section.key value ...]\n"
    "                [--resume PATH|last] [--entropy_checkpoint DIR] [--print_config] [--help]"
)
FLAGS = {"--config": True, "--resume": True, "--entropy_checkpoint": True, "--print_config": False}


def parse_args(argv: list[str]) -> tuple[str | None, dict[str, str | bool], list[str]]:
    """Split argv into the command, our own flags and the ``--section.key value`` overrides."""
    command = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if command is not None else argv
    flags: dict[str, str | bool] = {}
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        name, eq, value = rest[i].partition("=")
        if name in ("-h", "--help"):
            flags["--help"] = True
        elif name in FLAGS and not FLAGS[name]:
            flags[name] = True
        elif name in FLAGS:
            if not eq:
                if i + 1 >= len(rest):
                    raise ConfigError(f"option {name} needs a value")
                i, value = i + 1, rest[i + 1]
            flags[name] = value
        else:  # an override: keep it and its value for blt.config.parse_overrides
            overrides.append(rest[i])
            if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                i += 1
                overrides.append(rest[i])
        i += 1
    return command, flags, overrides


def help_text(command: str | None) -> str:
    sections = SECTIONS[command] if command in SECTIONS else tuple(SECTIONS["blt"]) + ("baseline",)
    lines = [USAGE, "", __doc__.strip().split("\n\n", 2)[2], "", "commands: " + ", ".join(COMMANDS), ""]
    lines += [
        "  --config FILE             YAML file with the sections below",
        "  --resume PATH|last        continue from a checkpoint (last: <run dir>/checkpoints/last.ckpt)",
        "  --entropy_checkpoint DIR  blt: patch with this trained entropy model instead of training one",
        "  --print_config            print the merged configuration as YAML and exit",
        "",
    ]
    for section in sections:
        lines.append(f"{section}:")
        rows = describe(type(getattr(RunConfig(), section)), f"{section}.")
        width = max(len(name) + len(tp) for name, tp, _ in rows) + 4
        lines += [f"  {name} ({tp}){' ' * (width - len(name) - len(tp))}{text}" for name, tp, text in rows]
    return "\n".join(lines)


def entropy_model_dir(run: RunConfig, run_dir: Path, resume: bool) -> Path:
    """The entropy model the blt command patches with, trained into ``run_dir/entropy`` (reused on resume)."""
    stage = run_dir / "entropy"
    if resume and (stage / SUMMARY).is_file() and (stage / "model").is_dir():
        say(f"reusing the entropy model trained in {stage}")
        return stage / "model"
    steps = run.trainer.entropy_max_steps or run.trainer.max_steps
    say(f"training the entropy model first ({steps} steps) into {stage}")
    summary = fit("entropy", run, stage, steps, last_checkpoint(stage) if resume else None)
    say(f"entropy model: validation bits-per-byte {summary['val_bpb']:.3f}")
    return stage / "model"


def check_entropy_vocab(directory: Path, vocab_size: int) -> None:
    """The entropy model must predict the BLT's ids: refuse another vocabulary before loading anything."""
    found = entropy_vocab_size(directory)  # refuses a directory of a kind that holds no entropy model
    if found != vocab_size:
        raise CheckpointError(
            f"entropy checkpoint {directory} has vocabulary size {found}, but the BLT's is {vocab_size} "
            "(blt.vocab_size): they must match"
        )


def baseline_tokenizer(run: RunConfig, run_dir: Path, resume: bool) -> BPETokenizer:
    """The baseline's BPE tokenizer, trained on the training split (kept in the run dir for resuming)."""
    path = run_dir / TOKENIZER_FILE
    if resume and path.is_file():
        return BPETokenizer.load(path)
    say(f"training a {run.baseline.vocab_size}-piece BPE tokenizer on the training split")
    tokenizer = train_tokenizer(
        iter_documents(run.data, "train"), run.baseline.vocab_size, run.baseline.tokenizer
    )
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(path)
    return tokenizer


def resume_checkpoint(command: str, resume: str | None, run_dir: Path, staged: bool) -> Path | None:
    """The checkpoint ``--resume`` names; None to start fresh (a blt run killed in its entropy stage)."""
    if resume is None:
        return None
    if resume == "last" and command == "blt" and staged and last_checkpoint(run_dir) is None:
        stage = run_dir / "entropy"
        if last_checkpoint(stage) is not None or (stage / SUMMARY).is_file():
            return None  # the entropy stage resumes (or is reused), then the BLT starts
    return resolve_resume(resume, run_dir)


def train(
    command: str, run: RunConfig, config_path: str | None, resume: str | None, entropy_dir: str | None
) -> dict:
    run_dir = Path(run.trainer.output_dir) / run_name(run, command, config_path)
    for split in ("train", "val"):  # corpus errors (missing path, empty split) before any model is built
        load_split(run.data, split)
    resume_path = resume_checkpoint(command, resume, run_dir, staged=entropy_dir is None)
    extra = {}
    if resume_path is not None:
        saved = training_state(resume_path, command, run)
        if command == "blt":  # the checkpoint holds the patcher and its calibrated patching
            run = replace(run, blt=from_dict(BLTConfig, saved["config"]["blt"]))
    if (
        command == "blt"
        and resume_path is None
        and (entropy_dir is not None or run.blt.patching.scheme in ENTROPY_SCHEMES)
    ):
        if entropy_dir is not None and not Path(entropy_dir).exists():
            raise CheckpointError(f"--entropy_checkpoint: directory does not exist: {entropy_dir}")
        source = (
            model_directory(entropy_dir)  # a run directory stands for its exported model/
            if entropy_dir is not None
            else entropy_model_dir(run, run_dir, resume is not None)
        )
        check_entropy_vocab(source, run.blt.vocab_size)
        extra["entropy_dir"] = source
    if command == "baseline":
        extra["tokenizer"] = baseline_tokenizer(run, run_dir, resume_path is not None)
    summary = fit(command, run, run_dir, run.trainer.max_steps, resume_path, **extra)
    say(
        f"\n{command}: validation bits-per-byte {summary['val_bpb']:.3f} after {summary['steps']} steps "
        f"({summary['bytes_seen']:,} bytes); run directory {run_dir}"
    )
    if command == "blt" and run.trainer.sample_bytes:
        say_sample(run, run_dir / "model")
    return summary


@rank_zero_only
def say_sample(run: RunConfig, model_dir: Path) -> None:
    """Continue the start of the first validation document with the exported model."""
    prompt = next(iter_documents(run.data, "val"))[:48]
    model = BLT.from_pretrained(model_dir)
    new = model.generate(prompt, run.trainer.sample_bytes, temperature=0.8, top_k=20, seed=run.trainer.seed)
    say(
        f"sample (prompt, then {run.trainer.sample_bytes} generated bytes):\n"
        f"{prompt.decode('utf-8', errors='replace')}|{new.decode('utf-8', errors='replace')}"
    )


# Lightning warnings that do not apply here: the BLT's patcher is frozen in eval mode on purpose, and run
# directories legitimately hold earlier logs (a resumed run appends to metrics.csv); a deprecation inside
# Lightning itself under newer torch, which users cannot act on
QUIET = (
    r".*module\(s\) in eval mode.*",
    r"Experiment logs directory .* exists and is not empty.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def no_advertising(record: logging.LogRecord) -> bool:
    """Drop Lightning's 'Tip' advertisement for its cloud logger from the run's output."""
    return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_advertising)
    try:
        command, flags, overrides = parse_args(argv)
        if flags.get("--help"):
            print(help_text(command))
            return 0
        if command not in COMMANDS:
            got = f"got {command!r}" if command else "got none"
            raise ConfigError(f"expected a command ({', '.join(COMMANDS)}), {got}\n{USAGE}")
        if "--entropy_checkpoint" in flags and command != "blt":
            raise ConfigError("--entropy_checkpoint applies to the blt command only")
        config_path = flags.get("--config")
        run = load_run_config(config_path, overrides)
        if flags.get("--print_config"):
            print(
                yaml.safe_dump({s: to_dict(getattr(run, s)) for s in SECTIONS[command]}, sort_keys=False),
                end="",
            )
            return 0
        train(command, run, config_path, flags.get("--resume"), flags.get("--entropy_checkpoint"))
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
