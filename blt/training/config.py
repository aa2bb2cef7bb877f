"""The sections of a training command: data, models, optimisation, the run, and Lightning's Trainer.

A run file (``configs/tiny.yaml``) has the top-level sections ``data``, ``entropy``, ``blt``, ``baseline``,
``optim``, ``run`` and ``trainer``. All but ``trainer`` are config dataclasses whose fields are documented
(``--help`` shows it). ``trainer`` holds arguments of Lightning's ``Trainer`` under Lightning's own names,
passed to it unchanged, as LightningCLI does; only the arguments the package sets itself are left out
(:data:`TRAINER_SKIP`). ``run`` holds the package's own settings of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blt.baseline import BaselineTrainConfig
from blt.config import BLTConfig, EntropyModelConfig, check, doc
from blt.data import DataConfig

COMMANDS = ("entropy", "blt", "baseline")
MODELS = {"entropy": EntropyModelConfig, "blt": BLTConfig, "baseline": BaselineTrainConfig}
# the model sections each command reads (the blt command trains its entropy model first)
READS = {"entropy": ("entropy",), "blt": ("entropy", "blt"), "baseline": ("baseline",)}

# Trainer arguments the package sets itself (loggers, checkpoints, the endless stream's epoch settings),
# or whose modes replace the loop a resumable run relies on (a run ends at max_steps, nowhere else)
TRAINER_SKIP = {
    "logger", "callbacks", "plugins", "default_root_dir", "enable_checkpointing", "max_epochs",
    "check_val_every_n_epoch", "num_sanity_val_steps", "use_distributed_sampler",
    "reload_dataloaders_every_n_epochs", "enable_autolog_hparams", "model_registry",
    "fast_dev_run", "overfit_batches", "barebones", "limit_train_batches", "min_epochs", "min_steps",
    "max_time", "limit_test_batches", "limit_predict_batches",
}  # fmt: skip
# the package's defaults where Lightning's do not fit an endless training stream or a small CPU run
TRAINER_DEFAULTS = {
    "max_steps": 200,
    "val_check_interval": 100,
    "limit_val_batches": 8,
    "log_every_n_steps": 10,
    "gradient_clip_val": 1.0,
    "devices": 1,
    "enable_model_summary": False,
}


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (gradient clipping is trainer.gradient_clip_val)."""

    lr: float = doc("peak learning rate (reached after warmup_steps)", 3e-3)
    min_lr_ratio: float = doc("final learning rate as a fraction of lr (end of the cosine)", 0.1)
    warmup_steps: int = doc("optimizer steps of linear warm-up from 0 to lr", 20)
    weight_decay: float = doc("AdamW decoupled weight decay on matrices and embeddings (not norms)", 0.1)
    beta1: float = doc("AdamW beta1", 0.9)
    beta2: float = doc("AdamW beta2", 0.95)
    eps: float = doc("AdamW epsilon", 1e-8)

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(
            0.0 <= self.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"
        )
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        check(self.eps > 0, f"optim.eps must be > 0, got {self.eps}")


@dataclass
class RunConfig:
    """The package's own settings of a run: where it is written, seeds, checkpoints, the blt stages."""

    output_dir: str = doc("folder holding one directory per run", "runs")
    name: str | None = doc(
        "run name: the run directory is output_dir/name (null: <stem of the last --config file>-<command>)",
        None,
    )
    seed: int = doc("seed for weights, dropout and anything random (data order is data.seed)", 0)
    checkpoint_every: int = doc("write checkpoints/last.ckpt every this many optimizer steps", 100)
    entropy_max_steps: int | None = doc(
        "blt: optimizer steps of the entropy model it trains first (null: trainer.max_steps)", None
    )
    target_patch_size: float | None = doc(
        "blt: calibrate blt.patching's threshold on training text to this mean patch size (null: keep it)",
        None,
    )
    elastic_patch_size: list[float] | None = doc(
        "blt: elastic patching, [min, max] mean patch sizes: each training step draws one uniformly (from "
        "run.seed and the step) and patches its batch at the entropy threshold calibrated for it; validation "
        "and the exported model keep run.target_patch_size (null: the middle of the range) (null: off)",
        None,
    )
    sample_bytes: int = doc("bytes generated from the final BLT as a sample (0: none)", 200)
    peak_flops: float | None = doc(
        "peak FLOP/s per device for MFU (null: known GPUs by name; on CPU a short matmul measures it)", None
    )
    compile: bool = doc("compile the model with torch.compile", False)
    score_val_split: bool = doc(
        "after training, score the whole validation split as `blt-eval bpb` does (every byte predicted "
        "once) into summary.json (false: skip, e.g. for a very large validation split)",
        True,
    )

    def __post_init__(self) -> None:
        check(bool(self.output_dir), "run.output_dir must not be empty")
        check(self.name is None or bool(self.name), "run.name must not be empty (null: from the config file)")
        check(self.checkpoint_every > 0, f"run.checkpoint_every must be > 0, got {self.checkpoint_every}")
        check(
            self.entropy_max_steps is None or self.entropy_max_steps > 0,
            f"run.entropy_max_steps must be > 0 or null, got {self.entropy_max_steps}",
        )
        check(
            self.target_patch_size is None or self.target_patch_size >= 1,
            f"run.target_patch_size must be >= 1 or null, got {self.target_patch_size}",
        )
        self.check_elastic()
        check(self.sample_bytes >= 0, f"run.sample_bytes must be >= 0, got {self.sample_bytes}")
        check(self.peak_flops is None or self.peak_flops > 0, "run.peak_flops must be > 0 or null")

    def check_elastic(self) -> None:
        sizes = self.elastic_patch_size
        if sizes is None:
            return
        check(
            len(sizes) == 2 and all(math.isfinite(s) for s in sizes),
            f"run.elastic_patch_size must be [min, max] (two numbers) or null, got {sizes}",
        )
        check(
            min(sizes) >= 1,
            f"run.elastic_patch_size sizes must be >= 1 (positions per patch), got {sizes}",
        )
        check(
            sizes[0] <= sizes[1],
            f"run.elastic_patch_size must be [min, max] with min <= max, got min {sizes[0]} > max {sizes[1]}",
        )


def check_trainer(trainer: dict[str, Any]) -> None:
    """What the package relies on in Lightning's arguments (Lightning checks the rest when it starts)."""
    steps, every, limit = trainer["max_steps"], trainer["val_check_interval"], trainer["limit_val_batches"]
    check(
        isinstance(steps, int) and steps > 0,
        f"trainer.max_steps must be > 0 (the training stream is endless: max_steps ends a run), got {steps}",
    )
    check(
        isinstance(every, int) and not isinstance(every, bool) and every > 0,
        f"trainer.val_check_interval must be a whole number of batches > 0, got {every}",
    )
    check(
        limit is None or limit > 0,
        f"trainer.limit_val_batches must be > 0 (validation bits-per-byte is a run's result), got {limit}",
    )
    check(
        trainer["accumulate_grad_batches"] >= 1,
        f"trainer.accumulate_grad_batches must be >= 1, got {trainer['accumulate_grad_batches']}",
    )


@dataclass
class TrainConfig:
    """Every section one ``train.py`` command reads, parsed and checked (the model sections it reads only)."""

    data: DataConfig = doc("training corpus, windows and batches")
    optim: OptimConfig = doc("optimizer and schedule")
    run: RunConfig = doc("the package's own run settings")
    trainer: dict[str, Any] = doc("arguments of Lightning's Trainer, under Lightning's names")
    entropy: EntropyModelConfig | None = doc("entropy model (entropy command, and first stage of blt)", None)
    blt: BLTConfig | None = doc(
        "byte latent transformer (its entropy_model comes from the entropy stage)", None
    )
    baseline: BaselineTrainConfig | None = doc("tokenized BPE baseline", None)
    config_files: list[str] = doc("the --config files, in order", default_factory=list)

    def run_dir(self, command: str) -> Path:
        """``run.output_dir / run.name`` (default name: the last config file's stem and the command)."""
        stem = Path(self.config_files[-1]).stem if self.config_files else "default"
        return Path(self.run.output_dir) / (self.run.name or f"{stem}-{command}")


__all__ = [
    "COMMANDS",
    "MODELS",
    "READS",
    "TRAINER_DEFAULTS",
    "TRAINER_SKIP",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "check_trainer",
]
