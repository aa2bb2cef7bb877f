"""Compute per document and the compute dial: blt-eval docs, --target_patch_size / --target_flops_per_byte,
blt-eval sweep, the model's own config left alone, Spearman, rows files, bad input."""

import copy
import csv
import json
import math
import random

import pytest
from tiny_blt import tiny_blt

from blt.checkpoint import load
from blt.eval.bpb import document_scores, scorer_for
from blt.eval.cli import main, patching_override
from blt.eval.dial import calibrate, scored_windows, sweep, sweep_thresholds
from blt.eval.documents import ranks, spearman, write_rows


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny BLT with its entropy model, that entropy model alone, and a BLT without one (static)."""
    root = tmp_path_factory.mktemp("models")
    blt = tiny_blt(seed=0)
    blt.save_pretrained(root / "blt")
    blt.patcher.save_pretrained(root / "entropy")
    tiny_blt(seed=1, entropy=False, scheme="static", patch_size=3).save_pretrained(root / "static")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight documents of 200 to 900 bytes: English-like lines, and lines of digits (harder to predict)."""
    from conftest import _make_text

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("corpus")
    for i in range(8):
        text = _make_text(rng, rng.randint(200, 900))
        if i % 2:
            text = "\n".join(
                " ".join(str(rng.randint(0, 10**6)) for _ in range(8)) for _ in range(len(text) // 50)
            )
        (root / f"doc{i}.txt").write_text(text)
    return root


def run(capsys, *argv) -> dict:
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def error(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blt-eval: error: ") and err.count("\n") == 1, err
    return err


def data(corpus):
    return ["--data.source", corpus, "--split", "all", "--context", "256"]


# ----------------------------------------------------------------------------------------------------------
# per document


def test_docs_rows_add_up_to_the_corpus_result(models, corpus, tmp_path, capsys):
    out, png = tmp_path / "rows.csv", tmp_path / "plot.png"
    checkpoints = [models / "blt", models / "entropy"]
    report = run(capsys, "docs", *checkpoints, *data(corpus), "--out", out, "--png", png, "--json")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["model"] for r in rows} == {"blt", "entropy"}
    for name, unit in (("blt", "patch"), ("entropy", "byte")):
        mine = [r for r in rows if r["model"] == name]
        expected = run(capsys, "bpb", "--checkpoint", models / name, *data(corpus), "--json")
        n_bytes = sum(int(r["bytes"]) for r in mine)
        assert n_bytes == expected["n_bytes"] and {r["unit"] for r in mine} == {unit}
        assert sum(float(r["bits"]) for r in mine) == pytest.approx(expected["bits"], rel=1e-9)
        spent = sum(float(r["flops_per_byte"]) * int(r["bytes"]) for r in mine) / n_bytes
        assert spent == pytest.approx(expected["flops"]["spent_flops_per_byte"], rel=1e-9)
        assert report["models"][name]["flops"] == expected["flops"]
        rho = spearman([float(r["flops_per_byte"]) for r in mine], [float(r["bits_per_byte"]) for r in mine])
        assert report["models"][name]["spearman"] == pytest.approx(rho)
    blt_rows = [r for r in rows if r["model"] == "blt"]
    assert all(float(r["entropy_flops_per_byte"]) > 0 for r in blt_rows)
    assert all(int(r["units"]) < int(r["bytes"]) for r in blt_rows)  # patches, not bytes
    # the summary names each model and its correlation; files that exist are kept without --overwrite
    assert "--out" in error(capsys, "docs", models / "blt", *data(corpus), "--out", out)
    assert main(["docs", str(models / "blt"), *map(str, data(corpus)), "--out", str(out), "--overwrite"]) == 0
    assert "Spearman(FLOPs/byte, bits/byte) = " in capsys.readouterr().out


def test_docs_jsonl_rows(models, corpus, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["docs", str(models / "entropy"), *map(str, data(corpus)), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["document"] for r in rows] == list(range(8))
    assert all(r["units"] == r["bytes"] and r["global_flops_per_byte"] == 0 for r in rows)


def test_spearman_by_hand():
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1, 2, 3, 4] and [1, 3, 2, 4]: 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5])) and math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1])


def test_rows_file_suffix_is_checked(tmp_path):
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        write_rows([{"a": 1}], tmp_path / "rows.txt")


# ----------------------------------------------------------------------------------------------------------
# the compute dial


def test_target_patch_size_is_met_on_the_input(models, corpus, capsys):
    result = run(
        capsys, "bpb", "--checkpoint", models / "blt", *data(corpus), "--target_patch_size", "3", "--json"
    )
    calibration = result["calibration"]
    assert calibration["target"] == "mean patch size 3" and calibration["scheme"] == "entropy"
    assert calibration["mean_patch_size"] == pytest.approx(3.0, rel=0.02)
    assert result["bytes_per_unit"] == pytest.approx(3.0, rel=0.05)  # scored bytes per patch, BOS aside
    # the calibrated threshold given by hand scores the same
    by_hand = run(
        capsys, "bpb", "--checkpoint", models / "blt", *data(corpus), "--patching.threshold",
        repr(calibration["threshold"]), "--json",
    )  # fmt: skip
    assert by_hand["bits"] == result["bits"] and by_hand["bytes_per_unit"] == result["bytes_per_unit"]


def test_target_flops_per_byte_is_met_as_counted(models, corpus, capsys):
    argv = ["bpb", "--checkpoint", models / "blt", *data(corpus), "--json"]
    own = run(capsys, *argv)["flops"]["spent_flops_per_byte"]
    result = run(capsys, *argv, "--target_flops_per_byte", repr(0.8 * own))
    assert result["flops"]["spent_flops_per_byte"] == pytest.approx(0.8 * own, rel=0.01)
    # calibrated on the very windows that are scored: what it promised is what was spent
    assert result["calibration"]["flops_per_byte"] == pytest.approx(result["flops"]["spent_flops_per_byte"])


def test_unreachable_targets_name_the_closest_value(models, corpus, capsys):
    err = error(capsys, "bpb", "--checkpoint", models / "blt", *data(corpus), "--target_patch_size", "5000")
    assert "--target_patch_size 5000 is out of reach on this input" in err and "closest reachable: " in err
    closest = float(err.split("closest reachable: ")[1].rstrip(")\n"))
    loaded = load(models / "blt")
    scorer = scorer_for(loaded, 256)
    documents = [p.read_bytes() for p in sorted(corpus.iterdir())]
    wins = scored_windows(scorer, documents, None, 8)
    longest = calibrate(scorer, wins, target_patch_size=closest)
    assert longest.mean_patch_size == pytest.approx(closest, rel=1e-3)
    err = error(capsys, "bpb", "--checkpoint", models / "blt", *data(corpus), "--target_flops_per_byte", "10")
    assert "--target_flops_per_byte 10 is out of reach" in err and "closest reachable: " in err


def test_sweep_trades_bits_for_flops(models, corpus, tmp_path, capsys):
    loaded = load(models / "blt")
    own = loaded.model.config.patching.threshold
    out, png = tmp_path / "sweep.jsonl", tmp_path / "sweep.png"
    argv = ["sweep", "--checkpoint", models / "blt", *data(corpus), "--out", out, "--png", png]
    report = run(capsys, *argv, "--thresholds", f"[{own - 0.2},{own},{own + 0.2}]", "--json")
    points = report["points"]
    assert [p["threshold"] for p in points] == [own - 0.2, own, own + 0.2]
    flops = [p["flops_per_byte"] for p in points]
    sizes = [p["mean_patch_size"] for p in points]
    assert flops[0] > flops[1] > flops[2] and sizes[0] < sizes[1] < sizes[2]  # the dial turns
    assert len({p["entropy_flops_per_byte"] for p in points}) == 1  # the entropy model costs the same
    # the model's own threshold scores as the model does without any override
    plain = run(capsys, "bpb", "--checkpoint", models / "blt", *data(corpus), "--json")
    assert points[1]["bits_per_byte"] == pytest.approx(plain["bits_per_byte"], rel=1e-12)
    assert points[1]["flops_per_byte"] == pytest.approx(plain["flops"]["spent_flops_per_byte"], rel=1e-12)
    assert [json.loads(line) for line in out.read_text().splitlines()] == points
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_thresholds_from_patch_sizes(models, corpus, capsys):
    report = run(
        capsys, "sweep", "--checkpoint", models / "blt", *data(corpus), "--patch_sizes", "[2,4]", "--json"
    )
    sizes = [p["mean_patch_size"] for p in report["points"]]
    assert sizes == pytest.approx([2, 4], rel=0.06)
    assert (
        main(["sweep", "--checkpoint", str(models / "blt"), *map(str, data(corpus)), "--patch_sizes", "[3]"])
        == 0
    )
    assert "bytes/patch" in capsys.readouterr().out


def test_overrides_leave_the_model_config_untouched(models, corpus, capsys):
    saved = (models / "blt" / "config.json").read_bytes()
    for extra in (
        ["--patching.threshold", "0.5", "--patching.max_patch_length", "3"],
        ["--target_patch_size", "4"],
        ["--patching.scheme", "static", "--patching.patch_size", "2"],
    ):
        run(capsys, "bpb", "--checkpoint", models / "blt", *data(corpus), *extra, "--json")
    run(capsys, "sweep", "--checkpoint", models / "blt", *data(corpus), "--thresholds", "[1.0]", "--json")
    assert (models / "blt" / "config.json").read_bytes() == saved
    # in memory too: overriding, calibrating and sweeping hand new patchings to scorers
    loaded = load(models / "blt")
    before = copy.deepcopy(loaded.model.config)
    scorer = scorer_for(loaded, 256, patching_override(loaded, {"max_patch_length": 5}))
    documents = [p.read_bytes() for p in sorted(corpus.iterdir())]
    wins = scored_windows(scorer, documents, None, 8)
    calibrate(scorer, wins, target_patch_size=2.5)
    sweep(scorer, documents[:2], sweep_thresholds(scorer, wins, [2.0]))
    document_scores(scorer, documents[:2], flops=True)
    assert loaded.model.config == before and scorer.patching.max_patch_length == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bpb", "BLT", "--patching.threshold", ".nan"], "patching.threshold must be a number, got NaN"),
        (["bpb", "BLT", "--patching.threshold", "nan"], "patching.threshold: expected float"),  # YAML: .nan
        (["bpb", "BLT", "--patching.threshold", "-1"], "--patching.threshold must be >= 0"),
        (["bpb", "STATIC", "--patching.scheme", "entropy"], "has no entropy model to patch with"),
        (["bpb", "STATIC", "--target_patch_size", "4"], "the patching scheme is 'static'"),
        (
            ["bpb", "STATIC", "--patching.scheme", "entropy", "--target_patch_size", "4"],
            "has no entropy model to patch with",
        ),
        (["bpb", "ENTROPY", "--target_patch_size", "4"], "BLT checkpoints only, not to kind 'blt-entropy'"),
        (["bpb", "BLT", "--target_patch_size", "0.5"], "--target_patch_size must be a finite number >= 1"),
        (["bpb", "BLT", "--target_patch_size", ".nan"], "--target_patch_size must be a finite number >= 1"),
        (
            ["bpb", "BLT", "--target_flops_per_byte", "-3"],
            "--target_flops_per_byte must be a finite number > 0",
        ),
        (
            ["bpb", "BLT", "--target_flops_per_byte", ".inf"],
            "--target_flops_per_byte must be a finite number > 0",
        ),
        (["bpb", "BLT", "--target_patch_size", "3", "--target_flops_per_byte", "1e5"], "not both"),
        (
            ["bpb", "BLT", "--target_patch_size", "3", "--patching.threshold", "1"],
            "drop --patching.threshold",
        ),
        (["sweep", "BLT", "--thresholds", "[1.0,.nan]"], "--thresholds: nan is no threshold"),
        (["sweep", "BLT", "--thresholds", "[-0.5]"], "--thresholds: -0.5 is no threshold"),
        (["sweep", "BLT", "--thresholds", "[]"], "--thresholds is empty"),
        (["sweep", "BLT", "--thresholds", "[1]", "--patch_sizes", "[2]"], "not both"),
        (["sweep", "BLT", "--patch_sizes", "[5000]"], "--patch_sizes 5000 is out of reach"),
        (["sweep", "BLT", "--patch_sizes", "[0]"], "--patch_sizes: 0 is no mean patch size"),
        (["sweep", "ENTROPY"], "BLT checkpoints only"),
        (["sweep", "STATIC"], "the patching scheme is 'static'"),
        (["sweep", "BLT", "--patching.scheme", "space"], "the patching scheme is 'space'"),
        (["sweep", "BLT", "--png", "plot.jpg"], "--png plot.jpg: the file name must end in .png"),
        (["sweep", "BLT", "--out", "rows.txt"], "must end in .csv or .jsonl"),
    ],
)
def test_bad_dial_input(argv, message, models, corpus, capsys):
    paths = {"BLT": models / "blt", "STATIC": models / "static", "ENTROPY": models / "entropy"}
    command, checkpoint, *rest = argv
    assert message in error(capsys, command, "--checkpoint", paths[checkpoint], *data(corpus), *rest)


def test_bad_docs_input(models, corpus, tmp_path, capsys):
    assert "must end in .csv or .jsonl" in error(capsys, "docs", models / "blt", "--out", tmp_path / "r.tsv")
    (tmp_path / "plot.png").write_bytes(b"mine")
    err = error(capsys, "docs", models / "blt", *data(corpus), "--png", tmp_path / "plot.png")
    assert "already exists: pass --overwrite" in err and (tmp_path / "plot.png").read_bytes() == b"mine"
    (tmp_path / "rows.csv").mkdir()
    assert "is a folder" in error(
        capsys, "docs", models / "blt", "--out", tmp_path / "rows.csv", "--overwrite"
    )
    assert "checkpoint path does not exist" in error(capsys, "docs", tmp_path / "nope", *data(corpus))
