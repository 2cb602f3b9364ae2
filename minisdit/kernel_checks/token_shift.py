"""minisdit/kernels/token_shift.cu: RWKV's token shift with its K mixes (docs/DESIGN.md §3, §7).

REFERENCE: ``minisdit.rwkv.shift_mix`` -- ``token_shift_mix_reference`` and
``token_shift_mix_backward_reference`` (the formulas are that module's docstring).  The kernels run
through ``token_shift_mix_forward_kernel`` / ``token_shift_mix_backward_kernel``, the functions that
``TokenShiftMix`` uses.  The CPU build's forward rounds exactly like the reference
(``check(..., bitwise=True)`` asserts it); the backward sums in another order.
"""
from __future__ import annotations

import numpy as np

from ..kernels import runtime
from ..rwkv.shift_mix import (KERNEL_FILE, token_shift_mix_backward_kernel, token_shift_mix_backward_reference,
                                token_shift_mix_forward_kernel, token_shift_mix_reference)
from .common import best_time, exact_error, on_device, outputs_poisoned, timing, worst_error

KERNELS = ("token_shift_mix_forward", "token_shift_mix_backward")
# dL/dz: up to 2K products summed; dL/dmu: a sum over N L products (relative to its largest entry)
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-13)}


def variants():
    """Every set of defines the library compiles token_shift.cu with (one per dtype)."""
    return [{"scalar_t": runtime.scalar_type(dtype)} for dtype in runtime.SCALAR_TYPES]


def random_case(rng, shape, mixes: int, dtype):
    """z (N, L, D), the K mixes in [0, 1] as RWKV's init gives them, and dL/dx^k (K, N, L, D)."""
    z = rng.normal(size=shape).astype(dtype)
    mus = [rng.uniform(0, 1, shape[2]).astype(dtype) for _ in range(mixes)]
    return z, mus, rng.normal(size=(mixes,) + tuple(shape)).astype(dtype)


@outputs_poisoned
def check(dtype=np.float64, shape=(3, 17, 37), mixes: int = 3, *, device: str = "cpu", block: int | None = 64,
          max_blocks: int | None = None, seed: int = 0) -> float:
    """The worst error (in tolerances, <= 1 passes) of both kernels against the references; the forward
    must be bitwise equal on the CPU (any difference there is an infinite error)."""
    dtype = np.dtype(dtype)
    z, mus, g = random_case(np.random.default_rng(seed), tuple(shape), mixes, dtype)
    launch = dict(block=block, max_blocks=max_blocks)
    z_d, g_d, *mus_d = on_device(device, z, g, *mus)
    out = token_shift_mix_forward_kernel(z_d, mus_d, **launch)
    grad_z, grad_mu = token_shift_mix_backward_kernel(z_d, mus_d, g_d, **launch)
    expected_z, expected_mu = token_shift_mix_backward_reference(z, mus, g)
    rtol, atol = TOLERANCES[dtype]
    forward = token_shift_mix_reference(z, mus)
    forward_error = exact_error(out, forward) if device == "cpu" else worst_error([(out, forward)], rtol, atol)
    return max(forward_error, worst_error([(grad_z, expected_z)], rtol, atol),
               worst_error([(grad_mu, np.stack(expected_mu))], rtol, atol, relative_floor=True))


def benchmark(device: str = "cpu", dtype=np.float32, shape=(256, 65, 384), mixes: int = 3, repeats: int = 10,
              reference: bool = True) -> list[dict]:
    """Forward + backward of TimeMix's three mixes at the paper model's token shape.  Bytes that must
    move: forward reads z, writes K mixes; backward reads z and K gradients, writes dL/dz."""
    dtype = np.dtype(dtype)
    z, mus, g = random_case(np.random.default_rng(0), tuple(shape), mixes, dtype)
    size, moved = f"K={mixes} " + "x".join(map(str, shape)), (2 * mixes + 3) * z.size * dtype.itemsize
    rows = []
    if reference and device == "cpu":
        seconds = best_time(lambda: (token_shift_mix_reference(z, mus), token_shift_mix_backward_reference(z, mus, g)),
                            "cpu", repeats)
        rows.append(timing("token_shift fwd+bwd", "numpy", "cpu", dtype, size, seconds, moved))
    z_d, g_d, *mus_d = on_device(device, z, g, *mus)
    seconds = best_time(lambda: (token_shift_mix_forward_kernel(z_d, mus_d),
                                 token_shift_mix_backward_kernel(z_d, mus_d, g_d)), device, repeats)
    rows.append(timing("token_shift fwd+bwd", "token_shift.cu", device, dtype, size, seconds, moved))
    return rows


__all__ = ["KERNEL_FILE", "KERNELS", "TOLERANCES", "benchmark", "check", "random_case", "variants"]
