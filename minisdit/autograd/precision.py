"""The precision of float32 matrix products on the GPU: "fp32" (the default) or "tf32".

TF32 is the tensor-core format of Ampere and later GPUs (compute capability >= 8.0, the H200
included): cuBLAS rounds each float32 input of a GEMM to a 10-bit mantissa and accumulates in
float32, several times faster than full float32 GEMMs and about 1e-3 relative error per product
(float32: about 1e-7).  It acts only on 2-D GEMMs (cuBLAS ``gemmEx``), which is why Linear and
Conv2d are one 2-D product each (``nn_ops.Linear``, ``nn_ops.Conv2d``); a batched product
(``sgemmBatched``) ignores it.

The default is "fp32", as PyTorch's (``torch.backends.cuda.matmul.allow_tf32 = False`` since 1.12)
and as CuPy's own (``CUPY_TF32`` unset): a GPU run then agrees with the CPU to float32 rounding.
``train --tf32`` opts in; a library user calls ``set_matmul_precision("tf32")`` (until then
CuPy follows ``CUPY_TF32`` as it finds it in the environment).  NumPy has no TF32, so on the CPU the setting changes nothing at all.

How it reaches CuPy: CuPy reads the environment variable ``CUPY_TF32`` at its first float32 GEMM
and caches the answer as the float32 "compute type" (``cupy/_core/_routines_linalg.pyx``,
``get_compute_type``).  Setting the precision writes ``CUPY_TF32`` and, when CuPy is already
imported, puts that cached compute type back to "to be decided", so that the next GEMM reads the
variable again.  That is one process-wide state (it is cuBLAS's), hence a plain setter and a
``with matmul_precision(...)`` block that restores the previous value, rather than a per-thread
setting like ``kernels.runtime.cpu_kernels``.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

PRECISIONS = ("fp32", "tf32")
DEFAULT_PRECISION = "fp32"



def _from_environment() -> str:
    """What CuPy itself would use: TF32 when ``CUPY_TF32`` is a positive integer (as CuPy parses it)."""
    value = os.environ.get("CUPY_TF32", "0").strip()
    return "tf32" if value.lstrip("-").isdigit() and int(value) > 0 else DEFAULT_PRECISION


_precision = _from_environment()  # a CUPY_TF32=1 in the environment is honoured, and reported truthfully


def get_matmul_precision() -> str:
    """The precision that float32 GEMMs on the GPU use now: "fp32" or "tf32"."""
    return _precision


def set_matmul_precision(precision: str) -> str:
    """Use ``precision`` ("fp32" or "tf32") for every later float32 GEMM on the GPU; returns the old one."""
    global _precision
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; use 'fp32' (exact float32) or 'tf32' (tensor cores)")
    previous, _precision = _precision, precision
    os.environ["CUPY_TF32"] = "1" if precision == "tf32" else "0"
    if "cupy" in sys.modules:  # CuPy may have cached the variable already: make it read it again
        from cupy._core import _routines_linalg

        _routines_linalg.set_compute_type(np.float32, _routines_linalg.COMPUTE_TYPE_TBD)
    return previous


@contextlib.contextmanager
def matmul_precision(precision: str):
    """``set_matmul_precision(precision)`` for the block, the previous precision after it."""
    previous = set_matmul_precision(precision)
    try:
        yield
    finally:
        set_matmul_precision(previous)
