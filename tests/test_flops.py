"""FLOPs per byte: the paper's Llama 2 figures, agreement with FlopCounterMode, the CLI, bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_blt import blt_config
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from blt import cli
from blt.config import BLTConfig, EntropyModelConfig, PatchingConfig, TransformerConfig
from blt.eval.flops import (
    attended_context,
    blt_flops_per_byte,
    blt_params,
    blt_six_n_flops_per_byte,
    entropy_flops_per_byte,
    layer_flops,
    non_embedding_params,
    six_n_flops_per_byte,
    six_n_flops_per_token,
    tokenized_flops_per_byte,
)
from blt.eval.flops_cli import build_parser
from blt.eval.flops_cli import main as flops_main
from blt.lm import CausalLM
from blt.model import BLT
from blt.patcher import EntropyModel

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# ----------------------------------------------------------------------------------------------------------
# the paper's figures


@pytest.mark.parametrize("layers, dim, expected", [(24, 1280, "3.1e+08"), (32, 3072, "2.1e+09")])
def test_llama2_figures_of_the_paper(layers, dim, expected):
    config = TransformerConfig(dim=dim, n_layers=layers, n_heads=dim // 128)
    count = tokenized_flops_per_byte(config, vocab_size=32000, context_bytes=8192, bytes_per_token=3.7)
    assert f"{count.inference_flops_per_byte:.1e}" == expected
    assert count.training_flops_per_byte == pytest.approx(3 * count.inference_flops_per_byte)


def test_tokenized_formula_by_hand():
    # 2 layers, width 64, 4 heads, SwiGLU 128, 100 tokens of context at 2 bytes per token, vocabulary 1000
    config = TransformerConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=128)
    count = tokenized_flops_per_byte(config, 1000, context_bytes=200, bytes_per_token=2)
    per_token = 2 * (8 * 64 * 64 + 6 * 64 * 128 + 4 * 64 * 50.5) + 2 * 64 * 1000
    assert count.inference_flops_per_byte == pytest.approx(per_token / 2)


def test_grouped_query_attention_shrinks_only_k_and_v():
    full = layer_flops(TransformerConfig(dim=64, n_layers=1, n_heads=8), 10)
    gqa = layer_flops(TransformerConfig(dim=64, n_layers=1, n_heads=8, n_kv_heads=2), 10)
    assert full["qkvo"] - gqa["qkvo"] == 2 * 2 * 64 * (64 - 16)
    assert full["attention"] == gqa["attention"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), window=st.one_of(st.none(), st.integers(1, 400)))
def test_attended_context_is_the_mean_number_of_visible_keys(n, window):
    visible = [t + 1 if window is None else min(t + 1, window) for t in range(n)]
    assert attended_context(n, window) == pytest.approx(sum(visible) / n)


def test_blt_global_cost_falls_with_patch_size_and_locals_do_not():
    config = BLTConfig()
    small, large = blt_flops_per_byte(config, 2.0), blt_flops_per_byte(config, 8.0)
    for part in ("global.qkvo", "global.ffn"):
        assert small.parts[part] == pytest.approx(4 * large.parts[part])
    for part in ("encoder.qkvo", "encoder.ffn", "decoder.qkvo", "decoder.ffn", "decoder.output"):
        assert small.parts[part] == large.parts[part]
    assert large.inference_flops_per_byte < small.inference_flops_per_byte


def test_blt_default_patch_size_comes_from_the_config():
    config = BLTConfig(patching=PatchingConfig(patch_size=6))
    assert blt_flops_per_byte(config).parts == blt_flops_per_byte(config, 6).parts


def test_global_input_projection_only_when_widths_differ():
    same = BLTConfig()  # encoder 128 x k 2 == global 256
    assert "global.input_proj" not in blt_flops_per_byte(same, 4).parts
    wide = BLTConfig(global_transformer=TransformerConfig(dim=384, n_layers=1, n_heads=4))
    assert blt_flops_per_byte(wide, 4).parts["global.input_proj"] == 2 * 256 * 384 / 4


@pytest.mark.parametrize("bad", [0, -1, 0.5, float("nan"), float("inf")])
def test_bad_patch_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="patch size"):
        blt_flops_per_byte(BLTConfig(), bad)


@pytest.mark.parametrize(
    "kwargs, name", [({"bytes_per_token": 0}, "bytes_per_token"), ({"context_bytes": -5}, "context_bytes")]
)
def test_bad_tokenized_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tokenized_flops_per_byte(TransformerConfig(), 100, **kwargs)


def test_tokenized_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        tokenized_flops_per_byte(TransformerConfig())


# ----------------------------------------------------------------------------------------------------------
# agreement with torch's FlopCounterMode on real forward passes
#
# FlopCounterMode counts matrix products at 2 FLOPs per multiply-accumulate, like the calculator, and nothing
# else (norms, rotary, softmax are free on both sides). It has no formula for the CPU SDPA kernel, so the
# tests register torch's own SDPA formula for it. Attention differs in one documented way: the paper (and the
# calculator) count the keys a query actually attends to ((T + 1) / 2 on average under a causal mask, fewer
# with a window, the p bytes of its patch in the cross-attentions), while SDPA and the reference
# cross-attention compute every (query, key) score and mask afterwards. The tests therefore swap the
# calculator's attention terms for the dense count of what was computed; the other terms stay as they are.


def _measure(module, *args) -> float:
    sdpa = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(
            q, k, v
        )
    }
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        module(*args)
    return float(counter.get_total_flops())


def _dense_attention(config: TransformerConfig, n_queries: int, n_keys: int) -> float:
    return config.n_layers * 2 * 2 * config.n_heads * config.head_dim * n_queries * n_keys


def _without_attention(parts: dict[str, float]) -> float:
    return sum(v for k, v in parts.items() if not k.endswith("attention"))


def test_sdpa_mapping_counts_attention():
    q = torch.randn(1, 2, 8, 4)
    assert _measure(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 2 * 2 * 2 * 8 * 8 * 4


@pytest.mark.parametrize("window", [None, 16])
def test_byte_lm_agrees_with_flop_counter(window):
    torch.manual_seed(0)
    config = EntropyModelConfig(dim=64, n_layers=2, n_heads=4, window=window, max_seq_len=64)
    model = CausalLM(config, config.vocab_size).eval()
    T = 48
    measured = _measure(model, torch.randint(4, 260, (1, T)))
    count = entropy_flops_per_byte(config, context_bytes=T)
    expected = _without_attention(count.parts) * T + _dense_attention(config, T, T)
    assert measured == pytest.approx(expected, rel=0.10)
    # what the calculator does count: keys actually visible, averaged over positions
    visible = sum(t + 1 if window is None else min(t + 1, window) for t in range(T))
    assert count.parts["attention"] * T == pytest.approx(config.n_layers * 4 * config.dim * visible)


def test_entropy_model_agrees_with_flop_counter():
    torch.manual_seed(0)
    config = EntropyModelConfig(dim=32, n_layers=1, n_heads=2, window=8, max_seq_len=64)
    model = EntropyModel(config).eval()
    T = 40
    measured = _measure(model, torch.randint(4, 260, (1, T)))
    count = entropy_flops_per_byte(config, context_bytes=T)
    assert measured == pytest.approx(
        _without_attention(count.parts) * T + _dense_attention(config, T, T), rel=0.10
    )


def test_baseline_agrees_with_flop_counter(tiny_tokenizer):
    from blt.baseline import BaselineLM
    from blt.config import BaselineConfig

    torch.manual_seed(0)
    model = BaselineLM(BaselineConfig(dim=32, n_layers=2, n_heads=2, vocab_size=300), tiny_tokenizer).eval()
    text = b"the quick brown fox jumps over the lazy dog; " * 4
    ids = torch.tensor([model.encode(text)])
    T = ids.shape[1]
    bytes_per_token = len(text) / T
    measured = _measure(model, ids)
    count = tokenized_flops_per_byte(model.config, context_bytes=len(text), bytes_per_token=bytes_per_token)
    per_text = _without_attention(count.parts) * len(text) + _dense_attention(model.config, T, T)
    assert measured == pytest.approx(per_text, rel=0.10)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from blt.baseline import BPETokenizer

    text = (
        "the quick brown fox jumps over the lazy dog\n" * 50
        + "pack my box with five dozen liquor jugs\n" * 50
    )
    return BPETokenizer.train([text], vocab_size=300)


@pytest.mark.parametrize("decoder_all_layers", [True, False])
def test_blt_agrees_with_flop_counter(decoder_all_layers):
    torch.manual_seed(0)
    k = 2
    local = {"dim": 32, "n_heads": 2, "window": 16, "max_seq_len": 128}
    config = blt_config(
        cross_attn_k=k,
        encoder={**local, "n_layers": 1, "hash_ngram_sizes": [3, 4], "hash_vocab": 97},
        global_transformer={"dim": 96, "n_layers": 2, "n_heads": 4, "max_seq_len": 64},
        decoder={**local, "n_layers": 2, "cross_attn_all_layers": decoder_all_layers},
    )
    model = BLT(config).eval()
    T, P = 64, 16  # 16 patches of 4 bytes
    ids = torch.randint(4, 260, (1, T))
    measured = _measure(lambda: model(ids, patch_lengths=torch.full((1, P), T // P)))
    count = blt_flops_per_byte(config, mean_patch_size=T / P, context_bytes=T)
    enc, glob, dec = config.encoder, config.global_transformer, config.decoder
    n_dec_cross = dec.n_layers if decoder_all_layers else 1
    dense = (
        _dense_attention(enc, T, T)
        + _dense_attention(glob, P, P)
        + _dense_attention(dec, T, T)
        # the reference cross-attentions score every patch row against every byte, then mask
        + 2 * 2 * enc.dim * (P * k) * T
        + n_dec_cross * 2 * 2 * dec.dim * T * (P * k)
    )
    assert measured == pytest.approx(_without_attention(count.parts) * T + dense, rel=0.10)


# ----------------------------------------------------------------------------------------------------------
# configs and the command line


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_model_section_loads(path, capsys):
    assert flops_main(["--config", str(path), "--json"]) == 0, capsys.readouterr().err
    sections = yaml.safe_load(path.read_text())
    expected = {name for name in ("blt", "entropy", "baseline") if name in sections}
    assert set(json.loads(capsys.readouterr().out)["models"]) == expected


def test_paper_scale_entropy_model_shape():
    args = cli.parse(build_parser(), ["--config", str(CONFIGS / "entropy-100m.yaml")])
    entropy = cli.section(args, "entropy", EntropyModelConfig)
    assert (entropy.n_layers, entropy.dim, entropy.n_heads, entropy.window) == (14, 768, 12, 512)
    params = entropy.n_layers * (4 * 768 * 768 + 3 * 768 * entropy.hidden_dim) + 2 * 260 * 768
    assert 80e6 < params < 120e6


def test_cli_arch_json(capsys):
    args = "--arch bpe --layers 24 --dim 1280 --vocab 32000 --context_bytes 8192 --bytes_per_token 3.7 --json"
    assert flops_main(args.split()) == 0
    report = json.loads(capsys.readouterr().out)
    assert f"{report['inference_flops_per_byte']:.1e}" == "3.1e+08"
    assert report["training_flops_per_byte"] == pytest.approx(3 * report["inference_flops_per_byte"])


def test_cli_config_reports_every_model_section(capsys):
    assert flops_main(["--config", str(CONFIGS / "blt-400m.yaml"), "--patch_size", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["models"]) == {"blt", "entropy", "baseline"}
    assert report["models"]["blt"]["mean_patch_size"] == 6
    assert report["inference_flops_per_byte"] == report["models"]["blt"]["inference_flops_per_byte"]
    assert f"{report['models']['baseline']['inference_flops_per_byte']:.1e}" == "3.1e+08"


def test_cli_reports_a_bundled_entropy_model(tmp_path, capsys):
    path = tmp_path / "bundled.yaml"
    path.write_text("blt:\n  entropy_model: {dim: 32, n_layers: 1, n_heads: 2}\n")
    assert flops_main(["--config", str(path), "--context_bytes", "512", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = entropy_flops_per_byte(EntropyModelConfig(dim=32, n_layers=1, n_heads=2), context_bytes=512)
    assert report["models"]["entropy"]["inference_flops_per_byte"] == expected.inference_flops_per_byte


def test_cli_sections_from_flags_override_the_config(capsys):
    def blt_flops(*argv):
        assert flops_main(["--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)["models"]

    tiny = ["--config", str(CONFIGS / "tiny.yaml")]
    base = blt_flops(*tiny)["blt"]["parts"]
    deeper = blt_flops(*tiny, "--blt.global_transformer.n_layers", "4")["blt"]["parts"]
    assert deeper["global.ffn"] == 2 * base["global.ffn"]  # tiny.yaml's global model has 2 layers
    assert deeper["encoder.ffn"] == base["encoder.ffn"]
    # flags alone make a section: the default BLT with one field changed, and nothing else reported
    (name,) = blt_flops("--blt.cross_attn_k", "4")
    assert name == "blt"


def test_cli_text_output(capsys):
    assert flops_main(["--config", str(CONFIGS / "entropy-100m.yaml")]) == 0
    out = capsys.readouterr().out
    assert "entropy" in out and "inference FLOPs/byte" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "CONFIG", "--patch_size", "0"], "--patch_size must be > 0"),
        (["--config", "CONFIG", "--patch_size", "-2"], "--patch_size must be > 0"),
        (["--config", "CONFIG", "--patch-size", "6"], "unrecognized arguments: --patch-size"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--arch", "bpe", "--layers", "2"], "--dim, --vocab"),
        (
            ["--arch", "bpe", "--layers", "2", "--dim", "64", "--vocab", "100", "--bytes_per_token", "0"],
            "bytes_per_token",
        ),
        (["--arch", "gpt"], "arch"),
        (["--arch", "bpe", "--config", "CONFIG"], "--arch bpe takes no model sections, got blt"),
        (
            ["--arch", "bpe", "--layers", "2", "--dim", "64", "--vocab", "9", "--patch_size", "4"],
            "not to --arch",
        ),
        ([], "none of the model sections"),
        (["--config", "EMPTY"], "none of the model sections"),
        (["--config", "BADKEY"], "encoder.widht"),
        (["--config", "CONFIG", "--blt.encoder.widht", "3"], "--blt.encoder.widht"),
        (["--config", "CONFIG", "--blt.encoder.dim", "wide"], "blt.encoder.dim"),
    ],
)
def test_cli_bad_input(args, message, tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("data: {}\n")
    (tmp_path / "badkey.yaml").write_text("blt:\n  encoder:\n    widht: 3\n")
    paths = {
        "CONFIG": str(CONFIGS / "blt-1b.yaml"),
        "EMPTY": str(tmp_path / "empty.yaml"),
        "BADKEY": str(tmp_path / "badkey.yaml"),
    }
    assert flops_main([paths.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blt-flops: error: ") and message in err


# ----------------------------------------------------------------------------------------------------------
# the 6N figure (torchtitan's convention)


def tiny_lm_config(window=None) -> EntropyModelConfig:
    return EntropyModelConfig(dim=16, n_layers=2, n_heads=2, ffn_dim=32, window=window)


def test_six_n_of_a_tiny_lm_by_hand():
    # per layer: 2 norms (2 x 16), q/k/v/o (4 x 16 x 16), SwiGLU (3 x 16 x 32); final norm; head 16 x 260;
    # the 260 x 16 byte embedding is a lookup and does not count
    n = 2 * (2 * 16 + 4 * 16 * 16 + 3 * 16 * 32) + 16 + 16 * 260
    assert n == 9360
    assert non_embedding_params(EntropyModel(tiny_lm_config())) == n
    assert six_n_flops_per_byte(tiny_lm_config(), n, context=100) == 6 * n + 12 * 2 * 16 * 100
    assert six_n_flops_per_byte(tiny_lm_config(window=40), n, context=100) == 6 * n + 12 * 2 * 16 * 40
    per_token = six_n_flops_per_token(n, n_layers=2, dim=16, context=100)
    assert six_n_flops_per_byte(tiny_lm_config(), n, 100, bytes_per_token=2.5) == per_token / 2.5


def test_six_n_linear_part_is_three_times_the_papers_products():
    config = tiny_lm_config()
    paper = tokenized_flops_per_byte(config, 260, context_bytes=100, bytes_per_token=1)
    linear = paper.parts["qkvo"] + paper.parts["ffn"] + paper.parts["output"]
    norms = (2 * config.n_layers + 1) * config.dim
    n = non_embedding_params(EntropyModel(config))
    six_n = six_n_flops_per_byte(config, n, context=100)
    assert six_n - 12 * 2 * 16 * 100 == pytest.approx(3 * linear + 6 * norms)
    # the attention term counts all 100 keys, the paper the (100 + 1) / 2 a causal query sees
    assert 12 * 2 * 16 * 100 / (3 * paper.parts["attention"]) == pytest.approx(100 / 50.5)


def test_six_n_of_a_tiny_blt_by_hand():
    layer = {"dim": 16, "n_heads": 2, "ffn_dim": 32, "window": 8, "max_seq_len": 64}
    config = blt_config(
        cross_attn_k=2,
        encoder=dict(n_layers=1, hash_ngram_sizes=[3], hash_vocab=11, **layer),
        global_transformer=dict(dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=64),
        decoder=dict(n_layers=1, cross_attn_all_layers=True, **layer),
    )
    block = 2 * 16 + 4 * 16 * 16 + 3 * 16 * 32
    cross = 2 * 16 + 4 * 16 * 16
    encoder = block + 16 * 32 + cross  # + the pooled patch's projection to k rows; tables are lookups
    decoder = 32 * 32 + cross + block + 16 + 16 * 260  # + global state -> k rows, final norm, head
    global_ = 2 * 32 + 4 * 32 * 32 + 3 * 32 * 64  # 2 x 16 encoder rows = 32: no input projection
    model = BLT(config)
    assert blt_params(model) == (encoder + decoder, global_)
    # 64 bytes of context in patches of 4: local layers see their 8-byte window, the global 16 patches
    expected = 6 * (encoder + decoder) + 12 * (16 * 8 + 16 * 8) + (6 * global_ + 12 * 32 * 16) / 4
    assert blt_six_n_flops_per_byte(config, encoder + decoder, global_, 4, 64) == expected == 98112
    with pytest.raises(ValueError, match="at least 1 byte"):
        blt_six_n_flops_per_byte(config, encoder + decoder, global_, 0.5, 64)


def test_non_embedding_params_counts_a_tied_head_once_and_skips_frozen_weights():
    lm = CausalLM(tiny_lm_config(), vocab_size=260)
    untied = non_embedding_params(lm)
    lm.lm_head.weight = lm.embed_tokens.weight  # tied: the head's product still runs
    assert non_embedding_params(lm) == untied
    lm.norm.weight.requires_grad_(False)
    assert non_embedding_params(lm) == untied - 16
