"""LightningModules: one training task per command (entropy model, BLT, tokenized baseline).

They share everything but the model: next-id cross-entropy, bits per byte of raw text (total NLL in bits /
bytes of text, so byte-level and BPE models are comparable), AdamW with warm-up + cosine decay, the data
position and counters that make ``--resume`` exact, and the FLOP count of the summary.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from blt.baseline import BaselineLM, BPETokenizer
from blt.config import PatchingConfig, to_dict
from blt.data import PackedBatches
from blt.eval.flops import blt_flops_per_byte, entropy_flops_per_byte, tokenized_flops_per_byte
from blt.model import BLT
from blt.patcher import EntropyModel, calibrate_threshold
from blt.tokenizer import OFFSET, PAD_ID
from blt.training.callbacks import NonFiniteLossError, say
from blt.training.config import OptimConfig, RunConfig
from blt.training.datamodule import TokenBatches, TrainStream, ValSet, token_stream

STATE_KEY = "blt_training"  # our entry in the Lightning checkpoint


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (norm gains and frozen weights excluded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)


class LMTask(L.LightningModule, ABC):
    """Base task: subclasses build ``self.model`` and define :meth:`score` and the FLOPs per byte."""

    kind: str

    def __init__(self, run: RunConfig, max_steps: int):
        super().__init__()
        self.run, self.max_steps = run, max_steps
        self.model = self.build_model()
        if run.trainer.compile:
            self.model.compile()
        self.bytes_seen = 0  # over all ranks
        self.training_flops = 0.0
        self.last_batch_bytes = 0  # over all ranks, read by the Throughput callback
        self.val_curve: list[dict[str, float]] = []
        self.val_bpb: float | None = None
        self.data_state: dict[str, Any] | None = None  # loader state after the last consumed batch
        self._val_sums: dict[str, torch.Tensor] = {}

    # -- to be defined by each task

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def score(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums over the batch: ``nll`` (nats), ``tokens`` (predicted ids), ``bytes`` (bytes of text)."""

    @abstractmethod
    def flop_count(self):
        """:class:`blt.eval.flops.FlopCount` of the model as trained so far (context: one window)."""

    def summary_extras(self) -> dict[str, Any]:
        return {}

    # -- shared

    def training_flops_per_byte(self) -> float:
        return self.flop_count().training_flops_per_byte

    def byte_scores(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums for byte-level models: every non-padding target is predicted, bytes are ids >= OFFSET."""
        nll = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID, reduction="sum"
        )
        return {"nll": nll, "tokens": (targets != PAD_ID).sum(), "bytes": (targets >= OFFSET).sum()}

    def batches(self, split: str) -> PackedBatches:
        """This rank's shard of ``split``."""
        return PackedBatches(self.run.data, split, self.trainer.global_rank, self.trainer.world_size)

    def train_dataloader(self):
        return TrainStream(self.batches("train"), self.data_state)

    def val_dataloader(self):
        return ValSet(self.batches("val"), self.run.trainer.val_batches)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        sums = self.score(batch)
        loss = sums["nll"] / sums["tokens"]
        # one all-reduce: bytes of every rank, and whether any rank's loss is not finite
        shared = torch.stack([sums["bytes"].float(), (~torch.isfinite(loss.detach())).float()])
        shared = self.trainer.strategy.reduce(shared, reduce_op="sum")
        if shared[1] > 0:
            raise NonFiniteLossError(
                f"training loss is not finite ({loss.item()}) at step {self.global_step + 1}; the run stopped"
                f" after {self.global_step} good steps"
            )
        self.data_state = batch["data_state"]
        self.last_batch_bytes = int(shared[0])
        self.bytes_seen += self.last_batch_bytes
        self.training_flops += self.last_batch_bytes * self.training_flops_per_byte()
        self.log("loss", loss.detach(), prog_bar=True)
        self.log("bpb", sums["nll"].detach() / math.log(2) / sums["bytes"].clamp(min=1), prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for k, v in self.score(batch).items():
            self._val_sums[k] = self._val_sums.get(k, 0) + v.detach().double()

    def on_validation_epoch_end(self) -> None:
        names = sorted(self._val_sums)
        totals = self.trainer.strategy.reduce(
            torch.stack([self._val_sums[k] for k in names]), reduce_op="sum"
        )
        self._val_sums = dict(zip(names, totals))
        self.val_bpb = float(self._val_sums["nll"] / math.log(2) / self._val_sums["bytes"])
        self.log("val_loss", float(self._val_sums["nll"] / self._val_sums["tokens"]), sync_dist=True)
        self.log("val_bpb", self.val_bpb, prog_bar=True, sync_dist=True)
        self.log("training_flops", self.training_flops, sync_dist=True)  # the x axis of bpb-vs-FLOPs curves
        point = {"step": self.global_step, "training_flops": self.training_flops, "val_bpb": self.val_bpb}
        self.val_curve = [p for p in self.val_curve if p["step"] != self.global_step] + [point]

    def configure_optimizers(self):
        optim = self.run.optim
        opt = adamw(self.model, optim)
        total = self.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, optim.warmup_steps, total, optim.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATE_KEY] = {
            "kind": self.kind,
            "config": to_dict(self.run),
            "data_state": self.data_state,
            "bytes_seen": self.bytes_seen,
            "training_flops": self.training_flops,
            "val_curve": self.val_curve,
            "rng": torch.get_rng_state(),
            "extras": self.state_extras(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint[STATE_KEY]
        self.data_state = state["data_state"]
        self.bytes_seen, self.training_flops = state["bytes_seen"], state["training_flops"]
        self.val_curve = state["val_curve"]
        torch.set_rng_state(state["rng"])
        self.load_state_extras(state["extras"])

    def state_extras(self) -> dict[str, Any]:
        """Task state beyond the model that a checkpoint must carry (the BLT's calibrated patching)."""
        return {}

    def load_state_extras(self, extras: dict[str, Any]) -> None:
        """Restore what :meth:`state_extras` saved; tasks without extras have nothing to restore."""

    def summary(self) -> dict[str, Any]:
        flops = self.flop_count()
        return {
            "kind": self.kind,
            "params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "steps": self.global_step,
            "bytes_seen": self.bytes_seen,
            "training_flops": self.training_flops,
            "val_bpb": self.val_bpb,
            "inference_flops_per_byte": flops.inference_flops_per_byte,
            "training_flops_per_byte": flops.training_flops_per_byte,
            "val_curve": self.val_curve,
            **self.summary_extras(),
        }


class EntropyTask(LMTask):
    """Trains the byte-level entropy model (a small causal LM over the 260 byte ids)."""

    kind = "entropy"

    def build_model(self) -> EntropyModel:
        return EntropyModel(self.run.entropy)

    def score(self, batch):
        ids = batch["ids"]
        return self.byte_scores(self.model(ids[:, :-1]), ids[:, 1:])

    def flop_count(self):
        return entropy_flops_per_byte(self.run.entropy, context_bytes=self.run.data.seq_len)


class BLTTask(LMTask):
    """Trains the BLT; its frozen entropy model (from ``entropy_dir``) patches every batch on the fly."""

    kind = "blt"

    def __init__(self, run: RunConfig, max_steps: int, entropy_dir: str | Path | None = None):
        self.entropy_state = (
            None  # weights for the bundled patcher (a resumed run takes them from its checkpoint)
        )
        if entropy_dir is not None:
            entropy = EntropyModel.from_pretrained(entropy_dir)
            self.entropy_state = entropy.state_dict()
            patching = run.blt.patching
            if run.trainer.target_patch_size is not None:
                patching = calibrated_patching(entropy, run)
            run = replace(run, blt=replace(run.blt, entropy_model=entropy.config, patching=patching))
        self.patch_sums = {"positions": 0, "patches": 0}  # training batches, for the running FLOP count
        super().__init__(run, max_steps)

    def build_model(self) -> BLT:
        model = BLT(self.run.blt)
        if self.entropy_state is not None:
            model.patcher.load_state_dict(self.entropy_state)
        return model

    def score(self, batch):
        ids = batch["ids"]
        out = self.model(ids[:, :-1])
        sums = self.byte_scores(out.logits, ids[:, 1:])
        sums["patches"] = (out.patch_lengths > 0).sum()
        sums["positions"] = torch.tensor(out.patch_lengths.shape[0] * (ids.shape[1] - 1), device=ids.device)
        if self.training:
            for k in self.patch_sums:
                self.patch_sums[k] += int(sums[k])
        return sums

    def mean_patch_size(self, sums: dict[str, Any]) -> float:
        """Positions per patch; before any batch, the configured expectation."""
        if not sums or float(sums.get("patches", 0)) == 0:
            return float(self.run.blt.patching.patch_size)
        return float(sums["positions"]) / float(sums["patches"])

    def flop_count(self, sums: dict[str, Any] | None = None):
        """FLOPs at the mean patch size of ``sums`` (default: of all training batches so far)."""
        p = self.mean_patch_size(self.patch_sums if sums is None else sums)
        return blt_flops_per_byte(self.run.blt, p, context_bytes=self.run.data.seq_len)

    def state_extras(self) -> dict[str, Any]:
        return {"patch_sums": dict(self.patch_sums)}

    def load_state_extras(self, extras: dict[str, Any]) -> None:
        self.patch_sums = dict(extras["patch_sums"])

    def summary_extras(self) -> dict[str, Any]:
        flops = self.flop_count(self._val_sums)  # per byte at the validation patch size
        extras = {
            "mean_patch_size": self.mean_patch_size(self._val_sums),
            "inference_flops_per_byte": flops.inference_flops_per_byte,
            "training_flops_per_byte": flops.training_flops_per_byte,
        }
        if self.run.blt.entropy_model is not None:
            entropy = entropy_flops_per_byte(self.run.blt.entropy_model, context_bytes=self.run.data.seq_len)
            extras["entropy_inference_flops_per_byte"] = entropy.inference_flops_per_byte
        return extras


def calibrated_patching(entropy: EntropyModel, run: RunConfig, sample_bytes: int = 32768) -> PatchingConfig:
    """``run.blt.patching`` with the threshold giving ``trainer.target_patch_size`` on training windows."""
    packed = PackedBatches(run.data, "train", shuffle=False)
    n = min(len(packed), math.ceil(sample_bytes / (run.data.batch_size * run.data.seq_len)))
    rows = torch.cat([packed.batch_at(i)[:, :-1] for i in range(n)])  # [N, seq_len] in corpus order
    entropies = entropy.entropies(rows)
    calibration = calibrate_threshold(
        list(rows), list(entropies), run.trainer.target_patch_size, patching=run.blt.patching
    )
    say(f"patching calibrated on {rows.numel()} training bytes: {calibration}")
    return calibration.patching(run.blt.patching)


class BaselineTask(LMTask):
    """Trains the tokenized baseline on the BPE token stream of the same training split."""

    kind = "baseline"

    def __init__(self, run: RunConfig, max_steps: int, tokenizer: BPETokenizer):
        self.tokenizer = tokenizer
        self.tokens = {split: token_stream(run.data, split, tokenizer.encode) for split in ("train", "val")}
        # bytes of text behind every token id (0 for BOS, EOS, padding): the bits-per-byte denominator
        self.id_bytes = torch.tensor([len(b) for b in tokenizer.id_bytes])
        lengths = self.id_bytes[torch.from_numpy(self.tokens["train"]).long()]
        self.bytes_per_token = float(lengths.sum()) / max(1, int((lengths > 0).sum()))
        super().__init__(run, max_steps)

    def build_model(self) -> BaselineLM:
        return BaselineLM(self.run.baseline, self.tokenizer)

    def batches(self, split: str) -> TokenBatches:
        return TokenBatches(
            self.run.data, self.tokens[split], split, self.trainer.global_rank, self.trainer.world_size
        )

    def score(self, batch):
        ids = batch["ids"]
        targets = ids[:, 1:]
        logits = self.model(ids[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        n_bytes = self.id_bytes.to(ids.device)[targets].sum()
        return {"nll": nll, "tokens": torch.tensor(targets.numel(), device=ids.device), "bytes": n_bytes}

    def flop_count(self):
        bpt, vocab = self.bytes_per_token, self.tokenizer.vocab_size
        return tokenized_flops_per_byte(self.run.baseline, vocab, self.run.data.seq_len * bpt, bpt)

    def summary_extras(self) -> dict[str, Any]:
        return {"bytes_per_token": self.bytes_per_token, "vocab_size": self.tokenizer.vocab_size}


TASKS = {"entropy": EntropyTask, "blt": BLTTask, "baseline": BaselineTask}


def task_for(command: str, run: RunConfig, max_steps: int, **kwargs: Any) -> LMTask:
    return TASKS[command](run, max_steps, **kwargs)
