"""Pictures of a patched text: an HTML page (bytes shaded by entropy, patch boundaries) and a PNG plot.

Byte t is shaded by H(t-1), the entropy of the model's prediction of that byte: the value the entropy
schemes compare with the threshold when they decide whether a patch starts at t.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import torch

from blt.tokenizer import VOCAB_SIZE

MAX_ENTROPY = math.log(VOCAB_SIZE)  # entropy of the uniform next-byte distribution
PNG_MAX_BYTES = 2000  # beyond this a per-byte plot is unreadable; the PNG shows the first bytes
PNG_ROW_BYTES = 100


def byte_labels(data: bytes) -> list[str]:
    """One display string per byte: the character on a UTF-8 lead byte, '' on its continuation bytes."""
    labels, i = [], 0
    while i < len(data):
        width = next((w for w in (1, 2, 3, 4) if _decodes(data[i : i + w])), 0)
        if width == 0:
            labels.append(f"\\x{data[i]:02x}")
            i += 1
            continue
        char = data[i : i + width].decode("utf-8")
        labels += [_visible(char)] + [""] * (width - 1)
        i += width
    return labels


def _decodes(chunk: bytes) -> bool:
    try:
        return len(chunk.decode("utf-8")) == 1
    except UnicodeDecodeError:
        return False


def _visible(char: str) -> str:
    if char == "\n":
        return "\u21b5"
    if char == "\t":
        return "\u2192"
    if char.isprintable():
        return char
    return repr(char)[1:-1]  # Python's escape: \x00, \r, \u200b, ...


def byte_shades(entropies: torch.Tensor | None, n: int) -> list[float | None]:
    """H(t-1) for the n bytes at positions 1..n of a sequence with entropies [n + 1] (None: no model)."""
    if entropies is None:
        return [None] * n
    return entropies[:n].tolist()


def html_page(data: bytes, starts: torch.Tensor, entropies: torch.Tensor | None, title: str, summary: str) -> str:
    """HTML for the bytes ``data`` at positions 1..n of a sequence whose position 0 is BOS.

    starts: [n + 1] start mask of the whole sequence; entropies: [n + 1] or None.
    """
    n = len(data)
    labels, shades, begins = byte_labels(data), byte_shades(entropies, n), starts[1 : n + 1].tolist()
    spans = []
    for t, (label, shade, begin) in enumerate(zip(labels, shades, begins), start=1):
        alpha = 0.0 if shade is None else min(shade / MAX_ENTROPY, 1.0)
        tip = f"byte {t}: 0x{data[t - 1]:02x}" + ("" if shade is None else f", H = {shade:.3f} nats")
        cls = "b s" if begin else "b"
        spans.append(
            f'<span class="{cls}" style="background: rgba(220, 40, 40, {alpha:.3f})" '
            f'title="{html.escape(tip)}">{html.escape(label)}</span>'
        )
        if data[t - 1] == ord("\n"):  # the byte, not its label: a literal "\u21b5" in the text is no line break
            spans.append("<br>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
pre {{ background: #f4f4f4; padding: 0.5em; }}
.text {{ font-family: monospace; font-size: 15px; line-height: 1.9; word-wrap: break-word; }}
.b {{ display: inline-block; min-width: 3px; white-space: pre; }}
.s {{ border-left: 2px solid #1f5fbf; margin-left: 1px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<pre>{html.escape(summary)}</pre>
<p>Blue bars mark patch starts. Red shade: entropy of the model's prediction of the byte
(white = 0 nats, full red = ln 260 = {MAX_ENTROPY:.2f} nats). Hover a byte for its value.</p>
<div class="text">{"".join(spans)}</div>
</body></html>
"""


def write_html(path: str | Path, data: bytes, starts: torch.Tensor, entropies: torch.Tensor | None, title: str,
               summary: str) -> Path:
    path = Path(path)
    path.write_text(html_page(data, starts, entropies, title, summary), encoding="utf-8")
    return path


def write_png(path: str | Path, data: bytes, starts: torch.Tensor, entropies: torch.Tensor | None,
              threshold: float | None, title: str) -> Path:
    """Entropy of each byte's prediction as bars, patch starts as blue lines, the threshold dashed.

    The text wraps into rows of PNG_ROW_BYTES bytes, each byte labelled with its character.
    """
    # the Agg canvas directly: no pyplot, so no global backend switch and no figure registry
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(data) > PNG_MAX_BYTES:
        title += f" (first {PNG_MAX_BYTES} of {len(data)} bytes)"
    data = data[:PNG_MAX_BYTES]
    n = len(data)
    labels, shades, begins = byte_labels(data), byte_shades(entropies, n), starts[1 : n + 1].tolist()
    n_rows = math.ceil(n / PNG_ROW_BYTES)
    fig = Figure(figsize=(16, 0.6 + 1.9 * n_rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    top = max([s for s in shades if s is not None] + [threshold or 0.0, 1.0]) * 1.05
    for row, ax in enumerate(axes):
        lo, hi = row * PNG_ROW_BYTES, min((row + 1) * PNG_ROW_BYTES, n)
        x = list(range(lo + 1, hi + 1))
        if entropies is not None:
            ax.bar(x, shades[lo:hi], width=0.85, color="#d83030")
            ax.set_ylim(0, top)
        if threshold is not None:
            ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
        for t in x:
            if begins[t - 1]:
                ax.axvline(t - 0.5, color="#1f5fbf", linewidth=1.0)
        ax.set_xticks(x, [label or "\u00b7" for label in labels[lo:hi]], fontsize=7)
        ax.tick_params(axis="x", length=0)
        ax.set_xlim(lo + 0.5, lo + PNG_ROW_BYTES + 0.5)
    axes[0].set_title(title + ("" if threshold is None else f" (threshold {threshold:.3f} nats, dashed)"))
    if entropies is not None:
        axes[n_rows // 2].set_ylabel("entropy of prediction (nats)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
