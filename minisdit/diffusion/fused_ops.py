"""The fused training op of the diffusion loss: x_t and the ε-MSE, as NumPy references and the CUDA
kernels of ``minisdit/kernels/ddpm_loss.cu`` (docs/DESIGN.md §4, §7)."""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..autograd.tensor import Function, Tensor
from ..kernels import runtime as cuda

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


def _gpu_kernel(name: str, dtype):
    if dtype == np.float32:
        scalar = "float"
    elif dtype == np.float64:
        scalar = "double"
    else:
        raise TypeError(f"the DDPM loss kernels take float32 or float64 arrays, got {dtype}; cast the data first")
    return cuda.gpu_function(KERNEL_FILE, name, {"scalar_t": scalar})


def _batch_and_per_sample(array) -> tuple[np.int32, np.int32]:
    return np.int32(array.shape[0]), np.int32(array.size // max(array.shape[0], 1))


def fused_q_sample(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar):
    """x_t (no gradient) from raw arrays; the CUDA kernel ``ddpm_q_sample`` on CuPy arrays."""
    if x0.shape != noise.shape:
        raise ValueError(f"noise has shape {noise.shape} but x0 has shape {x0.shape}; draw noise like x0")
    if not backend.is_gpu_array(x0) or x0.size == 0:
        return q_sample_reference(x0, noise, sqrt_alpha_bar, sqrt_one_minus_alpha_bar)
    xp = backend.array_module_of(x0)
    x0, noise = xp.ascontiguousarray(x0), xp.ascontiguousarray(noise.astype(x0.dtype, copy=False))
    a = xp.ascontiguousarray(xp.asarray(sqrt_alpha_bar, dtype=x0.dtype))
    b = xp.ascontiguousarray(xp.asarray(sqrt_one_minus_alpha_bar, dtype=x0.dtype))
    x_t = xp.empty_like(x0)
    batch, per_sample = _batch_and_per_sample(x0)
    grid, block = cuda.launch_configuration(x0.size)
    _gpu_kernel("ddpm_q_sample", x0.dtype)(grid, block, (x0, noise, a, b, x_t, batch, per_sample))
    return x_t


class EpsilonMSE(Function):
    """Per-sample mean square error between predicted and true noise.

    forward: L_n = (1/(C·H·W)) Σ_{c,h,w} (ε̂ − ε)²  → (N,)
    backward: dL/dε̂ = 2 (ε̂ − ε)/(C·H·W) · g_n,  dL/dε = −dL/dε̂.
    CuPy arrays: the kernel ``ddpm_squared_error`` writes (ε̂ − ε)² (one thread per element, so the
    loads are coalesced), CuPy's reduction takes the per-sample mean, and ``ddpm_epsilon_mse_backward``
    gives the gradient (minisdit/kernels/ddpm_loss.cu).
    """

    def forward(self, predicted, target):
        if predicted.shape != target.shape or predicted.ndim < 1:
            raise ValueError(f"epsilon_mse needs predicted and true noise of one shape (N, ...), "
                             f"got {predicted.shape} and {target.shape}")
        self.predicted, self.target = predicted, target
        if not backend.is_gpu_array(predicted) or predicted.size == 0:
            return epsilon_mse_reference(predicted, target)
        xp = backend.array_module_of(predicted)
        self.predicted = xp.ascontiguousarray(predicted)
        self.target = xp.ascontiguousarray(target.astype(predicted.dtype, copy=False))
        squared_error = xp.empty_like(self.predicted)
        grid, block = cuda.launch_configuration(predicted.size)
        _gpu_kernel("ddpm_squared_error", predicted.dtype)(
            grid, block, (self.predicted, self.target, squared_error, np.int64(predicted.size)))
        return squared_error.reshape(predicted.shape[0], -1).mean(axis=1)

    def backward(self, g):
        if not backend.is_gpu_array(g) or self.predicted.size == 0:
            grad = epsilon_mse_backward_reference(self.predicted, self.target, g)
        else:
            xp = backend.array_module_of(g)
            grad = xp.empty_like(self.predicted)
            batch, per_sample = _batch_and_per_sample(self.predicted)
            grid, block = cuda.launch_configuration(self.predicted.size)
            _gpu_kernel("ddpm_epsilon_mse_backward", self.predicted.dtype)(
                grid, block, (self.predicted, self.target, xp.ascontiguousarray(g.astype(grad.dtype, copy=False)),
                              grad, batch, per_sample))
        return grad, (-grad if self.needs_input_grad[1] else None)


def epsilon_mse(predicted, target) -> Tensor:
    """Per-sample mean over C, H, W of (ε̂ − ε)²: a Tensor (N,) differentiable in both inputs."""
    return EpsilonMSE.apply(predicted, target)
