"""Flags of the tiny training runs shared by the end-to-end and fault-injection tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_flags(global_dim: int, val_batches: int) -> list[str]:
    """Data, entropy model and BLT small enough for a run of a few steps on the CPU."""
    return [
        "--data.seq_len", "32", "--data.batch_size", "4", "--data.val_fraction", "0.2",
        "--entropy.dim", "32", "--entropy.n_layers", "1", "--entropy.n_heads", "2", "--entropy.window", "16",
        "--blt.encoder.dim", "32", "--blt.encoder.n_heads", "2", "--blt.encoder.hash_vocab", "64",
        "--blt.encoder.hash_ngram_sizes", "[3, 4]", "--blt.global_transformer.dim", str(global_dim),
        "--blt.global_transformer.n_layers", "1", "--blt.global_transformer.n_heads", "2",
        "--blt.decoder.dim", "32", "--blt.decoder.n_layers", "1", "--blt.decoder.n_heads", "2",
        "--trainer.limit_val_batches", str(val_batches), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--run.target_patch_size", "3",
    ]  # fmt: skip
