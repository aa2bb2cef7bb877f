"""The blt-patch command line: statistics, HTML and PNG pictures, clear errors."""

import torch

from blt.config import EntropyModelConfig
from blt.patcher import EntropyModel
from blt.patcher.cli import main
from blt.patcher.picture import byte_labels


def saved_model(path):
    torch.manual_seed(0)
    EntropyModel(EntropyModelConfig(dim=32, n_layers=1, n_heads=2, window=16, max_seq_len=64)).save_pretrained(path)
    return str(path)


def test_space_scheme_statistics_and_pictures(tmp_path, capsys):
    html, png = tmp_path / "p.html", tmp_path / "p.png"
    text = "a <b>bold</b> & naïve  test"
    assert main(["--text", text, "--scheme", "space", "--html", str(html), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "bytes                       28" in out
    assert "mean patch length" in out and "patches per KB" in out and "bytes in patches of 1 byte" in out
    page = html.read_text(encoding="utf-8")
    assert "&lt;b&gt;" not in page  # one span per byte: '<' and 'b' are separate spans
    assert ">&lt;</span>" in page and ">&amp;</span>" in page and "<b>" not in page
    assert ">ï</span>" in page
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_entropy_scheme_with_model_file_and_calibration(tmp_path, capsys):
    model = saved_model(tmp_path / "em")
    data = tmp_path / "in.txt"
    data.write_bytes(b"The quick brown fox jumps over the lazy dog.\n" * 6)
    assert main([str(data), "--model", model, "--target-patch-size", "3", "--chunk-size", "50",
                 "--html", str(tmp_path / "p.html")]) == 0
    out = capsys.readouterr().out
    assert "calibrated: threshold = " in out and "target 3.000" in out
    mean = float(next(line for line in out.splitlines() if line.startswith("mean patch length")).split()[-1])
    assert abs(mean - 3) < 0.1
    assert "H = " in (tmp_path / "p.html").read_text(encoding="utf-8")
    config = tmp_path / "blt.yaml"
    config.write_text("blt:\n  patching:\n    patch_size: 4\n")
    assert main([str(data), "--model", model, "--target-global-share", "0.6", "--config", str(config)]) == 0
    assert "calibrated: threshold = " in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    assert main(["--text", "abc"]) == 2
    assert "needs an entropy model: pass --model" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.txt"), "--scheme", "byte"]) == 2
    assert "input file not found" in capsys.readouterr().err
    assert main(["--text", "", "--scheme", "byte"]) == 2
    assert "empty input" in capsys.readouterr().err
    assert main(["--text", "abc", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["--text", "abc", "--model", saved_model(tmp_path / "em"), "--threshold", "nan"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["--text", "abc", "--scheme", "static", "--target-patch-size", "3"]) == 2
    assert "has none" in capsys.readouterr().err
    assert main(["--text", "abc", "--model", str(tmp_path / "em"), "--target-global-share", "0.5"]) == 2
    assert "needs --config" in capsys.readouterr().err


def test_byte_labels_keep_one_label_per_byte():
    assert byte_labels("a\u00e9\n\x00".encode()) == ["a", "\u00e9", "", "\u21b5", "\\x00"]
    assert byte_labels(b"\xff!") == ["\\xff", "!"]
