"""minisdit/kernels/layernorm.cu: LayerNorm over the last axis without affine (docs/DESIGN.md §3, §7).

REFERENCE: the weight-less branch of ``minisdit.autograd.nn_ops.LayerNorm`` (through
``minisdit.kernels.layernorm.layernorm_forward_reference`` / ``layernorm_backward_reference``).  The
kernels run through ``layernorm_forward_kernel`` / ``layernorm_backward_kernel``, the functions that
``FUSED_LAYER_NORM`` hands to the Function.  The kernel sums a row in order where NumPy sums
pairwise, so the two agree to a tolerance, not bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..kernels import runtime
from ..kernels.layernorm import (KERNEL_FILE, layernorm_backward_kernel, layernorm_backward_reference,
                                 layernorm_forward_kernel, layernorm_forward_reference)
from .common import best_time, on_device, outputs_poisoned, timing, worst_error

KERNELS = ("layernorm_forward", "layernorm_backward")
# every output entry depends on sums of D entries of its row: a few roundings per entry, times sqrt(D)
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-5), np.dtype(np.float64): (1e-12, 1e-12)}


def variants():
    """Every set of defines the library compiles layernorm.cu with (one per dtype)."""
    return [{"scalar_t": runtime.scalar_type(dtype)} for dtype in runtime.SCALAR_TYPES]


def random_case(rng, shape, dtype):
    """x with an offset and a scale per row (so that the mean and the variance matter), and dL/dy."""
    rows = shape[:-1] + (1,)
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, rows) + rng.normal(0, 2.0, rows)
    return x.astype(dtype), rng.normal(size=shape).astype(dtype)


@outputs_poisoned
def check(dtype=np.float64, shape=(3, 17, 37), eps: float = 1e-6, *, device: str = "cpu", block: int | None = 64,
          max_blocks: int | None = None, seed: int = 0) -> float:
    """The worst error (in tolerances, <= 1 passes) of both kernels (x_hat, mean, rstd, dL/dx) against the reference."""
    dtype = np.dtype(dtype)
    x, g = random_case(np.random.default_rng(seed), tuple(shape), dtype)
    launch = dict(block=block, max_blocks=max_blocks)
    x_d, g_d = on_device(device, x, g)
    x_hat, mean, rstd = layernorm_forward_kernel(x_d, eps, **launch)
    grad_x = layernorm_backward_kernel(g_d, x_hat, rstd, **launch)
    reference = layernorm_forward_reference(x, eps)
    pairs = list(zip((x_hat, mean, rstd), reference)) + [(grad_x, layernorm_backward_reference(g, x, eps))]
    return worst_error(pairs, *TOLERANCES[dtype])


def benchmark(device: str = "cpu", dtype=np.float32, shape=(256, 65, 384), repeats: int = 10,
              reference: bool = True) -> list[dict]:
    """Forward + backward at the paper model's token shape: the NumPy reference (``reference`` and
    device "cpu") and the kernels on ``device``.  Bytes that must move: forward reads x, writes
    x_hat; backward reads g, x_hat, writes dL/dx (the per-row mean and rstd are negligible)."""
    dtype = np.dtype(dtype)
    x, g = random_case(np.random.default_rng(0), tuple(shape), dtype)
    size, moved = "x".join(map(str, shape)), 5 * x.size * dtype.itemsize
    rows = []
    if reference and device == "cpu":
        rows.append(timing("layernorm fwd+bwd", "numpy", "cpu", dtype, size,
                           best_time(lambda: layernorm_backward_reference(g, x, 1e-6), "cpu", repeats), moved))
    x_d, g_d = on_device(device, x, g)

    def kernels():
        x_hat, _, rstd = layernorm_forward_kernel(x_d, 1e-6)
        return layernorm_backward_kernel(g_d, x_hat, rstd)

    rows.append(timing("layernorm fwd+bwd", "layernorm.cu", device, dtype, size, best_time(kernels, device, repeats), moved))
    return rows


__all__ = ["KERNEL_FILE", "KERNELS", "TOLERANCES", "benchmark", "check", "random_case", "variants"]
