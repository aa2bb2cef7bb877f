"""bench/study_shapes.py's analytic facts about its configured shapes (no training, no corpus)."""

import math

import pytest
from test_train_study import REPO, load_bench

from blt.training.cli import load_config


@pytest.fixture(scope="module")
def study():
    return load_bench("study_shapes")


@pytest.fixture(scope="module")
def config():
    return load_config(["--config", str(REPO / "configs" / "tiny.yaml")])


def test_the_dominant_shape_is_global_dominated_at_patch_sizes_6_to_8(study, config):
    dominant = next(s for s in study.SHAPES if s.name == study.DOMINANT)
    for p in (6.0, 7.0, 8.0):
        f = study.shape_flops(config, dominant, p, study.BYTES_PER_TOKEN, 8192)
        assert f.ratio >= 4, (p, f.ratio)
        assert f.global_flops + f.local_flops == pytest.approx(f.blt_flops)
    # the series starts below 1 (local models dominate) and grows with the global width
    ratios = [study.shape_flops(config, s, 6.0, study.BYTES_PER_TOKEN, 8192).ratio for s in study.SHAPES]
    assert ratios[0] < 0.5 and ratios == sorted(ratios)


def test_the_shapes_span_the_crossover_without_output_heads(study, config):
    # with both models' output projections left out, the smallest shape's BLT costs more per byte than its
    # baseline and the dominant one's less, at both analytic patch sizes
    for p in study.ANALYTIC_PATCH_SIZES:
        savings = [
            study.shape_flops(config, s, p, study.BYTES_PER_TOKEN, 8192).body_saving for s in study.SHAPES
        ]
        assert savings[0] < 1 < savings[-1], (p, savings)
        width, ratio = study.sweep_crossover(config, 2, p, study.BYTES_PER_TOKEN, 8192, heads=False)
        assert study.SHAPES[0].dim < width < study.SHAPES[-1].dim and 0 < ratio < 4


def test_baseline_shape_and_bytes_per_token_are_study_parameters(study, config):
    assert 3.5 <= study.BYTES_PER_TOKEN <= 4.5
    args, _ = study.parse_args(["--flops-only"])
    assert args.bytes_per_token == study.BYTES_PER_TOKEN
    assert study.parse_args(["--bytes-per-token", "3.7"])[0].bytes_per_token == 3.7
    shape = study.SHAPES[-1]
    cfg = study.shaped(config, shape, 8192)
    glob, base = cfg.blt.global_transformer, cfg.baseline
    assert (base.dim, base.n_layers, base.n_heads, base.vocab_size) == (
        glob.dim,
        glob.n_layers,
        glob.n_heads,
        8192,
    )
    # the baseline's FLOPs per byte are per token (a context of data.seq_len tokens) over bytes per token
    f4 = study.shape_flops(config, shape, 6.0, 4.0, 8192).baseline_flops
    f2 = study.shape_flops(config, shape, 6.0, 2.0, 8192).baseline_flops
    assert f2 == pytest.approx(2 * f4)


def test_crossover_interpolates_in_log_log(study):
    assert study.crossover([(1.0, 0.5), (4.0, 2.0)]) == pytest.approx(2.0)
    assert study.crossover([(4.0, 2.0), (1.0, 0.5)]) == pytest.approx(2.0)  # order does not matter
    assert study.crossover([(1.0, 0.5), (4.0, 0.9)]) is None
    assert study.crossover([(1.0, 1.0), (4.0, 2.0)]) == 1.0
    assert math.isclose(study.crossover([(1, 0.25), (2, 0.5), (8, 2.0)]), 4.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--flops-only", "--quick"], "not allowed with"),
        (["--patch-size", "0.5"], "--patch-size must be >= 1"),
        (["--vocab", "200"], "--vocab must exceed 260"),
        (["--budget", "0"], "--budget must be > 0"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(study, argv, message, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(argv)
    assert message in capsys.readouterr().err


def test_each_pair_gets_the_budget_in_batches_of_the_same_bytes(study, config):
    from blt.config import PatchingConfig

    args, _ = study.parse_args(["--budget", "1e12"])
    patching = PatchingConfig(scheme="static", patch_size=6)
    shape = next(s for s in study.SHAPES if s.name == study.DOMINANT)
    (blt_name, blt_cmd, blt_steps, blt_flags), (bpe_name, bpe_cmd, bpe_steps, bpe_flags) = study.pair_runs(
        shape, config, 8192, patching, 6.0, REPO / "entropy", args
    )
    assert (blt_name, blt_cmd, bpe_name, bpe_cmd) == ("blt-g512x2", "blt", "bpe-g512x2", "baseline")
    cfg = study.shaped(config, shape, 8192)
    # 16 windows of 256 bytes against 4 windows of 256 tokens of about 4 bytes
    assert bpe_flags[bpe_flags.index("--data.batch_size") + 1] == "4"
    assert blt_flags[blt_flags.index("--blt.global_transformer.dim") + 1] == "512"
    blt_step = study.blt_step_flops(cfg, patching, 6.0)
    f = study.shape_flops(config, shape, 6.0, 4.0, 8192)
    assert blt_step == pytest.approx(3 * f.blt_flops * 16 * 256)
    assert blt_steps == round(1e12 / blt_step) and bpe_steps < blt_steps  # the baseline costs more per byte


def test_pair_table_reads_the_crossover_off_the_trained_pairs(study, config):
    def row(name, bpb, flops, unit):
        return {
            "name": name,
            "bpb": bpb,
            "stderr": 0.01,
            "inference_flops_per_byte": flops,
            "unit_size": unit,
        }

    rows = [
        row("blt-g64x2", 1.9, 3.6e5, 6.0),
        row("bpe-g64x2", 1.8, 3.3e5, 4.0),
        row("blt-g512x2", 2.1, 2.4e6, 6.0),
        row("bpe-g512x2", 1.9, 5.3e6, 4.0),
    ]
    table = study.pair_table(rows, config, 8192)
    assert "| g64x2 | 0.11 | 1.9000 ± 0.0100 | 1.8000 ± 0.0100 | +0.1000 |" in table
    assert "fall below the baseline's from global : local" in table and "= +0.2000" in table
    assert "cheaper at every trained shape" in study.pair_table(rows[2:], config, 8192)
