"""Optimisation, trainer and run configs: the sections of a training YAML file.

A run file (``configs/tiny.yaml``) has the top-level sections ``data``, ``entropy``, ``blt``, ``baseline``,
``optim`` and ``trainer``; each is parsed with :func:`blt.config.from_dict` into its dataclass, so an unknown
key anywhere is an error naming it. A command uses the sections it needs (see :data:`SECTIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blt.baseline import BaselineTrainConfig
from blt.config import BLTConfig, EntropyModelConfig, check, doc, from_dict, load_yaml, merge, parse_overrides
from blt.data import DataConfig

COMMANDS = ("entropy", "blt", "baseline")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp", "fsdp")

# sections each command reads; --print_config shows only these
SECTIONS = {
    "entropy": ("data", "entropy", "optim", "trainer"),
    "blt": ("data", "entropy", "blt", "optim", "trainer"),
    "baseline": ("data", "baseline", "optim", "trainer"),
}


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, with gradient clipping."""

    lr: float = doc("peak learning rate (reached after warmup_steps)", 3e-3)
    min_lr_ratio: float = doc("final learning rate as a fraction of lr (end of the cosine)", 0.1)
    warmup_steps: int = doc("optimizer steps of linear warm-up from 0 to lr", 20)
    weight_decay: float = doc("AdamW decoupled weight decay on matrices and embeddings (not norms)", 0.1)
    beta1: float = doc("AdamW beta1", 0.9)
    beta2: float = doc("AdamW beta2", 0.95)
    eps: float = doc("AdamW epsilon", 1e-8)
    grad_clip: float | None = doc("clip the global gradient norm to this value (None: no clipping)", 1.0)

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(
            0.0 <= self.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"
        )
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        check(self.eps > 0, f"optim.eps must be > 0, got {self.eps}")
        check(
            self.grad_clip is None or self.grad_clip > 0,
            f"optim.grad_clip must be > 0 or None, got {self.grad_clip}",
        )


@dataclass
class TrainerConfig:
    """Where and how long to train, on which devices, and how often to validate and checkpoint."""

    output_dir: str = doc("folder holding one directory per run", "runs")
    name: str | None = doc(
        "run name: the run directory is output_dir/name (None: <config file stem>-<command>)", None
    )
    max_steps: int = doc("optimizer steps to train", 200)
    entropy_max_steps: int | None = doc(
        "optimizer steps of the entropy model that the blt command trains first (None: max_steps)", None
    )
    accumulate: int = doc("gradient accumulation: batches per optimizer step", 1)
    val_every: int = doc("validate every this many batches (and at the end)", 100)
    val_batches: int = doc("validation batches per rank each time", 8)
    checkpoint_every: int = doc("write checkpoints/last.ckpt every this many optimizer steps", 100)
    log_every: int = doc("log training metrics every this many batches", 10)
    precision: str = doc(f"numeric precision: one of {list(PRECISIONS)}", "32")
    compile: bool = doc("compile the model with torch.compile", False)
    accelerator: str = doc("auto, cpu or gpu", "auto")
    strategy: str = doc(f"distribution strategy: one of {list(STRATEGIES)}", "auto")
    devices: int = doc("devices (processes) per node", 1)
    num_nodes: int = doc("nodes (machines)", 1)
    seed: int = doc("seed for weights, dropout and anything random (data order is data.seed)", 0)
    peak_flops: float | None = doc(
        "peak FLOP/s per device for MFU (None: known GPUs by name; on CPU a short matmul measures it)", None
    )
    target_patch_size: float | None = doc(
        "blt: calibrate blt.patching's threshold on training text to this mean patch size (None: keep it)",
        None,
    )
    sample_bytes: int = doc("bytes generated from the final BLT as a sample (0: none)", 200)
    progress_bar: bool = doc("show a progress bar", True)

    def __post_init__(self) -> None:
        check(self.max_steps > 0, f"trainer.max_steps must be > 0, got {self.max_steps}")
        check(
            self.entropy_max_steps is None or self.entropy_max_steps > 0,
            f"trainer.entropy_max_steps must be > 0 or None, got {self.entropy_max_steps}",
        )
        for key in (
            "accumulate",
            "val_every",
            "val_batches",
            "checkpoint_every",
            "log_every",
            "devices",
            "num_nodes",
        ):
            check(getattr(self, key) > 0, f"trainer.{key} must be > 0, got {getattr(self, key)}")
        check(
            self.precision in PRECISIONS,
            f"trainer.precision: {self.precision!r} is not one of {list(PRECISIONS)}",
        )
        check(
            self.accelerator in ("auto", "cpu", "gpu"),
            f"trainer.accelerator: {self.accelerator!r} is not auto/cpu/gpu",
        )
        check(
            self.strategy in STRATEGIES,
            f"trainer.strategy: {self.strategy!r} is not one of {list(STRATEGIES)}",
        )
        check(self.peak_flops is None or self.peak_flops > 0, "trainer.peak_flops must be > 0 or None")
        check(
            self.target_patch_size is None or self.target_patch_size >= 1,
            f"trainer.target_patch_size must be >= 1 or None, got {self.target_patch_size}",
        )
        check(self.sample_bytes >= 0, f"trainer.sample_bytes must be >= 0, got {self.sample_bytes}")


@dataclass
class RunConfig:
    """Everything one ``train.py`` command reads."""

    data: DataConfig = doc("training corpus, windows and batches", default_factory=DataConfig)
    entropy: EntropyModelConfig = doc(
        "entropy model (trained by `entropy`, and first by `blt`)", default_factory=EntropyModelConfig
    )
    blt: BLTConfig = doc(
        "byte latent transformer (its entropy_model comes from the entropy section)",
        default_factory=BLTConfig,
    )
    baseline: BaselineTrainConfig = doc("tokenized BPE baseline", default_factory=BaselineTrainConfig)
    optim: OptimConfig = doc("optimizer and schedule", default_factory=OptimConfig)
    trainer: TrainerConfig = doc("trainer", default_factory=TrainerConfig)


def load_run_config(path: str | Path | None, overrides: list[str]) -> RunConfig:
    """The YAML file at ``path`` (optional) merged with ``--section.key value`` overrides, validated."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    return from_dict(RunConfig, merge(data, parse_overrides(overrides)))


def run_name(config: RunConfig, command: str, config_path: str | Path | None) -> str:
    if config.trainer.name:
        return config.trainer.name
    stem = Path(config_path).stem if config_path is not None else "default"
    return f"{stem}-{command}"
