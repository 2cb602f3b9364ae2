"""minisdit/kernels/lif.cu: multi-step LIF neurons and the spike rate (docs/DESIGN.md §3, §7).

REFERENCE: ``minisdit.snn.lif`` -- ``lif_forward_reference``, ``lif_backward_reference``,
``spike_rate_forward_reference``, ``spike_rate_backward_reference`` (the equations are the
module docstring there).  The kernels run through ``minisdit.snn.lif.LIFKernels``, the very
object the autograd Functions use.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..snn.lif import (KERNEL_FILE, THREADS_PER_BLOCK, LIFKernels, LIFOptions, kernel_variants, lif_backward_reference,
                       lif_forward_reference, spike_rate_backward_reference, spike_rate_forward_reference)
from .common import outputs_poisoned, TOLERANCES, best_time, exact_error, on_device, timing, worst_error

KERNELS = ("lif_forward", "lif_backward", "spike_rate_forward", "spike_rate_backward")


def variants():
    """Every set of defines the library compiles lif.cu with (surrogates x resets x dtypes)."""
    return list(kernel_variants())


def random_input(rng, shape, dtype):
    """Inputs spread around the threshold, so that spikes, silences and resets all happen."""
    return rng.normal(0.8, 1.0, size=shape).astype(dtype)


@outputs_poisoned
def check(options: LIFOptions, dtype=np.float64, neurons: int = 257, T: int = 5, *, device: str = "cpu",
          block: int | None = THREADS_PER_BLOCK, max_blocks: int | None = None, seed: int | None = None) -> float:
    """The worst error (in tolerances, <= 1 passes) of the four kernels against the reference.

    Spikes must match exactly (any difference is an infinite error).  ``block`` and ``max_blocks``
    as in ``runtime.launch``: GPU-sized blocks by default, so that a CPU run uses the block
    indexing; ``block=None`` is the fast launch.  Raises if the input does not both fire and stay
    silent (the check would then not exercise the reset).
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(neurons * 31 + T if seed is None else seed)
    x = random_input(rng, (T, neurons), dtype)
    grad_spikes = rng.normal(size=(T, neurons)).astype(dtype)
    kernels = LIFKernels(options, dtype, block=block, max_blocks=max_blocks)
    rtol, atol = TOLERANCES[dtype]

    x_d, grad_d = on_device(device, x, grad_spikes)
    spikes, h = kernels.forward(x_d)
    reference_spikes, reference_h = lif_forward_reference(x, options)
    if not 0 < reference_spikes.mean() < 1:
        raise ValueError(f"the check input of {neurons} neurons x {T} steps must both fire and stay silent; "
                         "choose more neurons or steps")
    # the backward from the kernel's own h, so that one differing h cannot hide in both passes
    h_numpy = backend.to_numpy(h)
    grad_x = kernels.backward(h, grad_d)
    single, grad_rate = x[0], grad_spikes[0]
    single_d, grad_rate_d = on_device(device, single, grad_rate)
    rate = kernels.spike_rate_forward(single_d, T)
    grad_single = kernels.spike_rate_backward(single_d, grad_rate_d, T)
    return max(
        exact_error(spikes, reference_spikes),
        exact_error(rate, spike_rate_forward_reference(single, T, options)),
        worst_error([(h, reference_h),
                     (grad_x, lif_backward_reference(h_numpy, grad_spikes, options)),
                     (grad_single, spike_rate_backward_reference(single, grad_rate, T, options))], rtol, atol),
    )


def lif_bytes(T: int, N: int, itemsize: int) -> tuple[int, int]:
    """Bytes that must move: the forward reads x, writes spikes and h; the backward reads h, dL/ds, writes dL/dx."""
    return 3 * T * N * itemsize, 3 * T * N * itemsize


def rate_bytes(T: int, N: int, itemsize: int) -> tuple[int, int]:
    """The rate forward reads x, writes the rate; the backward reads x, dL/drate, writes dL/dx."""
    return 2 * N * itemsize, 3 * N * itemsize


def benchmark(device: str = "cpu", dtype=np.float32, neurons: int = 2**18, steps=(4, 32), repeats: int = 5,
              reference: bool = True) -> list[dict]:
    """Timings of SDiT's neuron (tau 2, threshold 1, hard reset to 0, ATan(2)), forward + backward:
    the NumPy reference (``reference`` and device "cpu") and the kernels on ``device``."""
    dtype, options = np.dtype(dtype), LIFOptions()
    kernels = LIFKernels(options, dtype)
    rng = np.random.default_rng(0)
    rows, size = [], lambda T: f"T={T} N={neurons}"
    for T in steps:
        x, grad = random_input(rng, (T, neurons), dtype), rng.normal(size=(T, neurons)).astype(dtype)
        moved = sum(lif_bytes(T, neurons, dtype.itemsize))
        if reference and device == "cpu":
            seconds = best_time(lambda: lif_backward_reference(lif_forward_reference(x, options)[1], grad, options),
                                "cpu", repeats)
            rows.append(timing("lif fwd+bwd", "numpy", "cpu", dtype, size(T), seconds, moved))
        x_d, grad_d = on_device(device, x, grad)
        seconds = best_time(lambda: kernels.backward(kernels.forward(x_d)[1], grad_d), device, repeats)
        rows.append(timing("lif fwd+bwd", "lif.cu", device, dtype, size(T), seconds, moved))
    for T in steps:
        x, grad = random_input(rng, neurons, dtype), rng.normal(size=neurons).astype(dtype)
        moved = sum(rate_bytes(T, neurons, dtype.itemsize))
        if reference and device == "cpu":
            seconds = best_time(lambda: (spike_rate_forward_reference(x, T, options),
                                         spike_rate_backward_reference(x, grad, T, options)), "cpu", repeats)
            rows.append(timing("spike_rate fwd+bwd", "numpy", "cpu", dtype, size(T), seconds, moved))
        x_d, grad_d = on_device(device, x, grad)
        seconds = best_time(lambda: (kernels.spike_rate_forward(x_d, T), kernels.spike_rate_backward(x_d, grad_d, T)),
                            device, repeats)
        rows.append(timing("spike_rate fwd+bwd", "lif.cu", device, dtype, size(T), seconds, moved))
    return rows


__all__ = ["KERNEL_FILE", "KERNELS", "benchmark", "check", "lif_bytes", "rate_bytes", "random_input", "variants"]
