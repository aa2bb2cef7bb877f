"""A regular (non-editable) install puts everything under `blt` and works from any directory."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_only_the_blt_namespace(tmp_path):
    # build from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds
    junk = shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*cache", ".hypothesis")
    source = shutil.copytree(ROOT, tmp_path / "src", ignore=junk)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("blt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"blt"}  # no top-level kernels/patcher/eval module that would shadow other packages
    for module in ("blt/checkpoint/hf.py", "blt/patcher/schemes.py", "blt/kernels/dispatch.py", "blt/eval/flops.py", "blt/training/cli.py"):
        assert module in names

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    assert subprocess.run(install, capture_output=True, text=True).returncode == 0
    probe = (
        "import blt.patcher, blt.kernels, blt.eval.flops, blt.training.cli, blt.model;"
        "print(blt.patcher.__file__); print(blt.eval.flops.__file__)"
    )
    # run from an unrelated directory with only the installed copy importable
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert all(line.startswith(str(site)) for line in out.stdout.split())
