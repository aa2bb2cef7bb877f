"""Evaluation: FLOPs per byte, bits per byte, comparison of trained runs.

- ``blt.eval.flops``: forward and training FLOPs per byte of BLT, entropy and tokenized models, and the
  FLOPs one input actually costs from its patches or tokens;
- ``blt.eval.bpb``: bits per byte of raw text, scored in windows so every byte is predicted once;
- ``blt.eval.documents``: per-document rows (bits per byte, FLOPs per byte spent), Spearman, the plot;
- ``blt.eval.dial``: a BLT's entropy threshold for a target patch size or FLOPs per byte, threshold sweeps,
  and the one reading of a per-call ``patching=`` override (``resolve_patching``);
- ``blt.eval.compare``: Markdown table and plots over training run directories;
- ``blt.eval.harness``: the lm-evaluation-harness model ``blt`` (registered on import) and ``blt-lm-eval``.

Submodules are imported on first use so ``import blt.eval`` stays cheap (no torch, no matplotlib).
"""

from blt import lazy_getattr

_LAZY = {
    "load_model": "blt.eval.loading",  # blt.checkpoint.load, under its earlier name
    "evaluate": "blt.eval.bpb",
    "compare_runs": "blt.eval.compare",
    "blt_flops_per_byte": "blt.eval.flops",
    "entropy_flops_per_byte": "blt.eval.flops",
    "tokenized_flops_per_byte": "blt.eval.flops",
    "blt_flops_spent": "blt.eval.flops",
    "tokenized_flops_spent": "blt.eval.flops",
}
__getattr__ = lazy_getattr("blt.eval", _LAZY)


__all__ = ["compare_runs", "evaluate", "load_model"]
