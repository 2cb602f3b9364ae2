"""RWKV's token shift with its mixes as one fused ``Function`` (docs/DESIGN.md §3, TimeMix, ChannelMix).

For z (N, L, D) and K <= 3 per-channel mixes mu_k (D,),

    x^k_n = mu_k z_n + (1 - mu_k) z_{n-1},   z_{-1} = 0.

Backward, with g_k = dL/dx^k: z_n feeds x^k_n with weight mu_k and x^k_{n+1} with weight 1 - mu_k, and
dx^k_n/dmu_k = z_n - z_{n-1}, so

    dL/dz_n  = sum_k mu_k g_k[n] + (1 - mu_k) g_k[n+1]   (g_k[L] = 0),
    dL/dmu_k = sum over samples and positions of g_k[n] (z_n - z_{n-1}).

``TokenShiftMix`` returns the K mixes stacked (K, N, L, D).  On NumPy arrays it runs the references
below (vectorised NumPy); on CuPy arrays one launch of ``token_shift_mix_forward`` and, backward, one
of ``token_shift_mix_backward`` plus one reduction over the samples (minisdit/kernels/token_shift.cu).
On NumPy arrays the kernels run only with ``KERNELS_ON_CPU`` set inside ``runtime.cpu_kernels()``
(the launch counter and tests): the forward is bitwise the reference, the backward sums in another
order, and the layers keep today's composition on the CPU so that training stays bitwise as before
(``_mixes`` in layers.py).
"""
from __future__ import annotations

from ..autograd import backend
from ..autograd.flat import stacked_grad_view
from ..autograd.tensor import Function, sum_into
from ..kernels import runtime

KERNEL_FILE = "token_shift.cu"
THREADS_PER_BLOCK = 256
KERNELS_ON_CPU = False


def kernels_apply(z) -> bool:
    """Whether the token-shift kernels run on ``z`` (module docstring)."""
    on_device = backend.is_gpu_array(z) or (KERNELS_ON_CPU and runtime.cpu_kernels_enabled())
    return on_device and z.dtype in runtime.SCALAR_TYPES


# ---------------------------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------------------------
def shifted_reference(z):
    """z_{n-1} for every position (z_{-1} = 0)."""
    xp = backend.array_module_of(z)
    shifted = xp.zeros_like(z)
    shifted[:, 1:] = z[:, :-1]
    return shifted


def token_shift_mix_reference(z, mixes):
    """The K mixes (K, N, L, D), each in the layers' order of operations: z mu + z_{n-1} (1 - mu)."""
    xp = backend.array_module_of(z)
    shifted = shifted_reference(z)
    return xp.stack([z * mu + shifted * (1 - mu) for mu in mixes])


def token_shift_mix_backward_reference(z, mixes, g):
    """(dL/dz, [dL/dmu_k]) from g (K, N, L, D), by the module docstring's formulas."""
    grad_z = sum(mu * g_k for mu, g_k in zip(mixes, g))
    grad_z[:, :-1] += sum((1 - mu) * g_k[:, 1:] for mu, g_k in zip(mixes, g))
    difference = z - shifted_reference(z)
    return grad_z, [(g_k * difference).sum(axis=(0, 1)) for g_k in g]


# ---------------------------------------------------------------------------------------------
# the kernels
# ---------------------------------------------------------------------------------------------
def token_shift_kernels(dtype) -> runtime.Kernels:
    return runtime.Kernels(KERNEL_FILE, {"scalar_t": runtime.scalar_type(dtype)}, gpu_block=THREADS_PER_BLOCK)


def _mix_arrays(mixes, xp, dtype):
    arrays = [xp.ascontiguousarray(mu, dtype=dtype) for mu in mixes]
    return arrays + [arrays[0]] * (3 - len(arrays))  # the kernel reads only the first K


def token_shift_mix_forward_kernel(z, mixes, *, block: int | None = None, max_blocks: int | None = None):
    """The K mixes (K, N, L, D) in one launch of token_shift_mix_forward."""
    xp = backend.array_module_of(z)
    z = xp.ascontiguousarray(z)
    batch, length, channels = z.shape
    out = xp.empty((len(mixes),) + z.shape, z.dtype)
    token_shift_kernels(z.dtype).run("token_shift_mix_forward", z.size, z, *_mix_arrays(mixes, xp, z.dtype), out,
                                     batch, length, channels, len(mixes), block=block, max_blocks=max_blocks)
    return out


def token_shift_mix_backward_kernel(z, mixes, g, *, grad_mixes=None, block: int | None = None,
                                    max_blocks: int | None = None):
    """(dL/dz, dL/dmu (K, D)): one launch of token_shift_mix_backward, one reduction over the samples
    (written into ``grad_mixes``, a (K, D) array, where given: the mixes' stacked gradient views)."""
    xp = backend.array_module_of(z)
    z = xp.ascontiguousarray(z)
    g = xp.ascontiguousarray(g, dtype=z.dtype)
    batch, length, channels = z.shape
    grad_z = xp.empty_like(z)
    partial = xp.empty((len(mixes), batch, channels), z.dtype)
    token_shift_kernels(z.dtype).run("token_shift_mix_backward", batch * channels, z, g,
                                     *_mix_arrays(mixes, xp, z.dtype), grad_z, partial, batch, length, channels,
                                     len(mixes), block=block, max_blocks=max_blocks)
    return grad_z, sum_into(partial, 1, grad_mixes)


# ---------------------------------------------------------------------------------------------
# the Function
# ---------------------------------------------------------------------------------------------
class TokenShiftMix(Function):
    """z (N, L, D), mu_0 .. mu_{K-1} (D,) -> the K mixes stacked (K, N, L, D) (module docstring)."""

    def forward(self, z, *mixes):
        if z.ndim != 3 or not 1 <= len(mixes) <= 3 or any(mu.shape != (z.shape[2],) for mu in mixes):
            raise ValueError(f"token_shift_mix takes tokens (N, L, D) and 1 to 3 mixes of shape (D,); got {z.shape} "
                             f"and {[mu.shape for mu in mixes]}")
        self.z, self.mixes = z, mixes
        self.use_kernels = kernels_apply(z) and z.size > 0
        if self.use_kernels:
            return token_shift_mix_forward_kernel(z, mixes)
        return token_shift_mix_reference(z, mixes)

    def backward(self, g):
        if self.use_kernels:
            # the K mix gradients straight into their flat-buffer views when these lie one after another
            targets = [self.grad_target(1 + k) for k in range(len(self.mixes))]
            stacked = stacked_grad_view(self.inputs[1:]) if all(t is not None for t in targets) else None
            if stacked is not None and stacked.dtype != self.z.dtype:
                stacked = None
            grad_z, grad_mixes = token_shift_mix_backward_kernel(self.z, self.mixes, g, grad_mixes=stacked)
            if stacked is not None:
                return (grad_z,) + tuple(targets)
        else:
            grad_z, grad_mixes = token_shift_mix_backward_reference(self.z, self.mixes, g)
        return (grad_z,) + tuple(grad_mixes[k] for k in range(len(self.mixes)))


def token_shift_mix(z, *mixes):
    """The K mixes of z as K tensors (views of one stacked result), through ``TokenShiftMix``."""
    stacked = TokenShiftMix.apply(z, *mixes)
    return [stacked[k] for k in range(len(mixes))]


__all__ = ["KERNEL_FILE", "TokenShiftMix", "kernels_apply", "shifted_reference", "token_shift_kernels",
           "token_shift_mix", "token_shift_mix_backward_kernel", "token_shift_mix_backward_reference",
           "token_shift_mix_forward_kernel", "token_shift_mix_reference"]
