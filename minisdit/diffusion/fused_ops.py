"""The fused training op of the diffusion loss: x_t and the ε-MSE, as NumPy references and the CUDA
kernels of ``minisdit/kernels/ddpm_loss.cu`` (docs/DESIGN.md §4, §7)."""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..autograd.tensor import Function, Tensor
from ..kernels import runtime

KERNEL_FILE = "ddpm_loss.cu"


# --------------------------------------------------------------------------------------------
# the fused training op: x_t and the ε-MSE (NumPy references and the CUDA kernels)
# --------------------------------------------------------------------------------------------
def _per_sample_column(values: np.ndarray, ndim: int) -> np.ndarray:
    """(N,) -> (N, 1, ..., 1) so that a per-sample value broadcasts over C, H, W."""
    return values.reshape((-1,) + (1,) * (ndim - 1))


def q_sample_reference(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar):
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with √ᾱ_t, √(1 − ᾱ_t) given per sample (N,)."""
    return (_per_sample_column(sqrt_alpha_bar, x0.ndim) * x0
            + _per_sample_column(sqrt_one_minus_alpha_bar, x0.ndim) * noise)


def squared_error_reference(predicted, target):
    """(ε̂ − ε)² elementwise."""
    difference = predicted - target
    return difference * difference


def epsilon_mse_reference(predicted, target):
    """L_n = mean over C, H, W of (ε̂ − ε)², one value per sample."""
    return squared_error_reference(predicted, target).reshape(predicted.shape[0], -1).mean(axis=1)


def epsilon_mse_backward_reference(predicted, target, grad_loss):
    """dL/dε̂ = 2 (ε̂ − ε) / (C·H·W) · g_n."""
    per_sample = predicted[0].size
    return 2.0 * (predicted - target) / per_sample * _per_sample_column(grad_loss, predicted.ndim)


def ddpm_kernels(dtype) -> "runtime.Kernels":
    """The kernels of minisdit/kernels/ddpm_loss.cu for arrays of ``dtype`` (either device)."""
    return runtime.Kernels(KERNEL_FILE, {"scalar_t": runtime.scalar_type(dtype)})


def q_sample_kernel(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, block: int | None = None,
                    max_blocks: int | None = None):
    """``ddpm_q_sample`` on the device of the arrays; the same result as ``q_sample_reference``.
    ``block``, ``max_blocks`` as in ``runtime.launch``."""
    xp = backend.array_module_of(x0)
    x0 = xp.ascontiguousarray(x0)
    noise = xp.ascontiguousarray(noise, dtype=x0.dtype)
    a = xp.ascontiguousarray(xp.asarray(sqrt_alpha_bar, dtype=x0.dtype))
    b = xp.ascontiguousarray(xp.asarray(sqrt_one_minus_alpha_bar, dtype=x0.dtype))
    x_t = xp.empty_like(x0)
    batch = x0.shape[0]
    ddpm_kernels(x0.dtype).run("ddpm_q_sample", x0.size, x0, noise, a, b, x_t, batch, x0.size // max(batch, 1),
                               block=block, max_blocks=max_blocks)
    return x_t


def squared_error_kernel(predicted, target, block: int | None = None, max_blocks: int | None = None):
    """``ddpm_squared_error``: (ε̂ − ε)² elementwise, as ``squared_error_reference``."""
    xp = backend.array_module_of(predicted)
    squared_error = xp.empty_like(predicted)
    ddpm_kernels(predicted.dtype).run("ddpm_squared_error", predicted.size, predicted, target, squared_error,
                                      predicted.size, block=block, max_blocks=max_blocks)
    return squared_error


def epsilon_mse_backward_kernel(predicted, target, grad_loss, block: int | None = None, max_blocks: int | None = None):
    """``ddpm_epsilon_mse_backward``: dL/dε̂, as ``epsilon_mse_backward_reference``."""
    xp = backend.array_module_of(predicted)
    grad = xp.empty_like(predicted)
    batch = predicted.shape[0]
    ddpm_kernels(predicted.dtype).run("ddpm_epsilon_mse_backward", predicted.size, predicted, target,
                                      xp.ascontiguousarray(grad_loss, dtype=predicted.dtype), grad,
                                      batch, predicted.size // max(batch, 1), block=block, max_blocks=max_blocks)
    return grad


def fused_q_sample(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar):
    """x_t (no gradient) from raw arrays: the kernel ``ddpm_q_sample`` on CuPy arrays (and on NumPy
    arrays inside ``runtime.cpu_kernels()``), else the reference."""
    if x0.shape != noise.shape:
        raise ValueError(f"noise has shape {noise.shape} but x0 has shape {x0.shape}; draw noise like x0")
    if not runtime.kernels_run_on(x0) or x0.size == 0:
        return q_sample_reference(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar)
    return q_sample_kernel(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar)


class EpsilonMSE(Function):
    """Per-sample mean square error between predicted and true noise.

    forward: L_n = (1/(C·H·W)) Σ_{c,h,w} (ε̂ − ε)²  → (N,)
    backward: dL/dε̂ = 2 (ε̂ − ε)/(C·H·W) · g_n,  dL/dε = −dL/dε̂.
    With the kernels (CuPy arrays, or NumPy arrays inside ``runtime.cpu_kernels()``): ``ddpm_squared_error``
    writes (ε̂ − ε)² (one thread per element, so the loads are coalesced), the array module's
    reduction takes the per-sample mean, and ``ddpm_epsilon_mse_backward`` gives the gradient
    (minisdit/kernels/ddpm_loss.cu).
    """

    def forward(self, predicted, target):
        if predicted.shape != target.shape or predicted.ndim < 1:
            raise ValueError(f"epsilon_mse needs predicted and true noise of one shape (N, ...), "
                             f"got {predicted.shape} and {target.shape}")
        self.predicted, self.target = predicted, target
        self.use_kernels = runtime.kernels_run_on(predicted) and predicted.size > 0
        if not self.use_kernels:
            return epsilon_mse_reference(predicted, target)
        xp = backend.array_module_of(predicted)
        self.predicted = xp.ascontiguousarray(predicted)
        self.target = xp.ascontiguousarray(target, dtype=predicted.dtype)
        return squared_error_kernel(self.predicted, self.target).reshape(predicted.shape[0], -1).mean(axis=1)

    def backward(self, g):
        if self.use_kernels:
            grad = epsilon_mse_backward_kernel(self.predicted, self.target, g)
        else:
            grad = epsilon_mse_backward_reference(self.predicted, self.target, g)
        return grad, (-grad if self.needs_input_grad[1] else None)


def epsilon_mse(predicted, target) -> Tensor:
    """Per-sample mean over C, H, W of (ε̂ − ε)²: a Tensor (N,) differentiable in both inputs."""
    return EpsilonMSE.apply(predicted, target)
