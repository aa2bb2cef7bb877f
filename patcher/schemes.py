"""Patching schemes: where patches start, and patch lengths from those starts.

Every scheme is one rule giving a boolean start mask [B, T] (True where a patch begins), and
:func:`decide_starts` is the one decision built on them: the scheme's rule, ``max_patch_length``, and whether
the position after the input starts a patch. The model's forward, the streaming patcher and decoding all
call it. The conventions are those of the released BLT models (and transformers' ``BltPatcher``): position
0 (BOS) is its own patch and position 1 starts a patch under every scheme; the rules decide the positions
t >= 2. Every rule at t reads only positions before t, so a patch start is known before its byte is seen.

``offset`` is the absolute position of column 0 (an int, or [B, 1] when rows are at different positions),
so the same rules decide the last columns of a short tail window while streaming. A rule that needs
columns before column 0 gives False there.
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F

from blt.config import ConfigError, PatchingConfig, PatchScheme
from blt.patch_ops import check_threshold, entropy_starts, forced_starts
from blt.tokenizer import OFFSET

from .entropy_model import check_input_ids

__all__ = [
    "ENTROPY_SCHEMES",
    "SCHEMES",
    "byte_starts",
    "check_threshold",
    "combined_starts",
    "decide_starts",
    "entropy_starts",
    "forced_starts",
    "lengths_from_starts",
    "patch_lengths",
    "relative_starts",
    "space_starts",
    "spacelike",
    "split_long_patches",
    "static_starts",
]

SCHEMES: tuple[str, ...] = typing.get_args(PatchScheme)
ENTROPY_SCHEMES = ("entropy", "relative", "combined")


def relative_starts(
    entropies: torch.Tensor, relative_threshold: float, offset: int | torch.Tensor = 0
) -> torch.Tensor:
    """Approximate monotonicity: a patch starts at t when H(t-1) - H(t-2) > relative_threshold."""
    check_threshold(relative_threshold, "relative_threshold", allow_negative=True)
    starts = forced_starts(entropies.shape, entropies.device, offset)
    starts[:, 2:] |= (entropies[:, 1:-1] - entropies[:, :-2]) > relative_threshold
    return starts


def combined_starts(
    entropies: torch.Tensor, threshold: float, relative_threshold: float, offset: int | torch.Tensor = 0
) -> torch.Tensor:
    """Both rules at once: H(t-1) > threshold and H(t-1) - H(t-2) > relative_threshold."""
    check_threshold(threshold, "threshold", allow_negative=False)
    check_threshold(relative_threshold, "relative_threshold", allow_negative=True)
    starts = forced_starts(entropies.shape, entropies.device, offset)
    high = entropies[:, 1:-1] > threshold
    rising = (entropies[:, 1:-1] - entropies[:, :-2]) > relative_threshold
    starts[:, 2:] |= high & rising
    return starts


def static_starts(ids: torch.Tensor, patch_size: int, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """Fixed size: after the BOS patch, a patch starts every ``patch_size`` bytes (positions 1, 1+P, ...)."""
    if patch_size <= 0:
        raise ConfigError(f"patch_size must be > 0, got {patch_size}")
    pos = torch.arange(ids.shape[1], device=ids.device) + offset
    return (((pos - 1) % patch_size == 0) | (pos < 2)).expand(ids.shape).clone()


def spacelike(ids: torch.Tensor) -> torch.Tensor:
    """SpaceByte's spacelike bytes: anything but an ASCII letter, digit or UTF-8 continuation byte.

    Special ids (BOS, EOS, padding) count as spacelike.
    """
    b = ids - OFFSET
    letter = ((b >= ord("a")) & (b <= ord("z"))) | ((b >= ord("A")) & (b <= ord("Z")))
    digit = (b >= ord("0")) & (b <= ord("9"))
    continuation = (b >= 0x80) & (b < 0xC0)
    return ~(letter | digit | continuation)


def space_starts(ids: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """SpaceByte: a patch starts at t after a spacelike byte that does not follow another spacelike byte.

    So "hello, world" patches as "hello," " world" (a run of spaces or punctuation stays in one patch).
    """
    starts = forced_starts(ids.shape, ids.device, offset)
    space = spacelike(ids)
    starts[:, 2:] |= space[:, 1:-1] & ~space[:, :-2]
    return starts


def byte_starts(ids: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
    """One byte per patch."""
    return torch.ones_like(ids, dtype=torch.bool)


def split_long_patches(
    starts: torch.Tensor, max_patch_length: int, carried: torch.Tensor | None = None
) -> torch.Tensor:
    """Add starts so no patch is longer than ``max_patch_length`` (a long patch becomes M, M, ..., rest).

    ``carried`` [B]: bytes the patch open at column 0 already has before it (streaming; default 0).
    """
    if max_patch_length <= 0:
        raise ConfigError(f"max_patch_length must be > 0 or None, got {max_patch_length}")
    pos = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    before = torch.zeros_like(pos) if carried is None else (-carried).unsqueeze(1).expand_as(pos)
    last_start = torch.where(starts, pos, before).cummax(dim=1).values
    return starts | ((pos > last_start) & ((pos - last_start) % max_patch_length == 0))


def lengths_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Start mask [B, T] -> patch lengths [B, P] (rows right-padded with 0, each summing to T)."""
    if starts.dim() != 2 or starts.numel() == 0:
        raise ValueError(f"starts must be a non-empty [batch, time] mask, got shape {tuple(starts.shape)}")
    starts = starts.clone()
    starts[:, 0] = True
    patch_ids = starts.long().cumsum(dim=1) - 1  # [B, T]
    num_patches = int(patch_ids[:, -1].max()) + 1
    lengths = torch.zeros(starts.shape[0], num_patches, dtype=torch.long, device=starts.device)
    return lengths.scatter_add_(1, patch_ids, torch.ones_like(patch_ids))


def rule_starts(
    ids: torch.Tensor, patching: PatchingConfig, entropies: torch.Tensor | None, offset: int | torch.Tensor
) -> torch.Tensor:
    """Start mask [B, T] of ``patching.scheme``'s rule alone (no ``max_patch_length``)."""
    scheme = patching.scheme
    if scheme == "entropy":
        return entropy_starts(entropies, patching.threshold, offset)
    if scheme == "relative":
        return relative_starts(entropies, patching.relative_threshold, offset)
    if scheme == "combined":
        return combined_starts(entropies, patching.threshold, patching.relative_threshold, offset)
    if scheme == "static":
        return static_starts(ids, patching.patch_size, offset)
    if scheme == "space":
        return space_starts(ids, offset)
    return byte_starts(ids, offset)


def check_patching(patching: PatchingConfig, has_entropies: bool) -> None:
    if patching.scheme not in SCHEMES:
        raise ConfigError(f"unknown patching scheme {patching.scheme!r}; choose one of {list(SCHEMES)}")
    if patching.scheme in ENTROPY_SCHEMES and not has_entropies:
        raise ValueError(
            f"scheme {patching.scheme!r} needs entropies: compute them with EntropyModel.entropies(ids) "
            "(schemes static, space and byte need no model)"
        )


def decide_starts(
    ids: torch.Tensor,
    patching: PatchingConfig,
    entropies: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    context: int = 0,
    open_length: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which positions start a patch under ``patching``, ``max_patch_length`` included.

    ids [B, T] (and entropies [B, T] for the entropy schemes) are positions offset .. offset + T - 1. The
    first ``context`` columns are only read; the result [B, T - context + 1] covers columns context .. T,
    the last one being position offset + T, the byte after the input: whether it starts a patch is known
    before that byte is (no rule reads the column it decides, so a placeholder stands in for it).
    ``open_length`` [B]: bytes the patch open before column ``context`` already has (default 0).
    """
    check_patching(patching, entropies is not None)
    if entropies is not None and entropies.shape != ids.shape:
        raise ValueError(f"entropies shape {tuple(entropies.shape)} must equal ids shape {tuple(ids.shape)}")
    ids = F.pad(ids, (0, 1))  # the placeholder column
    if entropies is not None:
        entropies = F.pad(entropies, (0, 1))
    starts = rule_starts(ids, patching, entropies, offset)[:, context:]
    if patching.max_patch_length is not None:
        starts = split_long_patches(starts, patching.max_patch_length, carried=open_length)
    return starts


def patch_lengths(
    ids: torch.Tensor, patching: PatchingConfig, entropies: torch.Tensor | None = None
) -> torch.Tensor:
    """Patch lengths [B, P] of ids [B, T] under ``patching``: rows right-padded with 0, each summing to T.

    Entropy schemes need ``entropies`` [B, T] (from :meth:`EntropyModel.entropies`).
    """
    check_input_ids(ids)
    return lengths_from_starts(decide_starts(ids, patching, entropies)[:, :-1])
