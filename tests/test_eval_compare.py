"""blt-eval compare on synthetic run directories."""

import json
import math

import pytest

from blt.eval.bpb import BPBResult
from blt.eval.cli import main
from blt.eval.compare import compare_runs, markdown_table, read_run


def make_run(root, name, kind, bpb, inference, training, params, unit=None, patching=None, curve=True):
    run = root / name
    (run / "model").mkdir(parents=True)
    summary = {
        "kind": kind,
        "name": name,
        "params": params,
        "bytes_seen": 1000,
        "training_flops": training,
        "val_bpb": bpb,
        "inference_flops_per_byte": inference,
        "val_curve": [
            {"step": s, "training_flops": training * s / 4, "val_bpb": bpb + (4 - s) * 0.5} for s in (1, 2, 4)
        ]
        if curve
        else [],
    }
    if kind == "blt":
        summary["mean_patch_size"] = unit
    if kind == "baseline":
        summary["bytes_per_token"] = unit
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.csv").write_text(
        "step,training_flops,val_bpb,train_loss\n1,10,5.0,\n2,,,3.0\n3,30,4.0,\n"
    )
    if patching is not None:
        (run / "model" / "config.json").write_text(
            json.dumps({"kind": "blt", "config": {"patching": patching}})
        )
    return run


@pytest.fixture
def runs(tmp_path):
    return [
        make_run(
            tmp_path,
            "blt-h1.25",
            "blt",
            2.10,
            1.0e6,
            5e12,
            123456,
            4.5,
            {"scheme": "entropy", "threshold": 1.25},
        ),
        make_run(
            tmp_path,
            "blt-static4",
            "blt",
            2.30,
            1.5e6,
            5e12,
            123456,
            4.0,
            {"scheme": "static", "patch_size": 4},
        ),
        make_run(tmp_path, "blt-space", "blt", 2.20, 1.2e6, 5e12, 123456, 5.2, {"scheme": "space"}),
        make_run(tmp_path, "bpe", "baseline", 2.00, 2.0e6, 5e12, 200000, 3.2),
    ]


def test_compare_writes_table_json_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    written = compare_runs(runs, out)
    table = written["table"].read_text()
    assert "| blt-h1.25 | blt | entropy 1.25 | 2.1000 | 1e+06 | 5e+12 | 123,456 | 4.50 |" in table
    assert "| blt-static4 | blt | static 4 |" in table and "| blt-space | blt | space |" in table
    assert "| bpe | baseline | BPE | 2.0000 | 2e+06 | 5e+12 | 200,000 | 3.20 |" in table
    # against the baseline: +0.1 bits/byte at half the inference FLOPs
    assert "| blt-h1.25 | +0.1000 | 2.00x | 1.00 |" in table
    rows = json.loads(written["json"].read_text())
    assert [r["name"] for r in rows] == ["blt-h1.25", "blt-static4", "blt-space", "bpe"]
    assert rows[0]["stderr"] is None  # unknown without re-evaluation (JSON has no NaN)
    assert rows[0]["curve"] == [[1.25e12, 3.6], [2.5e12, 3.1], [5e12, 2.1]]
    for key in ("bpb_vs_flops", "val_curves"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert written[key].stat().st_size > 5000


def test_curve_falls_back_to_metrics_csv(tmp_path):
    run = make_run(tmp_path, "r", "baseline", 2.0, 1e6, 1e12, 10, 3.0, curve=False)
    assert read_run(run).curve == [(10.0, 5.0), (30.0, 4.0)]


def test_reevaluation_replaces_summary_numbers(runs, tmp_path):
    def fake_evaluate(run_dir):
        return BPBResult(1.5, 0.01, 3, 300, 450.0, "patch", 6.0, {"inference_flops_per_byte": 7e5})

    written = compare_runs(runs[:1], tmp_path / "out", fake_evaluate)
    assert "| blt-h1.25 | blt | entropy 1.25 | 1.5000 ± 0.0100 | 7e+05 | 5e+12 | 123,456 | 6.00 |" in (
        written["table"].read_text()
    )


def test_table_without_baseline_or_unit(tmp_path):
    run = read_run(make_run(tmp_path, "e", "entropy", 3.0, 1e5, 1e11, 50, curve=False))
    assert run.unit_size == 1.0 and run.patching == "bytes" and math.isnan(run.stderr)
    assert "| e | entropy | bytes | 3.0000 | 1e+05 | 1e+11 | 50 | 1.00 |" in markdown_table([run])


def test_bad_run_directories(tmp_path):
    with pytest.raises(ValueError, match="no summary.json"):
        read_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "blt", "params": 1}))
    with pytest.raises(ValueError, match="lacks the key 'training_flops'"):
        read_run(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run(tmp_path)


def test_compare_cli(runs, tmp_path, capsys):
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| bpe | baseline | BPE |" in out and "comparison.md" in out
    assert (tmp_path / "cli" / "val_curves.png").is_file()


def test_compare_keeps_an_existing_report_unless_told(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder without a report is fine to write into
    argv = ["compare", str(runs[3]), "--out", str(out)]
    assert main(argv) == 0
    (out / "comparison.md").write_text("an earlier report")
    assert main(argv) == 2
    assert "already holds a report (comparison.md, comparison.json" in capsys.readouterr().err
    assert (out / "comparison.md").read_text() == "an earlier report"
    assert main([*argv, "--overwrite"]) == 0
    assert "| bpe | baseline | BPE |" in (out / "comparison.md").read_text()
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "FILE"], "is a file, not a folder"),
        (["--out", "FILE", "--overwrite"], "is a file, not a folder"),
        (["--data.val_fraction", "0.5"], "--data.val_fraction: only read with --data.source"),
        (["--max_documents", "3", "--context", "8"], "--max_documents, --context: only read with --data.source"),
        (["--bogus.key", "1"], "unrecognized arguments: --bogus.key"),
        (["--patching.scheme", "static"], "unrecognized arguments: --patching.scheme"),  # runs keep their own
        (["--max-documents", "3"], "unrecognized arguments: --max-documents"),
    ],
)
def test_compare_cli_errors(extra, message, runs, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    argv = ["compare", str(runs[0]), "--out", str(tmp_path / "x"), *extra]
    assert main([str(tmp_path / "file") if a == "FILE" else a for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "not a folder" and not (tmp_path / "x").exists()


def test_compare_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_summary_with_a_non_numeric_value_is_a_clear_error(tmp_path):
    summary = {
        "kind": "blt",
        "params": 1,
        "training_flops": 1.0,
        "val_bpb": None,
        "inference_flops_per_byte": 1,
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="val_bpb must be a number, got None"):
        read_run(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_run(tmp_path)
