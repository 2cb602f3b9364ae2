"""minisdit/kernels/optim.cu: the fused AdamW step and EMA update over a flat buffer (docs/DESIGN.md §7).

REFERENCE: ``minisdit.autograd.optim`` -- ``adamw_step_reference`` (PyTorch's AdamW, line by line)
and ``ema_update_reference``.  The kernels run through ``minisdit.kernels.optim``
(``adamw_step_kernel``, ``ema_update_kernel``), the functions behind ``FUSED``, which the trainer
hands to AdamW and EMA.  On the CPU the kernels round exactly like the references (same operations
in the same order, the per-step scalars rounded once), which ``check(..., bitwise=True)`` asserts.
"""
from __future__ import annotations

import numpy as np

from ..autograd.optim import adamw_step_blocked, adamw_step_reference, ema_update_blocked, ema_update_reference
from ..kernels import runtime
from ..kernels.optim import KERNEL_FILE, adamw_step_kernel, ema_update_kernel
from .common import best_time, exact_error, on_device, timing, worst_error

KERNELS = ("adamw_step", "adamw_step_no_decay", "ema_update")
# a handful of roundings per entry (a division and a square root among them)
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-7), np.dtype(np.float64): (1e-13, 1e-15)}
# (lr, beta1, beta2, eps, weight_decay): the trainer's defaults, no decay, and extreme betas
HYPERPARAMETERS = [(1e-3, 0.9, 0.999, 1e-8, 0.01), (3e-3, 0.5, 0.8, 1e-3, 0.0), (1e-1, 0.0, 0.99, 1e-8, 1.0)]


def variants():
    """Every set of defines the library compiles optim.cu with (one per dtype)."""
    return [{"scalar_t": runtime.scalar_type(dtype)} for dtype in runtime.SCALAR_TYPES]


def random_case(rng, n: int, dtype):
    """θ, g (some entries tiny, some large), m and v ≥ 0 as after a few steps, of one flat buffer."""
    scale = rng.choice([1e-4, 1.0, 30.0], n)
    param, grad, m = rng.standard_normal(n), rng.standard_normal(n) * scale, rng.standard_normal(n) * scale * 0.1
    v = (rng.standard_normal(n) * scale) ** 2 * 0.01
    return [np.ascontiguousarray(a, dtype=dtype) for a in (param, grad, m, v)]


def check(dtype=np.float64, n: int = 1000, *, device: str = "cpu", block: int | None = 64,
          max_blocks: int | None = None, seed: int = 0, steps=(1, 2, 10), bitwise: bool = False) -> float:
    """The worst error (in tolerances, <= 1 passes) of both kernels against the references over a
    few steps for every row of ``HYPERPARAMETERS``; with ``bitwise`` any difference is infinite.

    Not run inside ``runtime.poisoned_outputs()`` as the other checks are: these kernels update
    their outputs in place, so NaN-filling them would destroy the state they read.  An entry a
    kernel forgot keeps its old value instead, which the comparison after the steps catches."""
    dtype = np.dtype(dtype)
    launch = dict(block=block, max_blocks=max_blocks)
    pairs = []
    for row, hyper in enumerate(HYPERPARAMETERS):
        expected = random_case(np.random.default_rng([seed, row]), n, dtype)
        actual = on_device(device, *expected)
        for step in steps:
            adamw_step_reference(*expected, *hyper, step)
            adamw_step_kernel(actual[0], actual[1], actual[2], actual[3], *hyper, step, **launch)
        pairs += list(zip([actual[0], actual[2], actual[3]], [expected[0], expected[2], expected[3]]))
        shadow, param = random_case(np.random.default_rng([seed, row, 1]), n, dtype)[:2]
        shadow_on, param_on = on_device(device, shadow, param)
        for decay in (0.9, 0.9999, hyper[1]):
            ema_update_reference(shadow, param, decay)
            ema_update_kernel(shadow_on, param_on, decay, **launch)
        pairs.append((shadow_on, shadow))
    if bitwise:
        return max(exact_error(actual, expected) for actual, expected in pairs)
    return worst_error(pairs, *TOLERANCES[dtype])


def benchmark(device: str = "cpu", dtype=np.float32, n: int = 2_000_000, repeats: int = 10,
              reference: bool = True) -> list[dict]:
    """One AdamW step and one EMA update of a flat buffer of ``n`` parameters: the references as the
    optimizer runs them without kernels (``reference``; on NumPy in cache-sized blocks, on a GPU as
    CuPy's elementwise launches) and the kernels."""
    dtype = np.dtype(dtype)
    hyper = HYPERPARAMETERS[0]
    size, bytes_each = f"n={n}", n * dtype.itemsize
    # AdamW reads g, θ, m, v and writes θ, m, v; EMA reads θ̄, θ and writes θ̄
    adamw_moved, ema_moved = 7 * bytes_each, 3 * bytes_each
    arrays = on_device(device, *random_case(np.random.default_rng(0), n, dtype))
    rows = []
    implementations = ([("numpy" if device == "cpu" else "cupy", adamw_step_blocked, ema_update_blocked)]
                       if reference else [])
    implementations.append((KERNEL_FILE, adamw_step_kernel, ema_update_kernel))
    for name, adamw, ema in implementations:
        rows.append(timing("adamw step", name, device, dtype, size,
                           best_time(lambda: adamw(*arrays, *hyper, 5), device, repeats), adamw_moved))
        rows.append(timing("ema update", name, device, dtype, size,
                           best_time(lambda: ema(arrays[2], arrays[0], 0.9999), device, repeats), ema_moved))
    return rows


__all__ = ["HYPERPARAMETERS", "KERNEL_FILE", "KERNELS", "TOLERANCES", "benchmark", "check", "random_case", "variants"]
