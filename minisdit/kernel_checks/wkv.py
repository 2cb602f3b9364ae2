"""minisdit/kernels/wkv.cu: the RWKV-4 WKV operator, forward and backward, alone and gated by
σ(r) as TimeMix uses it (docs/DESIGN.md §3, §7).

REFERENCE: ``minisdit.rwkv.wkv_operator`` -- ``wkv_forward_numpy`` and ``wkv_backward_numpy``
(the stable running-maximum recurrences, derived in their docstrings; they are checked in turn
against the O(L^2) definition ``wkv_quadratic_numpy`` by tests/rwkv), and for the gated kernels
``gated_forward_numpy``/``gated_backward_numpy`` around them.  The kernels run through
``wkv_forward_kernel``, ``wkv_backward_kernel``, ``wkv_gated_forward_kernel`` and
``wkv_gated_backward_kernel``, the functions the ``WKV`` and ``GatedWKV`` Functions use.
"""
from __future__ import annotations

import numpy as np

from ..kernels import runtime
from ..rwkv.wkv_operator import (KERNEL_FILE, gated_backward_numpy, gated_forward_numpy, kernel_defines,
                                 wkv_backward_kernel, wkv_backward_numpy, wkv_forward_kernel, wkv_forward_numpy,
                                 wkv_gated_backward_kernel, wkv_gated_forward_kernel)
from .common import outputs_poisoned, TOLERANCES, best_time, on_device, timing, worst_error

KERNELS = ("wkv_forward", "wkv_backward", "wkv_gated_forward", "wkv_gated_backward")
# Per element of (B, L, C) the forward reads k, v and writes y, ln D (4 values); the backward reads
# k, v, y, ln D, dL/dy and writes dL/dk, dL/dv (7); the (C,) and (B, C) vectors are negligible.
VALUES_MOVED_PER_ELEMENT = 4 + 7
# gated: the forward reads k, v, r and writes out, wkv, ln D (6); the backward reads k, v, r, wkv,
# ln D, dL/dout and writes dL/dk, dL/dv, dL/dr (9)
GATED_VALUES_MOVED_PER_ELEMENT = 6 + 9


def variants():
    """Every set of defines the library compiles wkv.cu with (one per dtype)."""
    return [kernel_defines(dtype) for dtype in runtime.SCALAR_TYPES]


def random_case(rng, batch, length, channels, dtype, k_scale: float = 3.0, extreme_k: float | None = None):
    """w, u, k, v, dL/dy in the ranges of the layer's initialisation.  ``extreme_k``: k at +-extreme_k
    and in between, with long runs of one sign (the worst case for the running maxima)."""
    w = np.exp(rng.uniform(-5.0, 3.0, channels))
    u = rng.normal(np.log(0.3), 0.5, channels)
    k = rng.normal(0.0, k_scale, (batch, length, channels))
    if extreme_k is not None:
        signs = np.where(rng.random(k.shape) < 0.5, -1.0, 1.0)
        signs[:, : length // 2] = 1.0
        k = signs * rng.uniform(0.5 * extreme_k, extreme_k, k.shape)
    v = rng.standard_normal((batch, length, channels))
    grad_y = rng.standard_normal((batch, length, channels))
    return [np.ascontiguousarray(a, dtype=dtype) for a in (w, u, k, v, grad_y)]


def random_gate(rng, batch, length, channels, dtype):
    """The receptance r of the gated kernels: both signs and large |r|, where σ saturates."""
    return np.ascontiguousarray(rng.normal(0.0, 4.0, (batch, length, channels)), dtype=dtype)


@outputs_poisoned
def check(dtype=np.float64, batch: int = 3, length: int = 19, channels: int = 37, *, device: str = "cpu",
          block: int | None = 32, max_blocks: int | None = None, k_scale: float = 3.0,
          extreme_k: float | None = None, seed: int = 5) -> float:
    """The worst error (in tolerances, <= 1 passes) of all four kernels against the reference: the
    operator alone and gated by σ(r).

    Relative to each entry, with a floor relative to the largest entry of each output (cancellation
    near 0).  Block of 32 by default: (3, 37) is 111 threads, four blocks with the last one partly idle.
    Any non-finite output is an infinite error, also where the reference overflows.
    """
    dtype = np.dtype(dtype)
    w, u, k, v, grad_y = random_case(np.random.default_rng(seed), batch, length, channels, dtype, k_scale, extreme_k)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # the reference must stay finite too
        forward = wkv_forward_numpy(w, u, k, v)
        grads = wkv_backward_numpy(w, u, k, v, *forward, grad_y)
    on = on_device(device, w, u, k, v, grad_y)
    forward_kernel = wkv_forward_kernel(*on[:4], block=block, max_blocks=max_blocks)
    # the backward from the reference's forward, so that each kernel is judged on its own
    grads_kernel = wkv_backward_kernel(*on[:4], *on_device(device, *forward), on[4], block=block, max_blocks=max_blocks)
    r = random_gate(np.random.default_rng([seed, 1]), batch, length, channels, dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        gated = gated_forward_numpy(r, forward[0])
        grad_r, grad_wkv = gated_backward_numpy(r, forward[0], grad_y)
        gated_grads = wkv_backward_numpy(w, u, k, v, *forward, grad_wkv)
    (r_on,) = on_device(device, r)
    gated_kernel = wkv_gated_forward_kernel(*on[:4], r_on, block=block, max_blocks=max_blocks)
    gated_grads_kernel = wkv_gated_backward_kernel(*on[:4], r_on, *on_device(device, *forward), on[4], block=block,
                                                   max_blocks=max_blocks)
    grad_k, grad_v, grad_r_kernel, grad_w, grad_u = gated_grads_kernel
    pairs = list(zip((*forward_kernel, *grads_kernel), (*forward, *grads)))
    pairs += list(zip(gated_kernel, (gated, *forward)))
    pairs += list(zip((grad_k, grad_v, grad_w, grad_u, grad_r_kernel), (*gated_grads, grad_r)))
    rtol, _ = TOLERANCES[dtype]
    return worst_error(pairs, rtol, rtol, relative_floor=True)


def benchmark(device: str = "cpu", dtype=np.float32, batch: int = 32, length: int = 394, channels: int = 384,
              repeats: int = 3, reference: bool = True) -> list[dict]:
    """Forward + backward of the paper's MNIST size by default (D = 384, 2M = 394 tokens, batch 32):
    the NumPy reference (``reference`` and device "cpu") and the kernels on ``device``."""
    dtype = np.dtype(dtype)
    w, u, k, v, grad_y = random_case(np.random.default_rng(0), batch, length, channels, dtype)
    size, moved = f"B={batch} L={length} C={channels}", VALUES_MOVED_PER_ELEMENT * k.size * dtype.itemsize
    rows = []
    if reference and device == "cpu":
        seconds = best_time(lambda: wkv_backward_numpy(w, u, k, v, *wkv_forward_numpy(w, u, k, v), grad_y), "cpu", repeats)
        rows.append(timing("wkv fwd+bwd", "numpy", "cpu", dtype, size, seconds, moved))
    w, u, k, v, grad_y = on_device(device, w, u, k, v, grad_y)
    seconds = best_time(lambda: wkv_backward_kernel(w, u, k, v, *wkv_forward_kernel(w, u, k, v), grad_y), device, repeats)
    rows.append(timing("wkv fwd+bwd", "wkv.cu", device, dtype, size, seconds, moved))
    (r,) = on_device(device, random_gate(np.random.default_rng(1), batch, length, channels, dtype))

    def gated():
        _, y, log_denominator = wkv_gated_forward_kernel(w, u, k, v, r)
        wkv_gated_backward_kernel(w, u, k, v, r, y, log_denominator, grad_y)

    seconds = best_time(gated, device, repeats)
    rows.append(timing("wkv gated fwd+bwd", "wkv.cu", device, dtype, size, seconds,
                       GATED_VALUES_MOVED_PER_ELEMENT * k.size * dtype.itemsize))
    return rows


__all__ = ["GATED_VALUES_MOVED_PER_ELEMENT", "KERNEL_FILE", "KERNELS", "VALUES_MOVED_PER_ELEMENT", "benchmark", "check",
           "random_case", "random_gate", "variants"]
