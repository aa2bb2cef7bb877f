"""The blt-patch command line: statistics, HTML and PNG pictures, clear errors."""

from pathlib import Path

import pytest
import torch

from blt.config import EntropyModelConfig
from blt.patcher import EntropyModel
from blt.patcher.cli import main
from blt.patcher.picture import byte_labels

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def saved_model(path):
    torch.manual_seed(0)
    EntropyModel(EntropyModelConfig(dim=32, n_layers=1, n_heads=2, window=16, max_seq_len=64)).save_pretrained(path)
    return str(path)


def error(capsys, argv):
    """The one-line message of a command line that fails with exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("blt-patch: error: ") and err.count("\n") == 1
    return err


def test_space_scheme_statistics_and_pictures(tmp_path, capsys):
    html, png = tmp_path / "p.html", tmp_path / "p.png"
    text = "a <b>bold</b> & naïve  test"
    assert main(["--text", text, "--patching.scheme", "space", "--html", str(html), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "bytes                       28" in out
    assert "mean patch length" in out and "patches per KB" in out and "bytes in patches of 1 byte" in out
    page = html.read_text(encoding="utf-8")
    assert "&lt;b&gt;" not in page  # one span per byte: '<' and 'b' are separate spans
    assert ">&lt;</span>" in page and ">&amp;</span>" in page and "<b>" not in page
    assert ">ï</span>" in page
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def mean_patch_length(out):
    return float(next(line for line in out.splitlines() if line.startswith("mean patch length")).split()[-1])


def test_patching_section_from_flags_and_config_file(tmp_path, capsys):
    text = "abcdefghijklmnopqrstuvwxyz"  # 26 bytes
    assert main(["--text", text, "--patching.scheme", "static", "--patching.patch_size", "5"]) == 0
    assert mean_patch_length(capsys.readouterr().out) == pytest.approx(26 / 6, abs=1e-3)  # printed to 3 decimals
    config = tmp_path / "patch.yaml"
    config.write_text("patching:\n  scheme: static\n  patch_size: 2\nmax_bytes: 10\n")
    assert main(["--text", text, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "bytes                       10" in out and mean_patch_length(out) == pytest.approx(2.0)
    assert main(["--text", text, "--config", str(config), "--patching.patch_size", "13"]) == 0  # flags win
    assert mean_patch_length(capsys.readouterr().out) == pytest.approx(10.0)


def test_entropy_scheme_with_model_file_and_calibration(tmp_path, capsys):
    model = saved_model(tmp_path / "em")
    data = tmp_path / "in.txt"
    data.write_bytes(b"The quick brown fox jumps over the lazy dog.\n" * 6)
    assert main([str(data), "--model", model, "--target_patch_size", "3", "--chunk_size", "50",
                 "--html", str(tmp_path / "p.html")]) == 0
    out = capsys.readouterr().out
    assert "calibrated: threshold = " in out and "target 3.000" in out
    assert abs(mean_patch_length(out) - 3) < 0.1
    assert "H = " in (tmp_path / "p.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "blt",
    [
        ["--config", "RUN_FILE"],  # a whole training run file: its other sections are not read
        ["--config", "BLT_ONLY"],
        ["--blt.patching.patch_size", "4", "--blt.global_transformer.n_layers", "2"],  # no file at all
    ],
    ids=["run-file", "blt-section", "flags"],
)
def test_calibration_to_a_global_share(blt, tmp_path, capsys):
    model = saved_model(tmp_path / "em")
    (tmp_path / "blt.yaml").write_text("blt:\n  patching:\n    patch_size: 4\n")
    files = {"RUN_FILE": str(CONFIGS / "tiny.yaml"), "BLT_ONLY": str(tmp_path / "blt.yaml")}
    argv = ["--text", "The quick brown fox jumps over the lazy dog." * 3, "--model", model]
    assert main([*argv, "--target_global_share", "0.3", *(files.get(a, a) for a in blt)]) == 0
    assert "calibrated: threshold = " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text", "abc"], "needs an entropy model: pass --model"),
        (["MISSING", "--patching.scheme", "byte"], "input file not found"),
        (["--text", "", "--patching.scheme", "byte"], "empty input"),
        (["--text", "abc", "--model", "TMP"], "no config.json"),
        (["--text", "abc", "--model", "MODEL", "--patching.threshold", "nan"], "patching.threshold"),
        (["--text", "abc", "--model", "MODEL", "--patching.patch_size", "0"], "patching.patch_size must be > 0"),
        (["--text", "abc", "--patching.scheme", "bpe"], "patching.scheme"),
        (["--text", "abc", "--patching.scheme", "static", "--target_patch_size", "3"], "has none"),
        (["--text", "abc", "--model", "MODEL", "--target_global_share", "0.5"], "needs the BLT's shape"),
        (["--text", "abc", "--scheme", "byte"], "unrecognized arguments: --scheme"),  # the flag of old
        (["--text", "abc", "--target-patch-size", "3"], "unrecognized arguments: --target-patch-size"),
        (["--text", "abc", "--patching.schem", "byte"], "unrecognized arguments: --patching.schem"),
        (["--text", "abc", "--max_bytes", "0", "--patching.scheme", "byte"], "--max_bytes must be positive"),
        (["--text", "abc", "--chunk_size", "x"], "chunk_size"),
        (["--text", "abc", "--config", "MISSING"], "MISSING"),
        (["FILE", "--text", "abc"], "give either a FILE or --text"),
    ],
)
def test_clear_errors(argv, message, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("abc")
    paths = {"TMP": str(tmp_path), "MODEL": str(tmp_path / "em"), "MISSING": str(tmp_path / "MISSING"),
             "FILE": str(tmp_path / "in.txt")}
    if "MODEL" in argv:
        saved_model(tmp_path / "em")
    assert message in error(capsys, [paths.get(a, a) for a in argv])


BYTE_TEXT = ["--text", "abc", "--patching.scheme", "byte"]


@pytest.mark.parametrize(
    "where,expected",
    [("no/p.html", "--html: directory"), ("no/p.png", "--png: directory"), ("", "Is a directory")],
)
def test_a_picture_path_that_cannot_be_written_fails_up_front(tmp_path, capsys, where, expected):
    # a message before the work, not a traceback after it
    flag = "--png" if where.endswith(".png") else "--html"
    assert expected in error(capsys, [*BYTE_TEXT, flag, str(tmp_path / where)])


@pytest.mark.parametrize(
    "yaml,expected",
    [
        ("blt: 3\n", "blt: expected a mapping"),
        ("{}\n", "needs the BLT's shape"),
        ("blt:\n  encoder:\n    widht: 3\n", "encoder.widht"),
    ],
)
def test_a_blt_section_that_is_no_mapping_none_or_misspelt_is_refused(tmp_path, capsys, yaml, expected):
    # refused instead of silently using the default BLT
    model = saved_model(tmp_path / "em")
    (tmp_path / "c.yaml").write_text(yaml)
    args = ["--text", "abc", "--model", model, "--target_global_share", "0.5", "--config", str(tmp_path / "c.yaml")]
    assert expected in error(capsys, args)


@pytest.mark.parametrize("blt", [["--config", str(CONFIGS / "tiny.yaml")], ["--blt.cross_attn_k", "4"]])
def test_a_blt_section_without_target_global_share_is_refused(capsys, blt):
    # the BLT is only read for --target_global_share: a blt section without it is a mistake
    assert "only read with --target_global_share" in error(capsys, [*BYTE_TEXT, *blt])


def test_chunk_size_needs_a_model(capsys):
    assert "needs --model" in error(capsys, [*BYTE_TEXT, "--chunk_size", "8"])


@pytest.mark.parametrize(
    "text,n_bytes",
    [
        ("a\udcffb", 3),  # non-UTF-8 bytes reach argv as surrogates (os.fsdecode): patched as the raw bytes
        ("null", 4),  # a text that reads as YAML stays the string it is
    ],
)
def test_text_is_patched_as_the_bytes_given(capsys, text, n_bytes):
    assert main(["--text", text, "--patching.scheme", "byte"]) == 0
    assert f"bytes                       {n_bytes}" in capsys.readouterr().out


def test_byte_labels_keep_one_label_per_byte():
    assert byte_labels("a\u00e9\n\x00".encode()) == ["a", "\u00e9", "", "\u21b5", "\\x00"]
    assert byte_labels(b"\xff!") == ["\\xff", "!"]
    # a non-printable code point above 0xff is written as Python writes it (was "\x200b")
    assert byte_labels("\u200b\U000e0001".encode()) == ["\\u200b", "", "", "\\U000e0001", "", "", ""]


def test_html_breaks_lines_on_newline_bytes_only(tmp_path):
    html = tmp_path / "p.html"
    assert main(["--text", "a\u21b5b\nc", "--patching.scheme", "byte", "--html", str(html)]) == 0
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
