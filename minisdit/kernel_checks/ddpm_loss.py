"""minisdit/kernels/ddpm_loss.cu: q_sample and the ε-MSE of the DDPM loss (docs/DESIGN.md §4, §7).

REFERENCE: ``minisdit.diffusion.fused_ops`` -- ``q_sample_reference``, ``squared_error_reference``
and ``epsilon_mse_backward_reference`` (each one line of the equations).  The kernels run through
``q_sample_kernel``, ``squared_error_kernel`` and ``epsilon_mse_backward_kernel``, the functions
that ``fused_q_sample`` and ``EpsilonMSE`` use.  On the CPU the kernels round exactly like the
references (same operations in the same order), which ``check(..., bitwise=True)`` asserts.
"""
from __future__ import annotations

import numpy as np

from ..diffusion.fused_ops import (KERNEL_FILE, epsilon_mse_backward_kernel, epsilon_mse_backward_reference,
                                   q_sample_kernel, q_sample_reference, squared_error_kernel, squared_error_reference)
from ..diffusion.gaussian import GaussianDiffusion
from ..kernels import runtime
from .common import outputs_poisoned, best_time, exact_error, on_device, timing, worst_error

KERNELS = ("ddpm_q_sample", "ddpm_squared_error", "ddpm_epsilon_mse_backward")
# elementwise ops: a rounding or two per entry
TOLERANCES = {np.dtype(np.float32): (2e-6, 1e-6), np.dtype(np.float64): (1e-13, 1e-14)}


def variants():
    """Every set of defines the library compiles ddpm_loss.cu with (one per dtype)."""
    return [{"scalar_t": runtime.scalar_type(dtype)} for dtype in runtime.SCALAR_TYPES]


def random_case(rng, batch: int, sample_shape, dtype):
    """x_0 in [-1, 1], ε, √ᾱ_t and √(1 − ᾱ_t) at random steps of the default schedule, and dL/dL_n."""
    shape = (batch,) + tuple(sample_shape)
    alpha_bar = GaussianDiffusion().alphas_cumprod[rng.integers(0, 1000, batch)]
    return [np.ascontiguousarray(a, dtype=dtype) for a in
            (rng.uniform(-1, 1, shape), rng.standard_normal(shape), np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar),
             rng.standard_normal(batch))]


@outputs_poisoned
def check(dtype=np.float64, batch: int = 7, sample_shape=(3, 11, 13), *, device: str = "cpu",
          block: int | None = 64, max_blocks: int | None = None, seed: int = 0, bitwise: bool = False) -> float:
    """The worst error (in tolerances, <= 1 passes) of the three kernels against the references;
    with ``bitwise`` any difference at all is an infinite error (the CPU build's promise)."""
    dtype = np.dtype(dtype)
    x0, noise, a, b, grad_loss = random_case(np.random.default_rng(seed), batch, sample_shape, dtype)
    launch = dict(block=block, max_blocks=max_blocks)
    on = on_device(device, x0, noise, a, b, grad_loss)
    # the ε-MSE kernels take the prediction and the noise; x_0 stands in for the prediction
    pairs = [(q_sample_kernel(*on[:4], **launch), q_sample_reference(x0, noise, a, b)),
             (squared_error_kernel(on[0], on[1], **launch), squared_error_reference(x0, noise)),
             (epsilon_mse_backward_kernel(on[0], on[1], on[4], **launch),
              epsilon_mse_backward_reference(x0, noise, grad_loss))]
    if bitwise:
        return max(exact_error(actual, expected) for actual, expected in pairs)
    return worst_error(pairs, *TOLERANCES[dtype])


def benchmark(device: str = "cpu", dtype=np.float32, batch: int = 256, sample_shape=(1, 28, 28), repeats: int = 20,
              reference: bool = True) -> list[dict]:
    """q_sample and the ε-MSE forward + backward for a batch of MNIST-sized images: the NumPy
    references (``reference`` and device "cpu") and the kernels on ``device``."""
    dtype = np.dtype(dtype)
    x0, noise, a, b, grad_loss = random_case(np.random.default_rng(0), batch, sample_shape, dtype)
    size, n = f"N={batch} {'x'.join(map(str, sample_shape))}", x0.size * dtype.itemsize
    # bytes that must move: q_sample reads x_0, ε and writes x_t; the MSE reads ε̂, ε and writes
    # (ε̂ − ε)² (then reduced); its backward reads ε̂, ε and writes dL/dε̂
    q_moved, mse_moved = 3 * n, 6 * n
    rows = []
    if reference and device == "cpu":
        rows.append(timing("q_sample", "numpy", "cpu", dtype, size,
                           best_time(lambda: q_sample_reference(x0, noise, a, b), "cpu", repeats), q_moved))
        rows.append(timing("eps-mse fwd+bwd", "numpy", "cpu", dtype, size, best_time(
            lambda: (squared_error_reference(x0, noise).reshape(batch, -1).mean(axis=1),
                     epsilon_mse_backward_reference(x0, noise, grad_loss)), "cpu", repeats), mse_moved))
    x0, noise, a, b, grad_loss = on_device(device, x0, noise, a, b, grad_loss)
    rows.append(timing("q_sample", "ddpm_loss.cu", device, dtype, size,
                       best_time(lambda: q_sample_kernel(x0, noise, a, b), device, repeats), q_moved))
    rows.append(timing("eps-mse fwd+bwd", "ddpm_loss.cu", device, dtype, size, best_time(
        lambda: (squared_error_kernel(x0, noise).reshape(batch, -1).mean(axis=1),
                 epsilon_mse_backward_kernel(x0, noise, grad_loss)), device, repeats), mse_moved))
    return rows


__all__ = ["KERNEL_FILE", "KERNELS", "TOLERANCES", "benchmark", "check", "random_case", "variants"]
