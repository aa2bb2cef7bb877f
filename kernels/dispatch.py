"""Which implementation of a byte<->patch operation runs: Triton, the PyTorch path, or the plain reference.

Every public operation in :mod:`blt.kernels` takes ``impl`` (keyword) and otherwise reads the environment
variable ``BLT_KERNELS`` at call time:

- ``auto`` (default): the Triton kernel for CUDA tensors, the PyTorch path otherwise;
- ``torch``: always the PyTorch path (what CPU users run);
- ``triton``: always the Triton kernel (on the CPU only under ``TRITON_INTERPRET=1``, for testing);
- ``reference``: the plain code of :mod:`blt.patch_ops`, for debugging.

A Triton kernel that cannot take an input (a dtype it has no kernel for) never fails silently: the call falls
back to the PyTorch path with a warning issued once per operation and reason.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

MODES = ("auto", "torch", "triton", "reference")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_warned: set[tuple[str, str]] = set()


def kernel_mode(impl: str | None = None) -> str:
    """The mode asked for by ``impl`` or else ``$BLT_KERNELS`` (default ``auto``), validated."""
    mode = impl if impl is not None else os.environ.get("BLT_KERNELS", "auto") or "auto"
    if mode not in MODES:
        source = "impl" if impl is not None else "BLT_KERNELS"
        raise ValueError(f"{source}={mode!r} is not a kernel mode; choose one of {MODES}")
    return mode


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (used by the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(
            f"blt.kernels.{op}: {reason}; using the PyTorch path instead",
            RuntimeWarning,
            stacklevel=4,  # the caller of the public op
        )


def choose(op: str, x: torch.Tensor, impl: str | None = None, unsupported: str | None = None) -> str:
    """``"triton"``, ``"torch"`` or ``"reference"`` for operation ``op`` on floating tensor ``x``.

    ``unsupported`` names a shape the Triton kernel cannot take (None: it can); like an unsupported dtype,
    it sends the call to the PyTorch path with a one-time warning.
    """
    mode = kernel_mode(impl)
    if mode == "auto":
        mode = "triton" if x.is_cuda else "torch"
    if mode != "triton":
        return mode
    if not (x.is_cuda or interpreting()):
        raise ValueError(
            f"blt.kernels.{op}: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU); "
            f"got a tensor on {x.device}"
        )
    if not triton_available():
        warn_once(op, "triton is not installed")
        return "torch"
    if x.dtype not in TRITON_DTYPES:
        warn_once(op, f"no Triton kernel for dtype {x.dtype}")
        return "torch"
    if unsupported is not None:
        warn_once(op, unsupported)
        return "torch"
    return "triton"
