"""``blt-flops``: FLOPs per byte of the models of a config, or of a tokenized transformer's shape.

    blt-flops --config configs/blt-1b.yaml [--patch_size 6] [--context_bytes 8192] [--json]
    blt-flops --config configs/tiny.yaml --blt.global_transformer.n_layers 8
    blt-flops --arch bpe --layers 24 --dim 1280 --vocab 32000 --context_bytes 8192 --bytes_per_token 3.7

Every model section given (in ``--config`` files or by ``--section.key`` flags) is reported: ``blt``
(without its entropy model), ``entropy`` (or the entropy model bundled in ``blt.entropy_model``) and
``baseline``; a training run file's other sections are not read. ``--json`` prints one JSON object whose
top-level ``inference_flops_per_byte`` / ``training_flops_per_byte`` are those of the first of blt, baseline,
entropy present, with every model under ``models``. The accounting is documented in :mod:`blt.eval.flops`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from blt import cli
from blt.config import BLTConfig, ConfigError, EntropyModelConfig, TransformerConfig
from blt.eval.flops import (
    LLAMA2_BYTES_PER_TOKEN,
    PAPER_CONTEXT_BYTES,
    FlopCount,
    blt_flops_per_byte,
    entropy_flops_per_byte,
    tokenized_flops_per_byte,
)

MODEL_SECTIONS = ("blt", "baseline", "entropy")


def build_parser() -> ArgumentParser:
    from blt.baseline import BaselineTrainConfig  # sentencepiece and torch only when the command runs

    parser = cli.new_parser(
        "blt-flops", "Forward (inference) and training (3x forward) FLOPs per byte, BLT paper accounting."
    )
    parser.add_argument(
        "--arch",
        type=Literal["bpe"],
        default=None,
        help="a tokenized transformer given by its shape (--layers, --dim, --vocab) instead of config sections",
    )
    parser.add_argument(
        "--patch_size",
        type=float,
        default=None,
        help="mean BLT patch size in bytes (default: the config's blt.patching.patch_size)",
    )
    parser.add_argument(
        "--context_bytes", type=float, default=PAPER_CONTEXT_BYTES, help="context length in bytes"
    )
    parser.add_argument(
        "--bytes_per_token",
        type=float,
        default=LLAMA2_BYTES_PER_TOKEN,
        help="mean bytes per token (tokenized models)",
    )
    shape = parser.add_argument_group("--arch bpe shape")
    shape.add_argument("--layers", type=int, default=None, help="number of layers")
    shape.add_argument("--dim", type=int, default=None, help="model width")
    shape.add_argument("--vocab", type=int, default=None, help="vocabulary size")
    shape.add_argument("--heads", type=int, default=None, help="attention heads (default: width / 128, or 1)")
    shape.add_argument("--kv_heads", type=int, default=None, help="key/value heads (default: --heads)")
    shape.add_argument(
        "--ffn_dim", type=int, default=None, help="SwiGLU hidden size (default: int(8 * dim / 3))"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    cli.add_section(parser, "blt", BLTConfig)
    cli.add_section(parser, "entropy", EntropyModelConfig)
    cli.add_section(parser, "baseline", BaselineTrainConfig)
    cli.add_unread_sections(parser, [s for s in cli.RUN_SECTIONS if s not in MODEL_SECTIONS])
    return parser


def _arch_model(args: Namespace) -> dict[str, tuple[FlopCount, dict]]:
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


def _config_models(args: Namespace, present: list[str]) -> dict[str, tuple[FlopCount, dict]]:
    from blt.baseline import BaselineTrainConfig

    models: dict[str, tuple[FlopCount, dict]] = {}
    for name in present:
        if name == "blt":
            config = cli.section(args, name, BLTConfig)
            patch = args.patch_size if args.patch_size is not None else config.patching.patch_size
            models[name] = (blt_flops_per_byte(config, patch, args.context_bytes), {"mean_patch_size": patch})
            if config.entropy_model is not None and "entropy" not in present:  # the bundled patcher
                models["entropy"] = (entropy_flops_per_byte(config.entropy_model, args.context_bytes), {})
        elif name == "entropy":
            config = cli.section(args, name, EntropyModelConfig)
            models[name] = (entropy_flops_per_byte(config, args.context_bytes), {})
        else:
            config = cli.section(args, name, BaselineTrainConfig)
            count = tokenized_flops_per_byte(
                config, config.vocab_size, args.context_bytes, args.bytes_per_token
            )
            models[name] = (count, {"bytes_per_token": args.bytes_per_token})
    return models


def _models(args: Namespace, given: Namespace) -> dict[str, tuple[FlopCount, dict]]:
    """The models to report: the --arch shape, or the model sections the user gave (not their defaults)."""
    present = [name for name in MODEL_SECTIONS if cli.given_fields(given, name)]
    if args.arch is not None:
        if present:
            raise ConfigError(f"--arch bpe takes no model sections, got {', '.join(present)}")
        if args.patch_size is not None:
            raise ConfigError("--patch_size applies to BLT configs, not to --arch bpe")
        return _arch_model(args)
    if not present:
        raise ConfigError(
            f"none of the model sections {', '.join(MODEL_SECTIONS)} given: pass --config FILE "
            "(or --blt.* options), or --arch bpe"
        )
    if args.patch_size is not None and not args.patch_size > 0:
        raise ConfigError(f"--patch_size must be > 0, got {args.patch_size:g}")
    return _config_models(args, present)


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


def flops_command(argv: Sequence[str]) -> None:
    parser = build_parser()
    args = cli.parse(parser, argv)
    report = _report(_models(args, cli.parse(parser, argv, defaults=False)), args.context_bytes)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        _print_text(report)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("blt-flops", flops_command, argv)


if __name__ == "__main__":
    sys.exit(main())
