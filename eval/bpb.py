"""Bits per byte of raw text for any model: BLT, byte-level entropy model or tokenized BPE baseline.

What is scored. A document is BOS + its bytes (+ EOS in training). Every model predicts every byte of the
document exactly once, given BOS and the bytes before it; EOS is NOT scored, because "the document ends
here" is not a byte of the text and a tokenized model spends it differently. So

    bits per byte = sum over documents of -log2 p(document bytes | BOS) / number of bytes,

the same numerator set and the same denominator (``len(document)``) for all three model kinds; the
baseline's numerator is the NLL of its tokens, which spell exactly the document's bytes (byte fallback).
Probabilities come from the model's full softmax (special ids included), without renormalisation.

Long documents are scored in windows of ``context`` ids: the first window scores targets 1..context-1;
each next window scores the following ``stride`` targets while seeing the ``context - stride`` ids before
them as context. A model whose receptive field fits in that overlap (e.g. sliding-window attention) gets
exactly the scores of one pass over the whole document.

FLOPs spent. Every window's forward pass is counted from its actual patches (or tokens) with
``blt.eval.flops.blt_flops_spent`` / ``tokenized_flops_spent``, positions from the window's first scored
target on: the context a window recomputes is counted once, by the window that scores it, so a document's
FLOPs are what one causal pass over it costs with the windows' attention spans (padding of a batch is not
counted). They include the BLT's entropy model whenever it ran.

The standard error is over documents, for the ratio estimator R = sum(bits_i) / sum(bytes_i):
SE^2 = sum_i (bits_i - R * bytes_i)^2 / (m (m - 1) mean(bytes)^2) for m documents (the delta method).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from blt.checkpoint import BLT_KINDS, ENTROPY_KINDS
from blt.config import PatchingConfig
from blt.eval.flops import (
    FlopsSpent,
    blt_flops_per_byte,
    blt_flops_spent,
    entropy_flops_per_byte,
    tokenized_flops_per_byte,
    tokenized_flops_spent,
)
from blt.patcher.schemes import ENTROPY_SCHEMES
from blt.tokenizer import PAD_ID, encode

# ----------------------------------------------------------------------------------------------------------
# scorers: one per model kind, all with the same small interface


class ByteLMScorer:
    """A causal LM over the 260 byte ids (the entropy model); every byte is its own unit."""

    unit = "byte"

    def __init__(self, model: torch.nn.Module, context: int | None = None):
        self.model = model
        self.context = checked_context(context, model.config)

    def encode(self, document: bytes) -> list[int]:
        return encode(document, add_bos=True)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids [B, T] -> logits [B, T, V], unit starts (None: every position starts a unit)."""
        return self.model(ids), None

    def flops_per_byte(self, bytes_per_unit: float) -> dict[str, float]:
        return _flops_dict(entropy_flops_per_byte(self.model.config, self.context))

    def flops_spent(self, n: int, first: int, starts: torch.Tensor | None) -> FlopsSpent:
        """FLOPs of a window of ``n`` ids, positions ``first ..`` counted (``starts``: unused)."""
        return tokenized_flops_spent(self.model.config, n, first=first)


class BLTScorer:
    """The byte latent transformer; units are patches, counted where they start."""

    unit = "patch"

    def __init__(
        self, model: torch.nn.Module, context: int | None = None, patching: PatchingConfig | None = None
    ):
        self.model = model
        c = model.config
        limit = min(c.encoder.max_seq_len, c.decoder.max_seq_len, c.global_transformer.max_seq_len)
        self.context = limit if context is None else context  # the BLT itself refuses longer inputs
        self.patching = patching  # None: the model's own patching

    def encode(self, document: bytes) -> list[int]:
        return encode(document, add_bos=True)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(ids, patching=self.patching)
        return out.logits, patch_starts(out.patch_lengths, ids.shape[1])

    @property
    def config(self):
        """The model's config with the patching this scorer uses (the model's own stays as it is)."""
        config = self.model.config
        return config if self.patching is None else replace(config, patching=self.patching)

    @property
    def runs_entropy_model(self) -> bool:
        # BLT.compute_patches runs the patcher only for the schemes that read entropies
        return (
            getattr(self.model, "patcher", None) is not None
            and self.config.patching.scheme in ENTROPY_SCHEMES
        )

    def flops_spent(self, n: int, first: int, starts: torch.Tensor) -> FlopsSpent:
        """FLOPs of a window of ``n`` ids patched at ``starts`` [n] (bool), positions ``first ..`` counted."""
        at = starts[:n].nonzero().flatten().tolist() + [n]
        lengths = [b - a for a, b in zip(at, at[1:])]
        config = self.config
        entropy = config.entropy_model if self.runs_entropy_model else None
        return blt_flops_spent(config, n, lengths, first, entropy)

    def flops_per_byte(self, bytes_per_unit: float) -> dict[str, float]:
        config = self.config
        flops = _flops_dict(blt_flops_per_byte(config, bytes_per_unit, self.context))
        if config.entropy_model is not None:
            entropy = _flops_dict(entropy_flops_per_byte(config.entropy_model, self.context))
            flops.update({f"entropy_{k}": v for k, v in entropy.items()})
        return flops


class BaselineScorer:
    """The tokenized BPE baseline; units are tokens, windows count tokens."""

    unit = "token"

    def __init__(self, model: torch.nn.Module, context: int | None = None):
        self.model = model
        self.context = checked_context(context, model.config)

    def encode(self, document: bytes) -> list[int]:
        return self.model.encode(document, add_bos=True)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model(ids), None

    def flops_per_byte(self, bytes_per_unit: float) -> dict[str, float]:
        config = self.model.config
        context_bytes = self.context * bytes_per_unit
        return _flops_dict(tokenized_flops_per_byte(config, config.vocab_size, context_bytes, bytes_per_unit))

    def flops_spent(self, n: int, first: int, starts: torch.Tensor | None) -> FlopsSpent:
        """FLOPs of a window of ``n`` tokens, tokens ``first ..`` counted (``starts``: unused)."""
        return tokenized_flops_spent(self.model.config, n, self.model.config.vocab_size, first)


def checked_context(context: int | None, config) -> int:
    """Window length in ids of a causal LM with ``config`` (a TransformerConfig): default max_seq_len.

    Longer windows are refused under full attention (positions past max_seq_len were never trained); a
    sliding-window model only ever sees ``window`` positions back, so any length is fine.
    """
    if context is None:
        return config.max_seq_len
    if context > config.max_seq_len and config.window is None:
        raise ValueError(
            f"context {context} is longer than the model's max_seq_len ({config.max_seq_len} ids) and its "
            "attention is not windowed"
        )
    return context


def _flops_dict(flops) -> dict[str, float]:
    """The two totals of a ``blt.eval.flops.FlopCount`` (FLOPs at the context the scorer uses)."""
    return {
        "inference_flops_per_byte": float(flops.inference_flops_per_byte),
        "training_flops_per_byte": float(flops.training_flops_per_byte),
    }


def scorer_for(loaded, context: int | None = None, patching: PatchingConfig | None = None):
    """The scorer for a :class:`blt.checkpoint.LoadedModel`; ``patching`` overrides a BLT's patching."""
    if loaded.kind in BLT_KINDS:
        return BLTScorer(loaded.model, context, patching)
    if patching is not None:
        raise ValueError(f"patching options apply to BLT checkpoints only, not to kind {loaded.kind!r}")
    if loaded.kind in ENTROPY_KINDS:
        return ByteLMScorer(loaded.model, context)
    return BaselineScorer(loaded.model, context)


def patch_starts(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Patch lengths [B, P] (right-padded with 0) -> bool [B, T], True where a patch begins."""
    starts = torch.zeros(lengths.shape[0], seq_len + 1, dtype=torch.bool, device=lengths.device)
    offsets = (lengths.cumsum(1) - lengths).clamp(max=seq_len)  # [B, P] first position of each patch
    starts.scatter_(1, torch.where(lengths > 0, offsets, seq_len), True)
    return starts[:, :seq_len]


# ----------------------------------------------------------------------------------------------------------
# windows


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, first, end)`` windows over ids x[0..n-1] (x[0] = BOS) that score targets 1..n-1 once.

    A window feeds x[start:end] (at most ``context`` ids) and scores targets first..end-1, predicted by
    the logits at positions first-1..end-2; the logit at end-1 is not used (the next window scores it).
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 ids, got {context}")
    if not 1 <= stride < context:
        raise ValueError(f"stride must be in [1, context - 1] = [1, {context - 1}], got {stride}")
    out, first = [], 1
    while first < n:
        end = min(n, first + stride if out else context)
        out.append((max(0, end - context), first, end))
        first = end
    return out


@dataclass
class _Job:
    doc: int  # index of the document
    ids: list[int]  # the window's ids
    first: int  # window index of the first scored target


# ----------------------------------------------------------------------------------------------------------
# evaluation


@dataclass
class BPBResult:
    bits_per_byte: float
    stderr: float  # over documents; NaN with fewer than two documents
    n_documents: int
    n_bytes: int
    bits: float
    unit: str  # "patch" (BLT), "token" (baseline) or "byte" (entropy model)
    bytes_per_unit: float  # mean patch size, bytes per token, or 1
    flops: dict[str, float] = field(default_factory=dict)  # inference/training FLOPs per byte

    def to_dict(self) -> dict:
        """Plain data for JSON; an unknown standard error is None (JSON has no NaN)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


@dataclass
class DocumentScore:
    """One document: its bytes, the bits of predicting them, and the units and FLOPs spent on them."""

    n_bytes: int
    bits: float = 0.0
    units: int = 0  # patches, tokens or bytes that start at a scored position
    flops: FlopsSpent | None = None  # None: not counted

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.n_bytes if self.n_bytes else math.nan

    def flops_per_byte(self, prefix: str | None = None) -> float:
        """FLOPs spent per byte, all of them or those of the parts named ``prefix.*``."""
        if self.flops is None or not self.n_bytes:
            return math.nan
        return (self.flops.total if prefix is None else self.flops.share(prefix)) / self.n_bytes


@torch.no_grad()
def document_scores(
    scorer, documents: Iterable[bytes], stride: int | None = None, batch_size: int = 8, flops: bool = False
) -> list[DocumentScore]:
    """Per document: bits, bytes, units and (``flops``) the FLOPs spent on its scored positions."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stride = scorer.context // 2 if stride is None else stride
    scores: list[DocumentScore] = []
    pending: list[_Job] = []
    for doc, document in enumerate(documents):
        ids = scorer.encode(document)
        scores.append(DocumentScore(len(document)))
        pending += [_Job(doc, ids[s:e], f - s) for s, f, e in windows(len(ids), scorer.context, stride)]
        while len(pending) >= batch_size:
            _run(scorer, pending[:batch_size], scores, flops)
            pending = pending[batch_size:]
    if pending:
        _run(scorer, pending, scores, flops)
    return scores


def score_documents(
    scorer, documents: Iterable[bytes], stride: int | None = None, batch_size: int = 8
) -> tuple[list[float], list[int], list[int]]:
    """Per document: bits, bytes and units (patches/tokens/bytes) of its scored bytes."""
    scores = document_scores(scorer, documents, stride, batch_size)
    return [s.bits for s in scores], [s.n_bytes for s in scores], [s.units for s in scores]


def _run(scorer, jobs: list[_Job], scores: list[DocumentScore], flops: bool) -> None:
    """Score a batch of windows (right-padded: causal models never look at the padding)."""
    T = max(len(j.ids) for j in jobs)
    ids = torch.full((len(jobs), T), PAD_ID, dtype=torch.long)
    for row, job in enumerate(jobs):
        ids[row, : len(job.ids)] = torch.tensor(job.ids)
    logits, starts = scorer.forward(ids)  # [B, T, V], [B, T] or None
    # float64 so the sum over a long corpus keeps its digits (a uniform model scores 8.0, not 8.0000001)
    logp = F.log_softmax(logits.double(), dim=-1)
    for row, job in enumerate(jobs):
        n, score = len(job.ids), scores[job.doc]
        targets = ids[row, job.first : n]
        nats = -logp[row, job.first - 1 : n - 1].gather(-1, targets.unsqueeze(-1)).sum()
        score.bits += float(nats) / math.log(2)
        score.units += n - job.first if starts is None else int(starts[row, job.first : n].sum())
        if flops:
            spent = scorer.flops_spent(n, job.first, None if starts is None else starts[row])
            score.flops = spent if score.flops is None else score.flops + spent


def ratio_stderr(bits: list[float], n_bytes: list[int]) -> float:
    """Standard error of sum(bits) / sum(bytes) over documents (delta method); NaN below two documents."""
    m = len(bits)
    if m < 2:
        return math.nan
    ratio = sum(bits) / sum(n_bytes)
    mean_bytes = sum(n_bytes) / m
    residuals = sum((b - ratio * n) ** 2 for b, n in zip(bits, n_bytes))
    return math.sqrt(residuals / (m * (m - 1))) / mean_bytes


def evaluate(
    scorer, documents: Iterable[bytes], stride: int | None = None, batch_size: int = 8, flops: bool = True
) -> BPBResult:
    """Bits per byte of ``documents`` under ``scorer`` (see the module docstring for what is scored)."""
    return summarize(scorer, document_scores(scorer, documents, stride, batch_size, flops), flops)


def summarize(scorer, scores: list[DocumentScore], flops: bool = True) -> BPBResult:
    """The corpus-level result of per-document scores (``flops``: their FLOPs were counted)."""
    # empty documents carry no bytes and no bits: they do not count as samples for the standard error
    kept = [s for s in scores if s.n_bytes > 0]
    total = sum(s.n_bytes for s in scores)
    if total == 0:
        raise ValueError("the corpus has no bytes to score (no documents, or only empty ones)")
    bits = sum(s.bits for s in scores)
    bytes_per_unit = total / sum(s.units for s in scores)
    counts = {}
    if flops:
        counts = scorer.flops_per_byte(bytes_per_unit)
        spent = sum((s.flops for s in kept), FlopsSpent())
        counts["spent_flops_per_byte"] = spent.total / total
        if scorer.unit == "patch":
            counts["spent_entropy_flops_per_byte"] = spent.share("entropy") / total
            counts["spent_global_flops_per_byte"] = spent.share("global") / total
    return BPBResult(
        bits_per_byte=bits / total,
        stderr=ratio_stderr([s.bits for s in kept], [s.n_bytes for s in kept]),
        n_documents=len(kept),
        n_bytes=total,
        bits=bits,
        unit=scorer.unit,
        bytes_per_unit=bytes_per_unit,
        flops=counts,
    )
