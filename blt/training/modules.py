"""LightningModules: one training task per command (entropy model, BLT, tokenized baseline).

They share everything but the model: next-id cross-entropy, bits per byte of raw text (total NLL in bits /
bytes of text, so byte-level and BPE models are comparable), AdamW with warm-up + cosine decay, the data
position and counters that make ``--resume`` exact, and the FLOP count of the summary.

A task receives ready configs and weights (the pipeline trains, loads and calibrates what it needs);
its constructor reads no data and no checkpoint. Its dataloaders read the corpus when Lightning asks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blt.baseline import BaselineLM, BaselineTrainConfig, BPETokenizer
from blt.config import BLTConfig, EntropyModelConfig, to_dict
from blt.data import DataConfig, PackedBatches, split_counts
from blt.eval.flops import blt_flops_per_byte, entropy_flops_per_byte, tokenized_flops_per_byte
from blt.model import BLT
from blt.patcher import EntropyModel
from blt.tokenizer import OFFSET, PAD_ID
from blt.training.callbacks import STATE_KEY, NonFiniteLossError
from blt.training.config import OptimConfig
from blt.training.datamodule import TokenBatches, TrainStream, ValSet
from blt.training.elastic import ElasticPatching


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
    """Base task: subclasses build ``self.model`` and define :meth:`score` and the FLOPs per byte.

    ``config`` is the model's config, ``cosine_steps`` the optimizer step where the learning rate's cosine
    reaches its floor (a run extended past it continues at the floor).
    """

    kind: str

    def __init__(
        self, config, data: DataConfig, optim: OptimConfig, cosine_steps: int, compile: bool = False
    ):
        super().__init__()
        self.config, self.data, self.optim, self.cosine_steps = config, data, optim, cosine_steps
        self.model = self.build_model()
        if compile:
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
        return PackedBatches(self.data, split, self.trainer.global_rank, self.trainer.world_size)

    def train_dataloader(self):
        return TrainStream(self.batches("train"), self.data_state)

    def val_dataloader(self):
        return ValSet(self.batches("val"))  # trainer.limit_val_batches takes the first batches of it

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
        optim, total = self.optim, self.cosine_steps
        opt = adamw(self.model, optim)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, optim.warmup_steps, total, optim.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configs(self) -> dict[str, Any]:
        """The sections this task was built from, as a checkpoint records them."""
        return {self.kind: to_dict(self.config), "data": to_dict(self.data), "optim": to_dict(self.optim)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATE_KEY] = {
            "kind": self.kind,
            "config": self.configs(),
            "cosine_steps": self.cosine_steps,
            "data_state": self.data_state,
            "bytes_seen": self.bytes_seen,
            "training_flops": self.training_flops,
            "val_curve": self.val_curve,
            # the last validation's sums: the summary of a run resumed after its end reads them
            "val_sums": {k: float(v) for k, v in self._val_sums.items()},
            "rng": torch.get_rng_state(),
            "extras": self.state_extras(),
            "metrics_rows": 0,  # set by LastCheckpoint when it writes the file
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint[STATE_KEY]
        self.data_state = state["data_state"]
        self.bytes_seen, self.training_flops = state["bytes_seen"], state["training_flops"]
        self.val_curve = state["val_curve"]
        self.val_bpb = self.val_curve[-1]["val_bpb"] if self.val_curve else None
        self._val_sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in state["val_sums"].items()}
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
            # what val_bpb measures: the first trainer.limit_val_batches batches of the validation split
            "val_bytes": int(self._val_sums["bytes"]) if self._val_sums else 0,
            "val_split_bytes": split_counts(self.data, "val")["bytes"],
            "inference_flops_per_byte": flops.inference_flops_per_byte,
            "training_flops_per_byte": flops.training_flops_per_byte,
            "val_curve": self.val_curve,
            "schedule": {
                "warmup_steps": self.optim.warmup_steps,
                "cosine_steps": self.cosine_steps,  # where the learning rate reaches its floor
                "max_steps": self.trainer.max_steps,
            },
            **self.summary_extras(),
        }


class EntropyTask(LMTask):
    """Trains the byte-level entropy model (a small causal LM over the 260 byte ids)."""

    kind = "entropy"

    config: EntropyModelConfig

    def build_model(self) -> EntropyModel:
        return EntropyModel(self.config)

    def score(self, batch):
        ids = batch["ids"]
        return self.byte_scores(self.model(ids[:, :-1]), ids[:, 1:])

    def flop_count(self):
        return entropy_flops_per_byte(self.config, context_bytes=self.data.seq_len)


class BLTTask(LMTask):
    """Trains the BLT; its frozen entropy model (``config.entropy_model``) patches every batch on the fly.

    ``patcher_state`` holds the entropy model's weights (None when a checkpoint being resumed brings them).
    ``elastic``: elastic patching (:mod:`blt.training.elastic`), each training step's threshold drawn from
    ``seed`` and the step; None: every batch under ``config.patching``.
    """

    kind = "blt"
    config: BLTConfig

    def __init__(
        self,
        config: BLTConfig,
        data: DataConfig,
        optim: OptimConfig,
        cosine_steps: int,
        compile: bool = False,
        patcher_state: dict[str, torch.Tensor] | None = None,
        elastic: ElasticPatching | None = None,
        seed: int = 0,
    ):
        self.patcher_state = patcher_state
        self.elastic, self.seed = elastic, seed
        self.patch_sums = {"positions": 0, "patches": 0}  # training batches, for the running FLOP count
        super().__init__(config, data, optim, cosine_steps, compile)

    def build_model(self) -> BLT:
        model = BLT(self.config)
        if self.patcher_state is not None:
            model.patcher.load_state_dict(self.patcher_state)
        return model

    def score(self, batch):
        ids = batch["ids"]
        inputs = ids[:, :-1]
        # patching stays outside the (compiled) forward: it decides the number of patches, a shape there;
        # the data pipeline made the ids on the host and computed lengths are valid: no checks on the device
        patching = self.elastic_patching() if self.training else None  # elastic: this step's threshold
        lengths, next_starts = self.model.compute_patches(inputs, patching)
        out = self.model(inputs, lengths, next_starts, check=False)
        sums = self.byte_scores(out.logits, ids[:, 1:])
        sums["patches"] = (out.patch_lengths > 0).sum()
        sums["positions"] = torch.tensor(out.patch_lengths.shape[0] * (ids.shape[1] - 1), device=ids.device)
        if self.training:
            for k in self.patch_sums:
                self.patch_sums[k] += int(sums[k])
            if patching is not None:  # the batch's own mean patch size, next to the drawn target
                self.log("patch_size", sums["positions"].float() / sums["patches"].clamp(min=1))
        return sums

    def elastic_patching(self):
        """This training step's patching under elastic patching (None without it: the model's own)."""
        if self.elastic is None:
            return None
        size = self.elastic.draw(self.seed, self.global_step)
        self.log("elastic_patch_size", size)
        return self.elastic.patching(size, self.config.patching)

    def mean_patch_size(self, sums: dict[str, Any]) -> float:
        """Positions per patch; before any batch, the configured expectation."""
        if not sums or float(sums.get("patches", 0)) == 0:
            return float(self.config.patching.patch_size)
        return float(sums["positions"]) / float(sums["patches"])

    def flop_count(self, sums: dict[str, Any] | None = None):
        """FLOPs at the mean patch size of ``sums`` (default: of all training batches so far)."""
        p = self.mean_patch_size(self.patch_sums if sums is None else sums)
        return blt_flops_per_byte(self.config, p, context_bytes=self.data.seq_len)

    def state_extras(self) -> dict[str, Any]:
        # the elastic grid is kept so that a resume continues with the thresholds it started with
        elastic = self.elastic and self.elastic.to_dict()
        return {"patch_sums": dict(self.patch_sums), "elastic": elastic}

    def load_state_extras(self, extras: dict[str, Any]) -> None:
        self.patch_sums = dict(extras["patch_sums"])

    def summary_extras(self) -> dict[str, Any]:
        flops = self.flop_count(self._val_sums)  # per byte at the validation patch size
        extras = {
            "mean_patch_size": self.mean_patch_size(self._val_sums),
            "inference_flops_per_byte": flops.inference_flops_per_byte,
            "training_flops_per_byte": flops.training_flops_per_byte,
        }
        if self.config.entropy_model is not None:
            entropy = entropy_flops_per_byte(self.config.entropy_model, context_bytes=self.data.seq_len)
            extras["entropy_inference_flops_per_byte"] = entropy.inference_flops_per_byte
        if self.elastic is not None:
            extras["elastic"] = self.elastic.to_dict()
        return extras


class BaselineTask(LMTask):
    """Trains the tokenized baseline on the BPE token streams of the training and validation splits.

    ``tokens`` maps each split to its documents as BOS + token ids + EOS, concatenated (see
    :func:`blt.training.datamodule.token_stream`), tokenized with ``tokenizer``.
    """

    kind = "baseline"
    config: BaselineTrainConfig

    def __init__(
        self,
        config: BaselineTrainConfig,
        data: DataConfig,
        optim: OptimConfig,
        cosine_steps: int,
        compile: bool,
        tokenizer: BPETokenizer,
        tokens: dict[str, np.ndarray],
    ):
        self.tokenizer, self.tokens = tokenizer, tokens
        # bytes of text behind every token id (0 for BOS, EOS, padding): the bits-per-byte denominator
        self.id_bytes = torch.tensor([len(b) for b in tokenizer.id_bytes])
        lengths = self.id_bytes[torch.from_numpy(tokens["train"]).long()]
        self.bytes_per_token = float(lengths.sum()) / max(1, int((lengths > 0).sum()))
        super().__init__(config, data, optim, cosine_steps, compile)

    def build_model(self) -> BaselineLM:
        return BaselineLM(self.config, self.tokenizer)

    def batches(self, split: str) -> TokenBatches:
        return TokenBatches(
            self.data, self.tokens[split], split, self.trainer.global_rank, self.trainer.world_size
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
        return tokenized_flops_per_byte(self.config, vocab, self.data.seq_len * bpt, bpt)

    def summary_extras(self) -> dict[str, Any]:
        return {"bytes_per_token": self.bytes_per_token, "vocab_size": self.tokenizer.vocab_size}
