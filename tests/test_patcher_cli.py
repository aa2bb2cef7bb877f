"""The blt-patch command line: statistics, HTML and PNG pictures, clear errors."""

import pytest
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
    # a non-printable code point above 0xff is written as Python writes it (was "\x200b")
    assert byte_labels("\u200b\U000e0001".encode()) == ["\\u200b", "", "", "\\U000e0001", "", "", ""]


def test_review_fixes(tmp_path, capsys):
    # a picture into a missing directory fails up front with a message, not a traceback after the work
    assert main(["--text", "abc", "--scheme", "byte", "--html", str(tmp_path / "no" / "p.html")]) == 2
    assert "--html: directory" in capsys.readouterr().err
    assert main(["--text", "abc", "--scheme", "byte", "--png", str(tmp_path / "no" / "p.png")]) == 2
    assert "--png: directory" in capsys.readouterr().err
    assert main(["--text", "abc", "--scheme", "byte", "--html", str(tmp_path)]) == 2  # a directory, not a file
    assert "Is a directory" in capsys.readouterr().err
    # a YAML without a `blt` mapping is refused instead of silently using the default BLT
    model = saved_model(tmp_path / "em")
    for text in ("{}\n", "blt: 3\n"):
        (tmp_path / "c.yaml").write_text(text)
        args = ["--text", "abc", "--model", model, "--target-global-share", "0.5", "--config", str(tmp_path / "c.yaml")]
        assert main(args) == 2
        assert "has no `blt` section" in capsys.readouterr().err
    assert main(["--text", "abc", "--scheme", "byte", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "only read with --target-global-share" in capsys.readouterr().err
    assert main(["--text", "abc", "--scheme", "byte", "--chunk-size", "8"]) == 2  # was: silently ignored
    assert "needs --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # abbreviated flags are typos, not options
        main(["--text", "abc", "--schem", "byte"])
    assert "unrecognized arguments: --schem" in capsys.readouterr().err
    # non-UTF-8 bytes reach argv as surrogates (os.fsdecode): patched as the raw bytes
    assert main(["--text", "a\udcffb", "--scheme", "byte"]) == 0
    assert "bytes                       3" in capsys.readouterr().out


def test_html_breaks_lines_on_newline_bytes_only(tmp_path):
    html = tmp_path / "p.html"
    assert main(["--text", "a\u21b5b\nc", "--scheme", "byte", "--html", str(html)]) == 0
    assert html.read_text(encoding="utf-8").count("<br>") == 1


def test_png_title_says_when_the_text_was_cut(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from blt.patcher import picture

    titles = []
    monkeypatch.setattr(picture, "PNG_MAX_BYTES", 30)  # few bytes, few rows: a fast plot
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: titles.append(fig.axes[0].get_title()))
    data = b"ab" * 30
    picture.write_png(tmp_path / "p.png", data, torch.ones(len(data) + 1, dtype=torch.bool), None, None, "t")
    assert titles == ["t (first 30 of 60 bytes)"]
