"""Compare trained runs: a Markdown table and two plots.

Each run directory is a training run's output (see the training contract): ``summary.json`` with at least
kind, name, params, training_flops, val_bpb, mean_patch_size (BLT) or bytes_per_token (baseline),
inference_flops_per_byte and ``val_curve`` ([{step, training_flops, val_bpb}, ...]), ``metrics.csv`` and the
exported ``model/``. The table lists, per run, bits per byte, inference FLOPs per byte, training FLOPs spent,
parameters and the mean patch (or token) size; BLT rows are also compared with the first baseline run
(difference in bits per byte, and how many times fewer inference FLOPs per byte they spend).

Plots (matplotlib, imported only here, drawn on plain ``Figure`` objects with the Agg canvas so no global
backend is set): bits per byte against inference FLOPs per byte, and validation curves against training FLOPs.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blt.checkpoint.files import read_json_object

REQUIRED = ("kind", "params", "training_flops", "val_bpb", "inference_flops_per_byte")


@dataclass
class Run:
    name: str
    kind: str  # "blt", "baseline" or "entropy"
    patching: str  # e.g. "entropy 1.34", "static 4", "BPE", "-"
    bpb: float
    stderr: float  # NaN when unknown
    inference_flops_per_byte: float
    training_flops: float
    params: int
    unit_size: float  # mean patch size (BLT), bytes per token (baseline), 1 (entropy model); NaN if unknown
    curve: list[tuple[float, float]] = field(default_factory=list)  # (training FLOPs, val bpb)


def read_run(directory: str | Path) -> Run:
    """The :class:`Run` behind a run directory; a missing file or key is a ValueError naming it."""
    directory = Path(directory)
    path = directory / "summary.json"
    if not path.is_file():
        raise ValueError(f"{directory} is not a run directory: no summary.json")
    summary = read_json_object(path, ValueError)
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        raise ValueError(f"{path} lacks the key {missing[0]!r} (needs {', '.join(REQUIRED)})")
    for key in REQUIRED[1:]:  # every key but kind is a number
        if not isinstance(summary[key], (int, float)) or isinstance(summary[key], bool):
            raise ValueError(f"{path}: {key} must be a number, got {summary[key]!r}")
    kind = str(summary["kind"])
    unit = {"blt": "mean_patch_size", "baseline": "bytes_per_token"}.get(kind)
    return Run(
        name=str(summary.get("name") or directory.name),
        kind=kind,
        patching=describe_patching(directory, kind),
        bpb=float(summary["val_bpb"]),
        stderr=math.nan,
        inference_flops_per_byte=float(summary["inference_flops_per_byte"]),
        training_flops=float(summary["training_flops"]),
        params=int(summary["params"]),
        unit_size=float(summary[unit])
        if unit and summary.get(unit) is not None
        else (1.0 if kind == "entropy" else math.nan),
        curve=summary_curve(summary) or metrics_curve(directory / "metrics.csv"),
    )


def describe_patching(directory: Path, kind: str) -> str:
    """How a run groups bytes, from its exported model's config (``-`` when it cannot tell)."""
    if kind == "baseline":
        return "BPE"
    if kind == "entropy":
        return "bytes"
    path = directory / "model" / "config.json"
    if not path.is_file():
        return "-"
    patching = json.loads(path.read_text()).get("config", {}).get("patching", {})
    scheme = patching.get("scheme", "-")
    if scheme in ("entropy", "combined"):
        return f"{scheme} {patching.get('threshold', math.nan):.3g}"
    if scheme == "relative":
        return f"relative {patching.get('relative_threshold', math.nan):.3g}"
    if scheme == "static":
        return f"static {patching.get('patch_size')}"
    return scheme


def summary_curve(summary: dict) -> list[tuple[float, float]]:
    return [(float(p["training_flops"]), float(p["val_bpb"])) for p in summary.get("val_curve") or []]


def metrics_curve(path: Path) -> list[tuple[float, float]]:
    """(training_flops, val_bpb) rows of a Lightning ``metrics.csv`` that logged both."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        (float(r["training_flops"]), float(r["val_bpb"]))
        for r in rows
        if r.get("training_flops") not in (None, "") and r.get("val_bpb") not in (None, "")
    ]


# ----------------------------------------------------------------------------------------------------------
# the table


def _sci(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3g}"


def markdown_table(runs: Sequence[Run]) -> str:
    header = (
        "| run | kind | patching | bits/byte | inference FLOPs/byte | training FLOPs | params "
        "| bytes per patch/token |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in runs:
        bpb = f"{r.bpb:.4f}" + ("" if math.isnan(r.stderr) else f" ± {r.stderr:.4f}")
        size = "-" if math.isnan(r.unit_size) else f"{r.unit_size:.2f}"
        rows.append(
            f"| {r.name} | {r.kind} | {r.patching} | {bpb} | {_sci(r.inference_flops_per_byte)} | "
            f"{_sci(r.training_flops)} | {r.params:,} | {size} |"
        )
    return header + "\n".join(rows) + "\n"


def against_baseline(runs: Sequence[Run]) -> str:
    """BLT runs relative to the first baseline run: bpb difference and inference FLOPs saved."""
    baseline = next((r for r in runs if r.kind == "baseline"), None)
    blts = [r for r in runs if r.kind == "blt"]
    if baseline is None or not blts:
        return ""
    intro = (
        f"\nAgainst the BPE baseline `{baseline.name}` ({baseline.bpb:.4f} bits/byte, "
        f"{_sci(baseline.inference_flops_per_byte)} inference FLOPs/byte):\n"
    )
    lines = [
        intro,
        "| run | bits/byte - baseline | baseline FLOPs/byte ÷ FLOPs/byte | training FLOPs ÷ baseline's |",
        "|---|---|---|---|",
    ]
    for r in blts:
        saving = baseline.inference_flops_per_byte / r.inference_flops_per_byte
        compute = r.training_flops / baseline.training_flops
        lines.append(f"| {r.name} | {r.bpb - baseline.bpb:+.4f} | {saving:.2f}x | {compute:.2f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# plots

# BLT runs take matplotlib's colour cycle; the baseline and the entropy model stand apart from it
STYLES = {
    "baseline": {"color": "black", "linestyle": "--"},
    "entropy": {"color": "tab:gray", "linestyle": ":"},
}


def plot_bpb_vs_flops(runs: Sequence[Run], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for r in runs:
        err = None if math.isnan(r.stderr) else r.stderr
        color = STYLES.get(r.kind, {}).get("color", "tab:blue")
        ax.errorbar(r.inference_flops_per_byte, r.bpb, yerr=err, fmt="o", color=color, capsize=3)
        ax.annotate(
            r.name, (r.inference_flops_per_byte, r.bpb), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_xlabel("inference FLOPs per byte")
    ax.set_ylabel("bits per byte (validation)")
    ax.set_title("bits per byte vs inference compute")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)


def plot_val_curves(runs: Sequence[Run], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for r in runs:
        if r.curve:
            xs, ys = zip(*sorted(r.curve))
            ax.plot(xs, ys, marker=".", label=r.name, **STYLES.get(r.kind, {}))
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("bits per byte (validation)")
    ax.set_title("validation curves vs training compute")
    ax.grid(True, which="both", alpha=0.3)
    if any(r.curve for r in runs):
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------------


def report_paths(out_dir: str | Path) -> dict[str, Path]:
    """The files :func:`compare_runs` writes into ``out_dir``."""
    out = Path(out_dir)
    return {
        "table": out / "comparison.md",
        "json": out / "comparison.json",
        "bpb_vs_flops": out / "bpb_vs_inference_flops.png",
        "val_curves": out / "val_curves.png",
    }


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path, evaluate: Callable[[Path], object] | None = None
) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.json`` and the two PNG plots into ``out_dir``.

    ``evaluate(run_dir) -> BPBResult`` (optional) re-scores each run's exported model on one corpus; its
    bits per byte, standard error, bytes per unit and inference FLOPs per byte replace the summary's.
    """
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    if evaluate is not None:
        for run, d in zip(runs, run_dirs):
            result = evaluate(Path(d))
            run.bpb, run.stderr, run.unit_size = result.bits_per_byte, result.stderr, result.bytes_per_unit
            run.inference_flops_per_byte = result.flops["inference_flops_per_byte"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = report_paths(out_dir)
    paths["table"].write_text(markdown_table(runs) + against_baseline(runs))
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(r).items()} for r in runs
    ]
    paths["json"].write_text(json.dumps(rows, indent=2, allow_nan=False))
    plot_bpb_vs_flops(runs, paths["bpb_vs_flops"])
    plot_val_curves(runs, paths["val_curves"])
    return paths
