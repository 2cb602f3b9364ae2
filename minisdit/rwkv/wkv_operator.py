"""The RWKV-4 WKV operator (docs/DESIGN.md §3, TimeMix).

``wkv(time_decay, time_first, k, v)`` is one fused ``Function``: on NumPy arrays it runs the
recurrences below vectorised over (batch, channel) with a Python loop over positions; on CuPy
arrays (and on NumPy arrays inside ``minisdit.kernels.runtime.cpu_kernels()``) it runs the same
recurrences in ``minisdit/kernels/wkv.cu``, one thread per (batch, channel).
The two implementations take and return the same arrays, so the NumPy functions here are the
reference that the kernel tests compare against.

``wkv(time_decay, time_first, k, v, r=r)`` is TimeMix's gated value σ(r) ⊙ wkv in the same launch
(forward and backward), instead of a sigmoid, a product and their backward as separate launches.
"""
from __future__ import annotations


import numpy as np

from ..autograd import backend
from ..autograd.ops import _sigmoid as sigmoid_array  # F.sigmoid's array function: the same bits
from ..autograd.tensor import Function, sum_into
from ..kernels import runtime

# The "minus infinity" that starts a running maximum.  A finite number keeps exp(o - o') exactly 0
# without ever forming inf - inf; -1e38 fits in float32 (as in the RWKV-4 kernels).
MIN_EXPONENT = -1e38

KERNEL_FILE = "wkv.cu"
# The gate inside the kernel on a GPU; on the CPU's C++ kernels the WKV kernel alone and the gate
# by NumPy: C++'s expf rounds σ(r) differently from NumPy's exp in the last bit now and then, and
# the CPU training must stay bitwise what it was (a 60-step MNIST run parted at step 10).  Tests and
# the launch counter set this to run the GPU's gated kernels on NumPy arrays too.
GATE_IN_KERNEL_ON_CPU = False

# Threads per block.  A WKV launch has only batch * channels threads (12,288 for the paper's
# model), so small blocks spread them over all the streaming multiprocessors; each warp still
# reads 32 consecutive channels, i.e. whole 128-byte lines.
THREADS_PER_BLOCK = 32


# ---------------------------------------------------------------------------------------------
# NumPy reference: the recurrences, vectorised over (batch, channel)
# ---------------------------------------------------------------------------------------------
def wkv_forward_numpy(w, u, k, v):
    """y_n and ln D_n for every position, with the stable running-max recurrence.

    Per channel, with a_n = sum_{i<n} e^{-(n-1-i)w + k_i} v_i and b_n the same sum without v_i,

        y_n = (a_n + e^{u+k_n} v_n) / D_n,    D_n = b_n + e^{u+k_n},
        a_{n+1} = e^{-w} a_n + e^{k_n} v_n,   b_{n+1} = e^{-w} b_n + e^{k_n}.

    The state is kept as (p, q, o) with a_n = p e^o, b_n = q e^o, where o is the largest
    exponent seen so far, o_n = max_{i<n} (k_i - (n-1-i) w); every exponential we form is then
    e^{(something) - (its maximum)} <= 1, so nothing overflows for any k.  ln D_n is returned too:
    the backward pass needs 1/D_n and cannot rebuild it cheaply while walking backwards in time.

    w, u: (C,) (w = e^{time_decay} > 0);  k, v: (B, L, C).  Returns y, log_denominator: (B, L, C).
    """
    xp = backend.array_module_of(k)
    batch, length, channels = k.shape
    dtype = k.dtype
    y = xp.empty_like(k)
    log_denominator = xp.empty_like(k)
    p = xp.zeros((batch, channels), dtype)
    q = xp.zeros((batch, channels), dtype)
    o = xp.full((batch, channels), MIN_EXPONENT, dtype)
    for n in range(length):
        k_n, v_n = k[:, n], v[:, n]
        # output: the state plus the current token with its bonus u
        o_out = xp.maximum(o, u + k_n)
        state_scale, token_scale = xp.exp(o - o_out), xp.exp(u + k_n - o_out)
        denominator = state_scale * q + token_scale  # = D_n e^{-o_out} >= 1
        y[:, n] = (state_scale * p + token_scale * v_n) / denominator
        log_denominator[:, n] = o_out + xp.log(denominator)
        # state update: decay by e^{-w}, add the current token without the bonus
        o_next = xp.maximum(o - w, k_n)
        state_scale, token_scale = xp.exp(o - w - o_next), xp.exp(k_n - o_next)
        p = state_scale * p + token_scale * v_n
        q = state_scale * q + token_scale
        o = o_next
    return y, log_denominator


def wkv_backward_numpy(w, u, k, v, y, log_denominator, grad_y):
    """dL/dk, dL/dv (B, L, C) and dL/dw, dL/du per (batch, channel) (B, C), walking backwards.

    With g_n = dL/dy_n and e_n = e^{u+k_n}/D_n (<= 1), differentiating y_n = (a_n + e^{u+k_n} v_n)/D_n:

        dy_n/dv_n = e_n,   dy_n/dk_n = dy_n/du = e_n (v_n - y_n),
        dy_n/dv_i = e^{-(n-1-i)w + k_i} / D_n,   dy_n/dk_i = e^{-(n-1-i)w + k_i} (v_i - y_n) / D_n   (i < n),
        dy_n/dw = -sum_{i<n} (n-1-i) e^{-(n-1-i)w + k_i} (v_i - y_n) / D_n.

    Summing over n with the reverse-time accumulators (sums over the later positions n > i)

        alpha_i  = sum_{n>i} e^{-(n-1-i)w} g_n / D_n,            beta_i  = same with g_n y_n,
        alpha'_i = sum_{n>i} (n-1-i) e^{-(n-1-i)w} g_n / D_n,    beta'_i = same with g_n y_n,
        alpha_{i-1} = e^{-w} alpha_i + g_i / D_i,   alpha'_{i-1} = e^{-w} (alpha'_i + alpha_i),

    gives
        dL/dv_i = g_i e_i + e^{k_i} alpha_i,
        dL/dk_i = g_i e_i (v_i - y_i) + e^{k_i} (v_i alpha_i - beta_i),
        dL/du   = sum_i g_i e_i (v_i - y_i),
        dL/dw   = -sum_i e^{k_i} (v_i alpha'_i - beta'_i).

    Stability: the accumulators are kept as (A, B, A', B') e^{s}, s_i = max_{n>i} (-(n-1-i)w - ln D_n)
    the largest exponent they contain.  Because D_n >= e^{k_i - (n-1-i)w} for every i < n, the
    factor e^{k_i + s_i} is <= 1, and so is every other exponential formed here.
    The caller turns dL/dw into dL/dtime_decay = w dL/dw (w = e^{time_decay}) and sums over B.
    """
    xp = backend.array_module_of(k)
    batch, length, channels = k.shape
    dtype = k.dtype
    grad_k = xp.empty_like(k)
    grad_v = xp.empty_like(k)
    grad_w = xp.zeros((batch, channels), dtype)
    grad_u = xp.zeros((batch, channels), dtype)
    alpha = xp.zeros((batch, channels), dtype)         # A
    beta = xp.zeros((batch, channels), dtype)          # B
    alpha_prime = xp.zeros((batch, channels), dtype)   # A'
    beta_prime = xp.zeros((batch, channels), dtype)    # B'
    s = xp.full((batch, channels), MIN_EXPONENT, dtype)
    for i in range(length - 1, -1, -1):
        k_i, v_i, y_i, g_i, log_d_i = k[:, i], v[:, i], y[:, i], grad_y[:, i], log_denominator[:, i]
        later = xp.exp(k_i + s)               # e^{k_i} times the scale of the accumulators
        e_i = xp.exp(u + k_i - log_d_i)       # the current token's own weight in y_i
        direct = g_i * e_i * (v_i - y_i)
        grad_v[:, i] = g_i * e_i + later * alpha
        grad_k[:, i] = direct + later * (v_i * alpha - beta)
        grad_u += direct
        grad_w -= later * (v_i * alpha_prime - beta_prime)
        # move the accumulators from "n > i" to "n > i - 1": decay them and add position i
        s_next = xp.maximum(s - w, -log_d_i)
        decay, fresh = xp.exp(s - w - s_next), xp.exp(-log_d_i - s_next)
        alpha_prime = decay * (alpha_prime + alpha)
        beta_prime = decay * (beta_prime + beta)
        alpha = decay * alpha + fresh * g_i
        beta = decay * beta + fresh * g_i * y_i
        s = s_next
    return grad_k, grad_v, grad_w, grad_u


def gated_forward_numpy(r, wkv):
    """The gate of TimeMix:  y = σ(r) ⊙ wkv.  Returns y (B, L, C).

    The same array operations as ``F.sigmoid(r) * wkv`` (so on NumPy the fused operator gives the
    bits the separate ops gave)."""
    return sigmoid_array(r) * wkv


def gated_backward_numpy(r, wkv, grad_y):
    """The gate's gradients, from g = dL/dy of y = σ(r) ⊙ wkv:

        dL/dr = g ⊙ wkv ⊙ σ(r) (1 - σ(r)),    dL/dwkv = g ⊙ σ(r).

    (dσ/dr = σ (1 - σ).)  Returns dL/dr, dL/dwkv (B, L, C), the latter for ``wkv_backward_numpy``;
    evaluated left to right as the sigmoid's and the product's own backward passes do."""
    gate = sigmoid_array(r)
    return grad_y * wkv * gate * (1 - gate), grad_y * gate


def wkv_quadratic_numpy(time_decay, time_first, k, v):
    """WKV straight from its definition, O(L^2) per channel: a softmax over the exponents.

    wkv_n = sum_j softmax_j(e_{n,j}) v_j  with  e_{n,i} = -(n-1-i) w + k_i (i < n),  e_{n,n} = u + k_n,
    and the softmax taken in log space (subtract the largest exponent), so any k is fine.  Used by
    the tests as the ground truth; memory grows as B L^2 C, so keep L small.
    """
    w, u = np.exp(time_decay), time_first
    length = k.shape[1]
    n = np.arange(length)[:, None]
    i = np.arange(length)[None, :]
    earlier = -(n - 1 - i)[None, :, :, None] * w + k[:, None, :, :]   # (B, n, i, C)
    current = (u + k)[:, :, None, :]                                   # (B, n, 1, C), used where i = n
    exponent = np.where((i == n)[None, :, :, None], current, earlier)
    exponent = np.where((i > n)[None, :, :, None], -np.inf, exponent)  # causal: only i <= n
    weight = np.exp(exponent - exponent.max(axis=2, keepdims=True))
    return (weight * v[:, None, :, :]).sum(axis=2) / weight.sum(axis=2)


# ---------------------------------------------------------------------------------------------
# CUDA kernels (minisdit/kernels/wkv.cu): the same recurrences, one thread per (batch, channel)
# ---------------------------------------------------------------------------------------------
def kernel_defines(dtype) -> dict:
    return {"scalar_t": runtime.scalar_type(dtype)}


def wkv_kernels(dtype) -> "runtime.Kernels":
    """The kernels of minisdit/kernels/wkv.cu for arrays of ``dtype`` (either device)."""
    return runtime.Kernels(KERNEL_FILE, kernel_defines(dtype), gpu_block=THREADS_PER_BLOCK)


def wkv_forward_kernel(w, u, k, v, block: int | None = None, max_blocks: int | None = None):
    """``wkv_forward`` of minisdit/kernels/wkv.cu on the device of the arrays; the same result as
    ``wkv_forward_numpy``.  All arrays C-contiguous and of one dtype.  ``block``, ``max_blocks`` as
    in ``runtime.launch`` (None: one CPU thread, or ``THREADS_PER_BLOCK`` on a GPU)."""
    xp = backend.array_module_of(k)
    batch, length, channels = k.shape
    y, log_denominator = xp.empty_like(k), xp.empty_like(k)
    wkv_kernels(k.dtype).run("wkv_forward", batch * channels, w, u, k, v, y, log_denominator, batch, length, channels,
                             block=block, max_blocks=max_blocks)
    return y, log_denominator


def wkv_backward_kernel(w, u, k, v, y, log_denominator, grad_y, block: int | None = None,
                        max_blocks: int | None = None):
    """``wkv_backward``; the same results as ``wkv_backward_numpy`` (dL/dw, dL/du per (b, c))."""
    xp = backend.array_module_of(k)
    batch, length, channels = k.shape
    grad_k, grad_v = xp.empty_like(k), xp.empty_like(k)
    grad_w = xp.empty((batch, channels), k.dtype)
    grad_u = xp.empty((batch, channels), k.dtype)
    wkv_kernels(k.dtype).run("wkv_backward", batch * channels, w, u, k, v, y, log_denominator, grad_y,
                             grad_k, grad_v, grad_w, grad_u, batch, length, channels, block=block, max_blocks=max_blocks)
    return grad_k, grad_v, grad_w, grad_u


def wkv_gated_forward_kernel(w, u, k, v, r, block: int | None = None, max_blocks: int | None = None):
    """``wkv_gated_forward``: out = σ(r) ⊙ wkv, wkv and ln D in one launch; the same results as
    ``gated_forward_numpy(r, *wkv_forward_numpy(w, u, k, v))`` (plus the two it is made from)."""
    xp = backend.array_module_of(k)
    batch, length, channels = k.shape
    out, y, log_denominator = xp.empty_like(k), xp.empty_like(k), xp.empty_like(k)
    wkv_kernels(k.dtype).run("wkv_gated_forward", batch * channels, w, u, k, v, r, out, y, log_denominator,
                             batch, length, channels, block=block, max_blocks=max_blocks)
    return out, y, log_denominator


def wkv_gated_backward_kernel(w, u, k, v, r, y, log_denominator, grad_out, block: int | None = None,
                              max_blocks: int | None = None):
    """``wkv_gated_backward`` from dL/dout (y the ungated wkv): dL/dk, dL/dv, dL/dr (B, L, C) and
    dL/dw, dL/du per (b, c); the same as ``gated_backward_numpy`` then ``wkv_backward_numpy``."""
    xp = backend.array_module_of(k)
    batch, length, channels = k.shape
    grad_k, grad_v, grad_r = xp.empty_like(k), xp.empty_like(k), xp.empty_like(k)
    grad_w = xp.empty((batch, channels), k.dtype)
    grad_u = xp.empty((batch, channels), k.dtype)
    wkv_kernels(k.dtype).run("wkv_gated_backward", batch * channels, w, u, k, v, r, y, log_denominator, grad_out,
                             grad_k, grad_v, grad_r, grad_w, grad_u, batch, length, channels, block=block,
                             max_blocks=max_blocks)
    return grad_k, grad_v, grad_r, grad_w, grad_u


# ---------------------------------------------------------------------------------------------
# the differentiable operator
# ---------------------------------------------------------------------------------------------
class WKV(Function):
    """y = WKV(time_decay, time_first, k, v) with w = e^{time_decay}, u = time_first (docs/DESIGN.md §3).

    Backward: see ``wkv_backward_numpy``; dL/dtime_decay = w dL/dw (w enters the recurrence as -w),
    and the gradients of time_decay and time_first are summed over the batch.
    """

    gated = False

    def forward(self, time_decay, time_first, k, v):
        _check_inputs(time_decay, time_first, k, v)
        xp = backend.array_module_of(k)
        self.vector_dtypes = (time_decay.dtype, time_first.dtype)
        dtype = k.dtype
        w = xp.ascontiguousarray(xp.exp(time_decay.astype(dtype, copy=False)))
        u = xp.ascontiguousarray(time_first.astype(dtype, copy=False))
        k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
        # the kernels on CuPy arrays, and on NumPy arrays inside runtime.cpu_kernels(); else the reference
        self.use_kernels = runtime.kernels_run_on(k)
        if self.use_kernels:
            y, log_denominator = wkv_forward_kernel(w, u, k, v)
        else:
            y, log_denominator = wkv_forward_numpy(w, u, k, v)
        self.saved = (w, u, k, v, y, log_denominator)
        return y

    def backward(self, grad_y):
        w, u, k, v, y, log_denominator = self.saved
        xp = backend.array_module_of(k)
        grad_y = xp.ascontiguousarray(grad_y.astype(k.dtype, copy=False))
        if self.use_kernels:
            grad_k, grad_v, grad_w, grad_u = wkv_backward_kernel(w, u, k, v, y, log_denominator, grad_y)
        else:
            grad_k, grad_v, grad_w, grad_u = wkv_backward_numpy(w, u, k, v, y, log_denominator, grad_y)
        return self._vector_grads(w, grad_w, grad_u, 0) + (grad_k, grad_v)

    def _vector_grads(self, w, grad_w, grad_u, first: int):
        """dL/dtime_decay = w * (dL/dw summed over the batch) and dL/dtime_first, the batch sum of
        dL/du (inputs ``first`` and ``first + 1``), each written into its parameter's gradient view
        where one is offered (``Function.grad_target``) and has the computing dtype."""
        decay_target, first_target = self.grad_target(first), self.grad_target(first + 1)
        if decay_target is not None and decay_target.dtype == w.dtype:
            grad_time_decay = decay_target
            backend.array_module_of(w).multiply(w, grad_w.sum(axis=0), out=decay_target)
        else:
            grad_time_decay = (w * grad_w.sum(axis=0)).astype(self.vector_dtypes[0], copy=False)
        if first_target is not None and first_target.dtype == grad_u.dtype:
            grad_time_first = sum_into(grad_u, 0, first_target)
        else:
            grad_time_first = grad_u.sum(axis=0).astype(self.vector_dtypes[1], copy=False)
        return grad_time_decay, grad_time_first


class GatedWKV(WKV):
    """out = σ(r) ⊙ WKV(time_decay, time_first, k, v): TimeMix's gated value as one operator.

    Backward: dL/dr and dL/dwkv from ``gated_backward_numpy``, then the WKV backward with dL/dwkv.
    One launch each way on a GPU (``wkv_gated_forward``/``wkv_gated_backward``); with the CPU's
    compiled kernels the plain WKV kernels and the gate in NumPy (``GATE_IN_KERNEL_ON_CPU``).
    r comes first among the inputs so that the backward pass walks the graph's branches in the
    order it walked them for ``F.sigmoid(r) * wkv(...)`` (the product's second factor, the WKV
    inputs, first): the gradients that meet at TimeMix's input add up in the same order, bitwise
    as before on the CPU.
    """

    def forward(self, r, time_decay, time_first, k, v):
        _check_inputs(time_decay, time_first, k, v)
        if r.shape != k.shape or r.dtype != k.dtype or backend.is_gpu_array(r) != backend.is_gpu_array(k):
            raise ValueError(f"wkv's gate r must be like k: shape {k.shape}, dtype {k.dtype}, on k's device; got "
                             f"shape {r.shape}, dtype {r.dtype}; pass the receptance projection of the same tokens")
        xp = backend.array_module_of(k)
        self.vector_dtypes = (time_decay.dtype, time_first.dtype)
        dtype = k.dtype
        w = xp.ascontiguousarray(xp.exp(time_decay.astype(dtype, copy=False)))
        u = xp.ascontiguousarray(time_first.astype(dtype, copy=False))
        k, v, r = xp.ascontiguousarray(k), xp.ascontiguousarray(v), xp.ascontiguousarray(r)
        self.use_kernels = runtime.kernels_run_on(k)
        self.gate_in_kernel = self.use_kernels and (GATE_IN_KERNEL_ON_CPU or backend.is_gpu_array(k))
        if self.gate_in_kernel:
            out, y, log_denominator = wkv_gated_forward_kernel(w, u, k, v, r)
        else:
            forward = wkv_forward_kernel if self.use_kernels else wkv_forward_numpy
            y, log_denominator = forward(w, u, k, v)
            out = gated_forward_numpy(r, y)
        self.saved = (w, u, k, v, r, y, log_denominator)
        return out

    def backward(self, grad_out):
        w, u, k, v, r, y, log_denominator = self.saved
        xp = backend.array_module_of(k)
        grad_out = xp.ascontiguousarray(grad_out.astype(k.dtype, copy=False))
        if self.gate_in_kernel:
            grad_k, grad_v, grad_r, grad_w, grad_u = wkv_gated_backward_kernel(w, u, k, v, r, y, log_denominator,
                                                                               grad_out)
        else:
            grad_r, grad_y = gated_backward_numpy(r, y, grad_out)
            backward = wkv_backward_kernel if self.use_kernels else wkv_backward_numpy
            grad_k, grad_v, grad_w, grad_u = backward(w, u, k, v, y, log_denominator, grad_y)
        return (grad_r,) + self._vector_grads(w, grad_w, grad_u, 1) + (grad_k, grad_v)


def _check_inputs(time_decay, time_first, k, v):
    if k.ndim != 3 or v.shape != k.shape:
        raise ValueError(f"wkv needs k and v of one shape (B, L, C); got k {k.shape} and v {v.shape}")
    channels = k.shape[2]
    if time_decay.shape != (channels,) or time_first.shape != (channels,):
        raise ValueError(f"wkv needs time_decay and time_first of shape (C,) = ({channels},); "
                         f"got {time_decay.shape} and {time_first.shape}")
    if k.dtype != v.dtype or np.dtype(k.dtype) not in runtime.SCALAR_TYPES:
        raise TypeError(f"wkv needs k and v both float32 or both float64; got {k.dtype} and {v.dtype} (cast them with .astype)")
    if len({backend.is_gpu_array(a) for a in (time_decay, time_first, k, v)}) > 1:
        raise ValueError("wkv needs all four inputs on one device; move them with .to(device=...)")


def wkv(time_decay, time_first, k, v, r=None):
    """The RWKV-4 WKV operator: k, v (B, L, C); time_decay, time_first (C,); returns (B, L, C).

    wkv_n = (sum_{i<n} e^{-(n-1-i)w + k_i} v_i + e^{u+k_n} v_n) / (sum_{i<n} e^{-(n-1-i)w + k_i} + e^{u+k_n})
    per channel, with w = e^{time_decay} and u = time_first.  Differentiable in all four inputs.
    With the receptance ``r`` (B, L, C): σ(r) ⊙ wkv in the same launch, differentiable in r too.
    """
    if r is None:
        return WKV.apply(time_decay, time_first, k, v)
    return GatedWKV.apply(r, time_decay, time_first, k, v)
