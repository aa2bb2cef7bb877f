"""``blt-flops``: FLOPs per byte of the models in a config file, or of a tokenized transformer's shape.

    blt-flops --config configs/blt-1b.yaml [--patch-size 6] [--context-bytes 8192] [--json]
    blt-flops --arch bpe --layers 24 --dim 1280 --vocab 32000 --context-bytes 8192 --bytes-per-token 3.7

With ``--config`` every model section present is reported: ``blt`` (without its entropy model),
``entropy`` (or the entropy model bundled in ``blt.entropy_model``) and ``baseline``. ``--json`` prints one JSON object whose top-level
``inference_flops_per_byte`` / ``training_flops_per_byte`` are those of the first of blt, baseline, entropy
present, with every model under ``models``. The accounting is documented in :mod:`blt.eval.flops`.
"""

from __future__ import annotations

import argparse
import json
import sys

from blt.config import BLTConfig, ConfigError, EntropyModelConfig, TransformerConfig, from_dict, load_yaml
from blt.eval.flops import (
    LLAMA2_BYTES_PER_TOKEN,
    PAPER_CONTEXT_BYTES,
    FlopCount,
    blt_flops_per_byte,
    entropy_flops_per_byte,
    tokenized_flops_per_byte,
)

MODEL_SECTIONS = ("blt", "baseline", "entropy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blt-flops",
        description="Forward (inference) and training (3x forward) FLOPs per byte, BLT paper accounting.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML config; reports its blt, entropy and baseline sections")
    source.add_argument("--arch", choices=["bpe"], help="a tokenized transformer given by its shape")
    parser.add_argument(
        "--patch-size", type=float, help="mean BLT patch size in bytes (default: the config's)"
    )
    parser.add_argument(
        "--context-bytes", type=float, default=PAPER_CONTEXT_BYTES, help="context length in bytes"
    )
    parser.add_argument(
        "--bytes-per-token",
        type=float,
        default=LLAMA2_BYTES_PER_TOKEN,
        help="mean bytes per token (tokenized models)",
    )
    shape = parser.add_argument_group("--arch bpe shape")
    shape.add_argument("--layers", type=int, help="number of layers")
    shape.add_argument("--dim", type=int, help="model width")
    shape.add_argument("--vocab", type=int, help="vocabulary size")
    shape.add_argument("--heads", type=int, help="attention heads (default: width / 128, or 1)")
    shape.add_argument("--kv-heads", type=int, help="key/value heads (default: same as --heads)")
    shape.add_argument("--ffn-dim", type=int, help="SwiGLU hidden size (default: int(8 * dim / 3))")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _arch_model(args: argparse.Namespace) -> dict[str, tuple[FlopCount, dict]]:
    missing = [
        flag
        for flag, value in (("--layers", args.layers), ("--dim", args.dim), ("--vocab", args.vocab))
        if value is None
    ]
    if missing:
        raise ConfigError(f"--arch bpe needs {', '.join(missing)}")
    if args.dim <= 0:
        raise ConfigError(f"--dim must be positive, got {args.dim}")
    heads = args.heads or (args.dim // 128 if args.dim % 128 == 0 else 1)
    config = TransformerConfig(
        dim=args.dim, n_layers=args.layers, n_heads=heads, n_kv_heads=args.kv_heads, ffn_dim=args.ffn_dim
    )
    count = tokenized_flops_per_byte(config, args.vocab, args.context_bytes, args.bytes_per_token)
    return {"bpe": (count, {"bytes_per_token": args.bytes_per_token})}


def _config_models(args: argparse.Namespace) -> dict[str, tuple[FlopCount, dict]]:
    data = load_yaml(args.config)
    present = [name for name in MODEL_SECTIONS if name in data]
    if not present:
        raise ConfigError(f"{args.config} has none of the model sections {', '.join(MODEL_SECTIONS)}")
    models: dict[str, tuple[FlopCount, dict]] = {}
    for name in present:
        if name == "blt":
            config = from_dict(BLTConfig, data[name], prefix="blt.")
            patch = args.patch_size if args.patch_size is not None else config.patching.patch_size
            models[name] = (blt_flops_per_byte(config, patch, args.context_bytes), {"mean_patch_size": patch})
            if config.entropy_model is not None and "entropy" not in data:  # the bundled patcher
                models["entropy"] = (entropy_flops_per_byte(config.entropy_model, args.context_bytes), {})
        elif name == "entropy":
            config = from_dict(EntropyModelConfig, data[name], prefix="entropy.")
            models[name] = (entropy_flops_per_byte(config, args.context_bytes), {})
        else:
            from blt.baseline import BaselineTrainConfig  # sentencepiece and torch only when needed

            config = from_dict(BaselineTrainConfig, data[name], prefix="baseline.")
            count = tokenized_flops_per_byte(
                config, config.vocab_size, args.context_bytes, args.bytes_per_token
            )
            models[name] = (count, {"bytes_per_token": args.bytes_per_token})
    return models


def _report(models: dict[str, tuple[FlopCount, dict]], context_bytes: float) -> dict:
    entries = {name: {**count.to_dict(), **extra} for name, (count, extra) in models.items()}
    main = next(iter(entries.values()))
    return {
        "inference_flops_per_byte": main["inference_flops_per_byte"],
        "training_flops_per_byte": main["training_flops_per_byte"],
        "context_bytes": context_bytes,
        "models": entries,
    }


def _print_text(report: dict) -> None:
    print(f"context: {report['context_bytes']:g} bytes; training = 3 x forward")
    for name, entry in report["models"].items():
        setting = ", ".join(
            f"{k} {v:g}" for k, v in entry.items() if k in ("mean_patch_size", "bytes_per_token")
        )
        print(f"\n{name}{f' ({setting})' if setting else ''}")
        print(f"  inference FLOPs/byte  {entry['inference_flops_per_byte']:.3e}")
        print(f"  training FLOPs/byte   {entry['training_flops_per_byte']:.3e}")
        for part, value in entry["parts"].items():
            print(f"    {part:<26}{value:.3e}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.patch_size is not None and not args.patch_size > 0:
            raise ConfigError(f"--patch-size must be > 0, got {args.patch_size:g}")
        if args.arch is not None and args.patch_size is not None:
            raise ConfigError("--patch-size applies to BLT configs, not to --arch bpe")
        models = _arch_model(args) if args.arch else _config_models(args)
        report = _report(models, args.context_bytes)
    except (ConfigError, ValueError) as e:
        parser.exit(2, f"blt-flops: error: {e}\n")
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        _print_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
