"""Runs the Triton kernel cases (tests/kernels_triton_cases.py) on the CPU through Triton's interpreter.

TRITON_INTERPRET=1 has to be set before Triton is first imported, so the cases run in a fresh pytest process;
the rest of the suite never sees the variable.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("kernels_triton_cases.py")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_match_references_in_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "BLT_KERNELS"}
    env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=CASES.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "skipped" not in result.stdout and " passed" in result.stdout, report
