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
def test_triton_kernels_match_references_in_the_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BLT_KERNELS"}
    env.update(TRITON_INTERPRET="1", TRITON_CACHE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=CASES.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "skipped" not in result.stdout and " passed" in result.stdout, report


# every kernel with the constexpr values it is launched with; pointers to ids and layouts are int64
KERNELS = [
    ("hash_embedding_triton", "_hash_embedding_fwd", {"BLOCK_T": 32, "BLOCK_D": 128}),
    (
        "hash_embedding_triton",
        "_hash_embedding_bwd",
        {"BLOCK_T": 32, "BLOCK_D": 128, "BYTE_GRAD": True, "HASH_GRAD": True},
    ),
    ("pooling_triton", "_pool_fwd", {"IS_MAX": True, "BLOCK_L": 32, "BLOCK_D": 128}),
    ("pooling_triton", "_pool_fwd", {"IS_MAX": False, "BLOCK_L": 32, "BLOCK_D": 128}),
    ("pooling_triton", "_pool_bwd", {"IS_MAX": True, "BLOCK_L": 32, "BLOCK_D": 128}),
    ("pooling_triton", "_pool_bwd", {"IS_MAX": False, "BLOCK_L": 32, "BLOCK_D": 128}),
    ("cross_attention_triton", "_patch_query_fwd", {"BLOCK_K": 2, "BLOCK_L": 16, "BLOCK_DH": 64}),
    ("cross_attention_triton", "_patch_query_bwd", {"BLOCK_K": 2, "BLOCK_L": 16, "BLOCK_DH": 64}),
    ("cross_attention_triton", "_byte_query_fwd", {"BLOCK_K": 2, "BLOCK_L": 16, "BLOCK_DH": 64}),
    ("cross_attention_triton", "_byte_query_bwd", {"BLOCK_K": 2, "BLOCK_L": 16, "BLOCK_DH": 64}),
    ("entropy_triton", "_entropy_fwd", {"BOUNDARY": True, "BLOCK_R": 16, "BLOCK_V": 512}),
    ("entropy_triton", "_entropy_bwd", {"BLOCK_R": 16, "BLOCK_V": 512}),
]
INT_POINTERS = {"ids_ptr", "order_ptr", "starts_ptr", "counts_ptr", "primes_ptr", "sizes_ptr"}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_kernels_compile_for_a_cuda_gpu(tmp_path):
    """Ahead-of-time compilation down to a cubin for sm_80 (no GPU needed) catches what the interpreter lets
    through: it runs in a subprocess so this process never imports Triton outside the interpreter tests."""
    script = f"""
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

for module, name, constexprs in {KERNELS!r}:
    fn = getattr(importlib.import_module("blt.kernels." + module), name)
    signature = {{}}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in {INT_POINTERS!r}:
            signature[arg] = "*i64"
        elif arg == "above_ptr":
            signature[arg] = "*i8"
        elif arg.endswith("_ptr"):
            signature[arg] = "*fp32"
        else:
            signature[arg] = "fp32" if arg in ("scale", "threshold") else "i32"
    compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 80, 32))
    assert compiled.asm["cubin"], name
print("compiled", len({KERNELS!r}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0 and f"compiled {len(KERNELS)}" in result.stdout, result.stderr[-4000:]
