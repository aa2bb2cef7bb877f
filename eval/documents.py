"""Per-document reports: how much compute each document got, against how hard it was to predict.

One row per document and model: bytes, bits and bits per byte, patches or tokens (``units``), and the
forward FLOPs per byte spent on it (``blt.eval.bpb``'s count from its actual patches or tokens; the BLT's
entropy model included, its share and the global transformer's given apart). Rows are written as CSV or
JSON Lines, chosen by the file's suffix.

Whether compute tracks difficulty is measured by Spearman's rank correlation between FLOPs per byte and bits
per byte over documents (ranks, so a constant cost such as the local models' does not matter), and shown by
a scatter plot of every model on one figure (matplotlib, imported only to draw, on a plain ``Figure`` with
the Agg canvas so no global backend is set).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

ROW_SUFFIXES = (".csv", ".jsonl")


def document_rows(model: str, unit: str, scores) -> list[dict]:
    """Rows of ``blt.eval.bpb.DocumentScore`` s (FLOPs counted), documents numbered in corpus order."""
    rows = []
    for i, s in enumerate(scores):
        if not s.n_bytes:
            continue  # an empty document has no bits per byte
        rows.append(
            {
                "model": model,
                "document": i,
                "bytes": s.n_bytes,
                "bits": s.bits,
                "bits_per_byte": s.bits_per_byte,
                "unit": unit,
                "units": s.units,
                "bytes_per_unit": s.n_bytes / s.units,
                "flops_per_byte": s.flops_per_byte(),
                "entropy_flops_per_byte": s.flops_per_byte("entropy"),
                "global_flops_per_byte": s.flops_per_byte("global"),
            }
        )
    return rows


def write_rows(rows: Sequence[dict], path: str | Path) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV or JSON Lines, by the suffix of ``path``."""
    path = Path(path)
    if path.suffix not in ROW_SUFFIXES:
        raise ValueError(
            f"{path}: rows are written as {' or '.join(ROW_SUFFIXES)}, not {path.suffix or 'no suffix'!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        if path.suffix == ".csv":
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)
    return path


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks. NaN below two points or if constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs two sequences of one length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mean = (len(x) + 1) / 2  # the mean of ranks 1..n, ties or not
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry))
    var_x = sum((a - mean) ** 2 for a in rx)
    var_y = sum((b - mean) ** 2 for b in ry)
    return cov / math.sqrt(var_x * var_y) if var_x and var_y else math.nan


def correlations(rows: Sequence[dict]) -> dict[str, float]:
    """Per model: Spearman's correlation of FLOPs per byte spent with bits per byte over its documents."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        out[model] = spearman([r["flops_per_byte"] for r in mine], [r["bits_per_byte"] for r in mine])
    return out


def plot_documents(rows: Sequence[dict], path: str | Path, title: str = "compute per document") -> Path:
    """Scatter of FLOPs per byte spent against bits per byte, one colour per model, Spearman in the legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for model, rho in correlations(rows).items():
        mine = [r for r in rows if r["model"] == model]
        ax.scatter(
            [r["bits_per_byte"] for r in mine],
            [r["flops_per_byte"] for r in mine],
            s=12,
            alpha=0.7,
            label=f"{model} (Spearman {rho:.2f}, {len(mine)} docs)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("bits per byte (per document)")
    ax.set_ylabel("forward FLOPs per byte spent")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return Path(path)
