"""Shared test fixtures. Tests create their data in tmp_path; nothing outside the repository is read."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

# `python -m pytest` puts the working directory first on sys.path; at the checkout's root the source folder
# kernels/ (installed as blt.kernels) would then shadow the `kernels` package that transformers imports.
# The package is installed, so nothing is imported from the root itself.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

WORDS = str.split(
    "the of and to in is that it was for on are as with his they be at one have this from or had by word but "
    "what some we can out other were all there when up use your how said an each she which do their time if "
    "will way about many then them write would like so these her long make thing see him two has look more "
    "day could go come did number sound no most people my over know water than call first who may down side"
)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one thread per process is faster than two fighting over 2 cores, and the
    subprocesses the tests start (DDP ranks, CLIs) inherit the setting through OMP_NUM_THREADS."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Keep the data pipeline's id-stream cache (and that of subprocesses) out of ~/.cache."""
    old = os.environ.get("BLT_CACHE_DIR")
    os.environ["BLT_CACHE_DIR"] = str(tmp_path_factory.mktemp("blt-cache"))
    yield
    if old is None:
        os.environ.pop("BLT_CACHE_DIR", None)
    else:
        os.environ["BLT_CACHE_DIR"] = old


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device (the suite stays CPU-only)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def _make_text(rng: random.Random, n_bytes: int) -> str:
    """Deterministic English-like lines (words of a small vocabulary) of about ``n_bytes`` bytes."""
    lines, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + "."
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_text():
    """``make_text(rng: random.Random, n_bytes) -> str``: deterministic English-like lines."""
    return _make_text


def make_corpus(parent: Path) -> Path:
    """``parent/corpus``: 40 small text documents (about 40 KB, some in a subfolder), always the same."""
    rng = random.Random(0)
    root = parent / "corpus"
    (root / "sub").mkdir(parents=True)
    for i in range(40):
        folder = root / "sub" if i % 4 == 0 else root
        (folder / f"doc{i:02d}.txt").write_text(_make_text(rng, rng.randint(300, 1700)))
    return root


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A folder of 40 small text documents (about 40 KB, some in a subfolder): a corpus for `DataConfig.source`."""
    return make_corpus(tmp_path)
