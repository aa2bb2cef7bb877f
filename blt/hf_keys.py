"""Tensor-name mapping between our modules and the Hugging Face ``transformers`` BLT layout.

Our blocks keep HF's projection names (q_proj, gate_proj, ...) and differ only in a few path segments,
so the mapping is a list of (ours, theirs) regex rules applied in one direction or the other.
"""

from __future__ import annotations

import re

import torch

# one transformer block: ours "layers.3.attn_norm.weight" <-> HF "layers.3.input_layernorm.weight"
BLOCK_RULES = [
    (r"layers\.(\d+)\.attn_norm\.", r"layers.\1.input_layernorm."),
    (r"layers\.(\d+)\.mlp_norm\.", r"layers.\1.post_attention_layernorm."),
    (r"layers\.(\d+)\.attn\.", r"layers.\1.self_attn."),
]

# a CausalLM used as entropy model <-> HF BltPatcher (whose stack sits directly under the model)
ENTROPY_MODEL_RULES = [(r"^transformer\.layers\.", r"layers.")] + BLOCK_RULES


def _rewrite(name: str, rules: list[tuple[str, str]], to_hf: bool) -> str:
    for ours, theirs in rules:
        if to_hf:
            name = re.sub(ours, theirs.replace(r"\1", r"\g<1>"), name)
        else:
            name = re.sub(_pattern(theirs), ours_replacement(ours), name)
    return name


def _pattern(template: str) -> str:
    """Turn a replacement template like ``layers.\\1.x.`` back into a regex matching it."""
    return re.escape(template).replace(re.escape(r"\1"), r"(\d+)").replace(r"\^", "^")


def ours_replacement(pattern: str) -> str:
    """Turn a regex like ``layers\\.(\\d+)\\.x\\.`` into a replacement template ``layers.\\g<1>.x.``."""
    return pattern.replace(r"(\d+)", r"\g<1>").replace("\\.", ".").lstrip("^")


def to_hf(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename our tensors to HF names (with ``prefix`` prepended, e.g. ``"model.patcher."``)."""
    return {prefix + _rewrite(k, rules, to_hf=True): v for k, v in state.items()}


def from_hf(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Take the HF tensors under ``prefix`` and rename them to ours (others are ignored)."""
    return {_rewrite(k[len(prefix):], rules, to_hf=False): v for k, v in state.items() if k.startswith(prefix)}
