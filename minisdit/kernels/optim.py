"""The fused optimizer updates: AdamW and the EMA of the weights, each one launch of
minisdit/kernels/optim.cu over a flat buffer (autograd/flat.py), with the signatures of their
NumPy references in minisdit/autograd/optim.py (``adamw_step_reference``, ``ema_update_reference``).

``FUSED`` is what the trainer hands to ``AdamW(..., fused=FUSED)`` and ``EMA(..., fused=FUSED)``:
on CuPy arrays it launches the kernels (one instead of 14 elementwise launches per parameter for
AdamW, 3 per parameter for EMA); on NumPy arrays it runs the kernels' C++ build inside
``runtime.cpu_kernels()`` and the references elsewhere.  The C++ build rounds exactly like the
references (same float operations in the same order, scalars rounded once on the host), which
tests/kernels/test_optim_kernel.py asserts bit for bit, so selecting the CPU kernels does not change
a training run.
"""
from __future__ import annotations

import math

from ..autograd.optim import adamw_step_blocked, ema_update_blocked
from . import runtime

KERNEL_FILE = "optim.cu"


def _kernels(array) -> runtime.Kernels:
    return runtime.Kernels(KERNEL_FILE, {"scalar_t": runtime.scalar_type(array.dtype)})


def adamw_step_kernel(param, grad, exp_avg, exp_avg_sq, lr: float, beta1: float, beta2: float, eps: float,
                      weight_decay: float, step: int, *, block: int | None = None, max_blocks: int | None = None) -> None:
    """``adamw_step_reference`` as one launch of adamw_step (in place on param, exp_avg, exp_avg_sq).

    The per-step scalars are computed here in double, as the reference computes them, and each is
    rounded once to the arrays' dtype when it is passed."""
    step_size = lr / (1.0 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    kernels, n = _kernels(param), param.size
    launch = dict(block=block, max_blocks=max_blocks)
    if weight_decay:
        kernels.run("adamw_step", n, grad, param, exp_avg, exp_avg_sq, n, 1.0 - lr * weight_decay, beta1, 1.0 - beta1,
                    beta2, 1.0 - beta2, step_size, bias_correction2_sqrt, eps, **launch)
    else:
        kernels.run("adamw_step_no_decay", n, grad, param, exp_avg, exp_avg_sq, n, beta1, 1.0 - beta1,
                    beta2, 1.0 - beta2, step_size, bias_correction2_sqrt, eps, **launch)


def ema_update_kernel(shadow, param, decay: float, *, block: int | None = None, max_blocks: int | None = None) -> None:
    """``ema_update_reference`` as one launch of ema_update (in place on shadow)."""
    _kernels(shadow).run("ema_update", shadow.size, param, shadow, shadow.size, decay, 1.0 - decay,
                         block=block, max_blocks=max_blocks)


def _kernel_applies(*arrays) -> bool:
    """The kernels take C-contiguous float32/float64 arrays of one dtype where kernels run."""
    return (runtime.kernels_run_on(arrays[0]) and arrays[0].dtype in runtime.SCALAR_TYPES
            and all(a.dtype == arrays[0].dtype and a.flags.c_contiguous for a in arrays))


class FusedUpdates:
    """``adamw_step`` and ``ema_update`` for AdamW and EMA: the kernel where kernels run, else the reference."""

    @staticmethod
    def adamw_step(param, grad, exp_avg, exp_avg_sq, *hyperparameters):
        if _kernel_applies(param, grad, exp_avg, exp_avg_sq):
            adamw_step_kernel(param, grad, exp_avg, exp_avg_sq, *hyperparameters)
        else:
            adamw_step_blocked(param, grad, exp_avg, exp_avg_sq, *hyperparameters)

    @staticmethod
    def ema_update(shadow, param, decay):
        if _kernel_applies(shadow, param):
            ema_update_kernel(shadow, param, decay)
        else:
            ema_update_blocked(shadow, param, decay)


FUSED = FusedUpdates()

__all__ = ["FUSED", "FusedUpdates", "KERNEL_FILE", "adamw_step_kernel", "ema_update_kernel"]
