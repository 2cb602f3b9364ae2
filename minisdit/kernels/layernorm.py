"""LayerNorm without affine as the two kernels of minisdit/kernels/layernorm.cu (docs/DESIGN.md §7).

REFERENCE: the weight-less branch of ``minisdit.autograd.nn_ops.LayerNorm`` (its docstring holds the
backward's derivation); ``layernorm_forward_reference`` / ``layernorm_backward_reference`` below
call it.  ``FUSED_LAYER_NORM`` is what the models hand to ``F.layer_norm(..., fused=FUSED_LAYER_NORM)``
(``autograd`` sits below ``kernels`` and cannot import them, so the kernels are injected, as the
trainer injects the fused AdamW).

Where the kernels run: on CuPy arrays always.  On NumPy arrays only when ``KERNELS_ON_CPU`` is set
*and* ``runtime.cpu_kernels()`` is selected: the kernel sums a row in order, NumPy's mean sums it
pairwise, so the CPU build is not bitwise the reference, and the command-line tools select the CPU
kernels by default; keeping the reference there keeps CPU training bitwise as before.  The launch
counter and the tests set ``KERNELS_ON_CPU`` to run the GPU's path on NumPy arrays.
"""
from __future__ import annotations

from ..autograd import backend
from ..autograd.nn_ops import LayerNorm
from . import runtime

KERNEL_FILE = "layernorm.cu"
# One thread per row: a GPU needs many rows in flight, and SDiT's rows are short (D <= 1024).
THREADS_PER_BLOCK = 128
KERNELS_ON_CPU = False


def layernorm_kernels(dtype) -> runtime.Kernels:
    """The kernels of layernorm.cu for arrays of ``dtype`` (float32 or float64, either device)."""
    return runtime.Kernels(KERNEL_FILE, {"scalar_t": runtime.scalar_type(dtype)}, gpu_block=THREADS_PER_BLOCK)


def layernorm_forward_kernel(x, eps: float, *, block: int | None = None, max_blocks: int | None = None):
    """x (..., D) -> x_hat (..., D), mean (..., 1), rstd (..., 1), in one launch of layernorm_forward."""
    xp = backend.array_module_of(x)
    x = xp.ascontiguousarray(x)
    rows, features = x.size // max(x.shape[-1], 1), x.shape[-1]
    y = xp.empty_like(x)
    mean, rstd = xp.empty(x.shape[:-1] + (1,), x.dtype), xp.empty(x.shape[:-1] + (1,), x.dtype)
    layernorm_kernels(x.dtype).run("layernorm_forward", rows, x, y, mean, rstd, rows, features, eps,
                                   block=block, max_blocks=max_blocks)
    return y, mean, rstd


def layernorm_backward_kernel(g, x_hat, rstd, *, block: int | None = None, max_blocks: int | None = None):
    """dL/dx (..., D) from g, the forward's x_hat and rstd (..., 1), in one launch of layernorm_backward."""
    xp = backend.array_module_of(x_hat)
    g = xp.ascontiguousarray(g, dtype=x_hat.dtype)
    rows, features = x_hat.size // max(x_hat.shape[-1], 1), x_hat.shape[-1]
    grad_x = xp.empty_like(x_hat)
    layernorm_kernels(x_hat.dtype).run("layernorm_backward", rows, g, x_hat, xp.ascontiguousarray(rstd), grad_x,
                                       rows, features, block=block, max_blocks=max_blocks)
    return grad_x


def layernorm_forward_reference(x, eps: float):
    """(x_hat, mean, rstd) of the LayerNorm Function's NumPy path."""
    function = LayerNorm(eps=eps)
    x_hat = function.forward(x)
    return x_hat, x.mean(axis=-1, keepdims=True), function.inverse_std


def layernorm_backward_reference(g, x, eps: float):
    """dL/dx of the LayerNorm Function's NumPy path (which recomputes x_hat and rstd from x)."""
    function = LayerNorm(eps=eps)
    function.forward(x)
    return function.backward(g)[0]


class FusedLayerNorm:
    """The ``fused`` object of ``nn_ops.LayerNorm``: the kernels where they apply (module docstring)."""

    @staticmethod
    def applies(x) -> bool:
        on_device = backend.is_gpu_array(x) or (KERNELS_ON_CPU and runtime.cpu_kernels_enabled())
        return on_device and x.dtype in runtime.SCALAR_TYPES and x.size > 0 and x.ndim >= 1

    @staticmethod
    def forward(x, eps):
        return layernorm_forward_kernel(x, eps)

    @staticmethod
    def backward(g, x_hat, rstd):
        return layernorm_backward_kernel(g, x_hat, rstd)


FUSED_LAYER_NORM = FusedLayerNorm()

__all__ = ["FUSED_LAYER_NORM", "FusedLayerNorm", "KERNEL_FILE", "layernorm_backward_kernel", "layernorm_backward_reference",
           "layernorm_forward_kernel", "layernorm_forward_reference", "layernorm_kernels"]
