"""A compute dial at inference: a BLT's entropy threshold chosen on the input itself, and threshold sweeps.

A BLT spends its global transformer once per patch, so its entropy threshold sets the compute: a higher
threshold means fewer, longer patches and fewer FLOPs per byte. Two targets turn into a threshold on the
very windows ``blt-eval`` will score (their entropies are computed once):

- a mean patch size: :func:`blt.patcher.calibrate_threshold` on the windows, as documents;
- FLOPs per byte spent: the mean patch size whose calibrated threshold spends that much (FLOPs spent fall as
  the patches grow, so bisection on the patch size finds it), counted as ``blt-eval`` counts them
  (``blt.eval.bpb``: each window from its first scored position on, the entropy model included).

A target the input cannot reach (patches no shorter than what threshold 0 gives, no longer than what the
forced starts and ``max_patch_length`` leave) is an error naming the closest reachable value.
:func:`sweep` scores the input at several thresholds: bits per byte against FLOPs per byte spent.

:func:`resolve_patching` is the one reading of a per-call override (``BLT.forward(..., patching=)``,
``generate(..., patching=)``, the scorers, ``blt-eval --patching.*``): a ``PatchingConfig``, or a dict of
some of its fields plus at most one target, calibrated as above on the call's own input.

The model is never changed: every patching here is a new ``PatchingConfig`` handed to a scorer or a call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blt.config import ConfigError, PatchingConfig, from_dict, to_dict
from blt.eval.bpb import BLTScorer, evaluate, windows
from blt.patcher import calibrate_threshold
from blt.patcher.calibrate import pad_documents
from blt.patcher.schemes import ENTROPY_SCHEMES, decide_starts

BISECTIONS = 30  # on log patch size for a FLOPs target: far below one patch's worth of FLOPs
LARGEST = 1e12  # a patch-size target no input reaches: calibration then gives the longest patches


TARGETS = ("target_patch_size", "target_flops_per_byte")
FIELDS = tuple(f.name for f in dataclasses.fields(PatchingConfig))
Name = Callable[[str], str]  # how an error names a key: a blt-eval flag, or a key of patching=


def flag(key: str) -> str:
    """``blt-eval``'s spelling of a patching key: ``--target_patch_size``, ``--patching.threshold``."""
    return f"--{key}" if key in TARGETS else f"--patching.{key}"


def keyword(key: str) -> str:
    """The spelling of a key of the ``patching=`` keyword (``patching.threshold``), as from_dict names it."""
    return f"patching.{key}"


def threshold_field(patching: PatchingConfig) -> str:
    return "relative_threshold" if patching.scheme == "relative" else "threshold"


def check_patching(model, patching: PatchingConfig, name: Name = flag) -> None:
    """Refuse, before any scoring, a patching ``model`` cannot run or a threshold no entropy can meet."""
    if patching.scheme in ENTROPY_SCHEMES and getattr(model, "patcher", None) is None:
        raise ConfigError(
            f"{name('scheme')} {patching.scheme}: this BLT has no entropy model to patch with (no bundled "
            "patcher); use a scheme without one (static, space, byte)"
        )
    if patching.threshold < 0:
        raise ConfigError(
            f"{name('threshold')} must be >= 0 (entropies are never negative), got {patching.threshold:g}"
        )


def resolve_patching(model, override, ids=None, name: Name = keyword) -> PatchingConfig:
    """The patching one call of ``model`` (a BLT) runs under ``override``; the model's own config stays as is.

    ``override``: None (the model's own patching), a :class:`PatchingConfig` (taken instead of it; its checks
    run again), or a dict of some of its fields, which replace the model's own (the others are kept), with
    at most one of ``target_patch_size`` / ``target_flops_per_byte``: the scheme's threshold is then
    calibrated on ``ids``, the call's input (a LongTensor [B, T] or a list of [T] rows), so that its mean
    patch size, or the FLOPs per position the model spends on it (entropy model included), hits the target.
    """
    if override is None:
        return model.config.patching
    targets: dict = {}
    if isinstance(override, PatchingConfig):
        patching = dataclasses.replace(override)
    elif isinstance(override, dict):
        fields = dict(override)
        targets = {k: fields.pop(k) for k in TARGETS if k in fields}
        unknown = [k for k in fields if k not in FIELDS]
        if unknown:
            raise ConfigError(
                f"{name(unknown[0])}: no such patching field; known: {', '.join(FIELDS + TARGETS)}"
            )
        check_targets(targets, fields, name)
        patching = from_dict(PatchingConfig, to_dict(model.config.patching) | fields, "patching.")
    else:
        raise ConfigError(
            f"patching must be a PatchingConfig, a dict of its fields or None, got {type(override).__name__}"
        )
    check_patching(model, patching, name)
    if not targets:
        return patching
    option, scorer = name(next(iter(targets))), BLTScorer(model, None, patching)
    entropy_patching(scorer, option, name)  # before any entropy is computed
    if ids is None:
        raise ConfigError(f"{option} is calibrated on an input, and this call has none")
    rows = [row.detach().long().cpu() for row in ids]
    wins = entropy_windows(model, rows, [0] * len(rows), sum(len(r) for r in rows), len(rows))
    return calibrate(scorer, wins, **targets, name=name).patching


@dataclass
class Windows:
    """The windows a scorer runs over some documents: ids, first scored position, and their entropies."""

    ids: list[torch.Tensor]
    firsts: list[int]
    entropies: list[torch.Tensor]
    n_bytes: int


def scored_windows(
    scorer: BLTScorer, documents: Sequence[bytes], stride: int | None, batch_size: int
) -> Windows:
    """The windows of ``blt.eval.bpb.document_scores`` with the entropy model's entropies, batched alike."""
    stride = scorer.context // 2 if stride is None else stride
    ids, firsts = [], []
    for document in documents:
        encoded = scorer.encode(document)
        for s, f, e in windows(len(encoded), scorer.context, stride):
            ids.append(torch.tensor(encoded[s:e]))
            firsts.append(f - s)
    if not ids:
        raise ValueError("the corpus has no bytes to score (no documents, or only empty ones)")
    return entropy_windows(scorer.model, ids, firsts, sum(len(d) for d in documents), batch_size)


@torch.no_grad()
def entropy_windows(
    model, ids: list[torch.Tensor], firsts: list[int], n_bytes: int, batch_size: int
) -> Windows:
    """Windows ``ids`` (1-D, on the host) with ``model``'s entropies, ``batch_size`` rows per pass."""
    device = next(model.patcher.parameters()).device
    entropies = []
    for b in range(0, len(ids), batch_size):
        batch, _ = pad_documents(ids[b : b + batch_size], torch.long)  # right padding: causal, never read
        rows = model.patcher.entropies(batch.to(device)).cpu()  # calibration bisects on the host
        entropies += [row[: len(i)] for row, i in zip(rows, ids[b : b + batch_size])]
    return Windows(ids, firsts, entropies, n_bytes)


def flops_per_byte_at(scorer: BLTScorer, wins: Windows, patching: PatchingConfig) -> float:
    """FLOPs per byte ``scorer``'s model spends on the windows under ``patching``, as ``blt-eval`` counts."""
    at = BLTScorer(scorer.model, scorer.context, patching)
    ids, valid = pad_documents(wins.ids, torch.long)
    entropies, _ = pad_documents(wins.entropies, torch.float32)
    starts = decide_starts(ids, patching, entropies)[:, :-1]  # max_patch_length included
    spent = sum(at.flops_spent(len(i), f, row).total for i, f, row in zip(wins.ids, wins.firsts, starts))
    return spent / wins.n_bytes


@dataclass
class Dial:
    """A calibrated patching, with what it gives on the windows it was calibrated on."""

    patching: PatchingConfig
    target: str  # what was asked for, e.g. "mean patch size 4"
    mean_patch_size: float  # positions per patch over the windows (calibrate_threshold's measure)
    flops_per_byte: float  # FLOPs per byte spent on the windows, entropy model included

    def to_dict(self) -> dict:
        field = threshold_field(self.patching)
        return {
            "target": self.target,
            "scheme": self.patching.scheme,
            field: getattr(self.patching, field),
            "mean_patch_size": self.mean_patch_size,
            "flops_per_byte": self.flops_per_byte,
        }

    def __str__(self) -> str:
        field = threshold_field(self.patching)
        return (
            f"calibrated for {self.target} on the input: {field} = {getattr(self.patching, field):.6f}, "
            f"mean patch size {self.mean_patch_size:.3f}, {self.flops_per_byte:.4g} FLOPs/byte spent"
        )


def entropy_patching(scorer: BLTScorer, option: str, name: Name = flag) -> PatchingConfig:
    """The scorer's patching, which must be an entropy scheme the model can run (for ``option``)."""
    patching = scorer.config.patching
    if patching.scheme not in ENTROPY_SCHEMES:
        raise ConfigError(
            f"{option} calibrates an entropy threshold, but the patching scheme is {patching.scheme!r}: "
            f"set {name('scheme')} to entropy (or relative, combined)"
        )
    check_patching(scorer.model, patching, name)
    return patching


def reachable_sizes(wins: Windows, base: PatchingConfig) -> tuple[float, float]:
    """The shortest and the longest mean patch size any threshold of ``base``'s scheme gives on the windows."""
    low = calibrate_threshold(wins.ids, wins.entropies, 1.0, base).mean_patch_size
    return low, calibrate_threshold(wins.ids, wins.entropies, LARGEST, base).mean_patch_size


def check_reachable(value: float, low: float, high: float, option: str, what: str) -> None:
    if not low <= value <= high:
        closest = low if value < low else high
        raise ConfigError(
            f"{option} {value:g} is out of reach on this input: its {what} run from {low:.4g} to {high:.4g} "
            f"(closest reachable: {closest:.4g})"
        )


def check_target(key: str, value, name: Name = flag) -> None:
    """``target_patch_size`` is a finite number >= 1, ``target_flops_per_byte`` a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name(key)} must be a number, got {value!r}")
    if key == "target_patch_size" and not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{name(key)} must be a finite number >= 1 (bytes per patch), got {value:g}")
    if key == "target_flops_per_byte" and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name(key)} must be a finite number > 0, got {value:g}")


def check_targets(targets: dict, fields: dict, name: Name = flag) -> None:
    """At most one target (``{key: value}``), in range, and no threshold among the patching ``fields`` set."""
    if len(targets) > 1:
        raise ConfigError(f"{' and '.join(map(name, targets))}: give one of them, not both")
    fixed = [name(k) for k in ("threshold", "relative_threshold") if k in fields]
    if targets and fixed:
        raise ConfigError(f"{name(next(iter(targets)))} sets the threshold itself: drop {', '.join(fixed)}")
    for key, value in targets.items():
        check_target(key, value, name)


def calibrate(
    scorer: BLTScorer,
    wins: Windows,
    target_patch_size: float | None = None,
    target_flops_per_byte: float | None = None,
    name: Name = flag,
) -> Dial:
    """The patching of ``scorer`` with its threshold set for one target (see the module docstring)."""
    if (target_patch_size is None) == (target_flops_per_byte is None):
        raise ConfigError(f"give one of {name(TARGETS[0])} and {name(TARGETS[1])}, not both")
    key = TARGETS[0] if target_flops_per_byte is None else TARGETS[1]
    check_target(key, target_patch_size if target_flops_per_byte is None else target_flops_per_byte, name)
    option = name(key)
    base = entropy_patching(scorer, option, name)

    def at_size(size: float) -> Dial:
        cal = calibrate_threshold(wins.ids, wins.entropies, size, base)
        patching = cal.patching(base)
        return Dial(patching, "", cal.mean_patch_size, flops_per_byte_at(scorer, wins, patching))

    low, high = reachable_sizes(wins, base)
    if target_flops_per_byte is None:
        check_reachable(target_patch_size, low, high, option, "mean patch sizes")
        return dataclasses.replace(
            at_size(target_patch_size), target=f"mean patch size {target_patch_size:g}"
        )

    shortest, longest = at_size(low), at_size(high)
    check_reachable(
        target_flops_per_byte, longest.flops_per_byte, shortest.flops_per_byte, option, "FLOPs per byte spent"
    )
    lo, hi, tried = math.log(low), math.log(high), [shortest, longest]
    for _ in range(BISECTIONS):  # FLOPs spent fall as the target patch size grows
        tried.append(at_size(math.exp((lo + hi) / 2)))
        if tried[-1].flops_per_byte > target_flops_per_byte:
            lo = (lo + hi) / 2
        else:
            hi = (lo + hi) / 2
    dial = min(tried, key=lambda d: abs(d.flops_per_byte - target_flops_per_byte))
    return dataclasses.replace(dial, target=f"{target_flops_per_byte:g} FLOPs/byte spent")


# ----------------------------------------------------------------------------------------------------------
# sweeps

DEFAULT_PATCH_SIZES = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass
class SweepPoint:
    scheme: str
    threshold: float  # the value of the scheme's threshold field
    mean_patch_size: float  # bytes per patch over the scored bytes
    bits_per_byte: float
    stderr: float
    flops_per_byte: float  # spent, entropy model included
    entropy_flops_per_byte: float
    global_flops_per_byte: float


def sweep_thresholds(
    scorer: BLTScorer, wins: Windows, patch_sizes: Sequence[float] | None = None
) -> list[float]:
    """Thresholds calibrated on the windows for mean ``patch_sizes`` (each must be reachable), ascending.

    None: :data:`DEFAULT_PATCH_SIZES`, those out of reach replaced by the closest reachable size.
    """
    base = entropy_patching(scorer, "sweep")
    low, high = reachable_sizes(wins, base)
    if patch_sizes is None:
        patch_sizes = sorted({min(max(p, low), high) for p in DEFAULT_PATCH_SIZES})
    for size in patch_sizes:
        if not math.isfinite(size) or size < 1:
            raise ConfigError(f"--patch_sizes: {size:g} is no mean patch size (a finite number >= 1)")
        check_reachable(size, low, high, "--patch_sizes", "mean patch sizes")
    values = [calibrate_threshold(wins.ids, wins.entropies, size, base).threshold for size in patch_sizes]
    return sorted(set(values))


def check_thresholds(thresholds: Sequence[float], patching: PatchingConfig) -> None:
    field = threshold_field(patching)
    if not thresholds:
        raise ConfigError("--thresholds is empty: give at least one threshold")
    for value in thresholds:
        if math.isnan(value) or (field == "threshold" and value < 0):
            raise ConfigError(
                f"--thresholds: {value:g} is no {field} (entropies are never negative; NaN is no number)"
            )


def sweep(
    scorer: BLTScorer,
    documents: Sequence[bytes],
    thresholds: Sequence[float],
    stride=None,
    batch_size: int = 8,
) -> list[SweepPoint]:
    """Score ``documents`` at every threshold (the scheme's threshold field) of ``scorer``'s patching."""
    base = entropy_patching(scorer, "sweep")
    check_thresholds(thresholds, base)
    field = threshold_field(base)
    points = []
    for value in thresholds:
        at = BLTScorer(scorer.model, scorer.context, dataclasses.replace(base, **{field: value}))
        result = evaluate(at, documents, stride, batch_size)
        flops = result.flops
        points.append(
            SweepPoint(
                scheme=base.scheme,
                threshold=value,
                mean_patch_size=result.bytes_per_unit,
                bits_per_byte=result.bits_per_byte,
                stderr=result.stderr,
                flops_per_byte=flops["spent_flops_per_byte"],
                entropy_flops_per_byte=flops["spent_entropy_flops_per_byte"],
                global_flops_per_byte=flops["spent_global_flops_per_byte"],
            )
        )
    return points


def plot_sweep(points: Sequence[SweepPoint], path: str | Path, title: str) -> Path:
    """Bits per byte against FLOPs per byte spent, each point labelled with its threshold and patch size.

    No error bars: every point scores the same documents, so the standard error over documents (of the
    level, in the rows) says little about the differences between points."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([p.flops_per_byte for p in points], [p.bits_per_byte for p in points], "o-")
    for i, p in enumerate(points):
        label = f"{p.threshold:.2f}: {p.mean_patch_size:.1f} B/patch"
        offset = (4, 6) if i % 2 == 0 else (4, -12)  # alternate sides so neighbours do not overprint
        ax.annotate(
            label, (p.flops_per_byte, p.bits_per_byte), textcoords="offset points", xytext=offset, fontsize=7
        )
    ax.set_xlabel("forward FLOPs per byte spent (entropy model included)")
    ax.set_ylabel("bits per byte (same documents at every threshold)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=120)
    return Path(path)
