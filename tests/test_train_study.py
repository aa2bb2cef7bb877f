"""bench/study.py's argument checks: bad input fails before anything trains."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    """bench/<name>.py as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_study():
    return load_bench("study")


@pytest.mark.parametrize(
    "sizes, message", [("x,y", "comma-separated numbers"), ("3,0.5", "must all be >= 1")]
)
def test_bad_patch_sizes_fail_before_training(sizes, message, capsys):
    with pytest.raises(SystemExit):
        load_study().parse_args(["--data", "stdlib", "--patch-sizes", sizes])
    assert message in capsys.readouterr().err


def test_a_relative_corpus_path_is_made_absolute(tmp_path, monkeypatch):
    # the training commands run in the repository root, so a path relative to the caller must not reach them
    (tmp_path / "corpus.txt").write_text("some text")
    monkeypatch.chdir(tmp_path)
    args, user = load_study().parse_args(["--data", "corpus.txt", "--patch-sizes", "3,6", "--x.y", "1"])
    assert args.data == str(tmp_path / "corpus.txt") and args.patch_sizes == [3.0, 6.0]
    assert user == ["--x.y", "1"]
    assert load_study().parse_args(["--data", "stdlib"])[0].data == "stdlib"


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--rounds", "-1"], ["--config", "missing.yaml"]])
def test_train_throughput_refuses_bad_arguments_before_building_models(argv, capsys):
    with pytest.raises(SystemExit) as e:
        load_bench("train_throughput").main(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
