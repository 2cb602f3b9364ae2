"""Differentiable network ops (LayerNorm, Linear, Conv2d, Embedding, MSE, softmax attention): ``Function``s with a
fused forward on raw arrays and a hand-written backward, in the notation of ``ops.py``."""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .ops import _xp
from .tensor import Function, Tensor, sum_into, unbroadcast

# --------------------------------------------------------------------------------------------
# fused ops used by the networks
# --------------------------------------------------------------------------------------------
class LayerNorm(Function):
    """Layer normalisation over the last axis, with optional affine weight and bias.

    x_hat = (x - mean) / sqrt(var + eps) with the biased variance; y = x_hat * weight + bias.
    With g_hat = g * weight and n features, the backward of the normalisation is
        dL/dx = (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)) / sqrt(var + eps),
    and dL/dweight = sum(g * x_hat), dL/dbias = sum(g) over every axis but the last.

    ``fused`` (``apply(..., fused=...)``, as AdamW's ``fused=``) runs the weight-less case as one
    forward and one backward kernel where ``fused.applies(x)``: ``fused.forward(x, eps)`` gives
    (x_hat, mean, rstd per row) and ``fused.backward(g, x_hat, rstd)`` gives dL/dx by the formula
    above (minisdit/kernels/layernorm.py; the kernels live above this layer, so they are handed in).
    """

    eps = 1e-5
    fused = None

    def forward(self, x, weight=None, bias=None):
        self.use_fused = (self.fused is not None and weight is None and bias is None and self.fused.applies(x))
        if self.use_fused:
            self.weight, self.has_bias = None, False
            self.x_hat, _, self.inverse_std = self.fused.forward(x, self.eps)
            return self.x_hat
        xp = _xp(x)
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        variance = (centred * centred).mean(axis=-1, keepdims=True)
        self.inverse_std = 1.0 / xp.sqrt(variance + self.eps)
        self.x_hat = centred * self.inverse_std
        self.weight, self.has_bias = weight, bias is not None
        y = self.x_hat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    def backward(self, g):
        if self.use_fused:
            return (self.fused.backward(g, self.x_hat, self.inverse_std),)
        reduce_axes = tuple(range(g.ndim - 1))
        grad_weight = sum_into(g * self.x_hat, reduce_axes, self.grad_target(1)) if self.weight is not None else None
        grad_bias = sum_into(g, reduce_axes, self.grad_target(2)) if self.has_bias else None
        g_hat = g * self.weight if self.weight is not None else g
        grad_x = self.inverse_std * (
            g_hat - g_hat.mean(axis=-1, keepdims=True)
            - self.x_hat * (g_hat * self.x_hat).mean(axis=-1, keepdims=True))
        grads = (grad_x,)
        if self.weight is not None:
            grads += (grad_weight,)
        if self.has_bias:
            grads += (grad_bias,)
        return grads


# One 2-D GEMM over all rows is what a GPU needs (tensor cores, TF32).  NumPy instead runs its
# broadcast product, one GEMM per matrix of x: OpenBLAS rounds a row of a 2-D product differently
# depending on how many rows the product has, so only per-matrix products keep a sample's result
# independent of the batch it shares (data-parallel workers then agree with one process to float32
# rounding) and the CPU results bitwise those of before.  Tests set this to run the GPU's flattened
# products on NumPy arrays too.
ONE_GEMM_ON_CPU = False


def _one_gemm(array) -> bool:
    return ONE_GEMM_ON_CPU or backend.is_gpu_array(array)


def _times_matrix(a, matrix):
    """a (..., K) @ matrix (K, O): one 2-D GEMM over the flattened rows on a GPU, NumPy's own product on the CPU."""
    if a.ndim > 2 and _one_gemm(a):
        return (a.reshape(-1, a.shape[-1]) @ matrix).reshape(a.shape[:-1] + (matrix.shape[-1],))
    return a @ matrix


class Linear(Function):
    """y = x W^T + b for x of shape (..., in), W (out, in), b (out,): one 2-D GEMM over all rows.

    The leading axes of x are flattened into R rows, X = x.reshape(R, in), G = g.reshape(R, out):
        y = X W^T + b,   dL/dX = G W,   dL/dW = (X^T G)^T,   dL/db = sum over rows of G.
    On a GPU each product is one 2-D GEMM: a (N, L, D) @ (D, O) product would be a batched GEMM
    (cuBLAS ``sgemmBatched``, N small products) that never uses tensor cores or TF32; the weight
    gradient is one 2-D GEMM on both devices (not N products plus a sum).  On the CPU y and dL/dX
    are NumPy's per-matrix products (``ONE_GEMM_ON_CPU`` above says why).  One fused node (rather
    than MatMul, Transpose and Add) also saves graph nodes and the bias add's own output array.

    Where W and b are parameters of a flat buffer (``grad_target``, autograd/tensor.py), their
    gradients are written straight into their gradient views: on a GPU dL/dW as G^T X, the same
    product laid out as W, by a GEMM whose output is the view, and dL/db by a reduction into its
    view, so no copy follows.  On the CPU dL/dW stays (X^T G)^T and is copied in: OpenBLAS rounds
    G^T X differently from (X^T G)^T, and the CPU's results stay bitwise what they were.
    """

    def forward(self, x, weight, bias=None):
        self.x_shape, self.weight, self.has_bias = x.shape, weight, bias is not None
        self.rows = x.reshape(-1, x.shape[-1])  # a view, or one copy of a strided x kept for dL/dW
        if x.ndim > 2 and not _one_gemm(x):
            y = x @ weight.T  # NumPy's per-matrix products (ONE_GEMM_ON_CPU says why)
        else:
            y = (self.rows @ weight.T).reshape(x.shape[:-1] + (weight.shape[0],))
        if bias is not None:
            y += bias  # in place: y is a fresh product
        return y

    def backward(self, g):
        grad_x = _times_matrix(g, self.weight) if self.needs_input_grad[0] else None
        grad_weight = None
        if self.needs_input_grad[1]:
            g_rows, target = g.reshape(-1, g.shape[-1]), self.grad_target(1)
            if target is not None and _one_gemm(g):  # the GEMM writes the gradient where the optimizer reads it
                _xp(g).matmul(g_rows.T, self.rows, out=target)
                grad_weight = target
            else:
                grad_weight = (self.rows.T @ g_rows).T  # cuBLAS takes the transposes as flags
        if self.has_bias:  # one reduction over every leading axis (the order that the plain bias add summed in)
            return grad_x, grad_weight, sum_into(g, tuple(range(g.ndim - 1)), self.grad_target(2))
        return grad_x, grad_weight


def _im2col(x, kernel_h, kernel_w, stride, padding, one_gemm: bool):
    """The patch that each output pixel of a convolution of x (N, C, H, W) sees, as columns.

    ``one_gemm``: (C*kh*kw, N*Ho*Wo), channels leading and every image's pixels following one another,
    so that the convolution of the whole batch is a single 2-D product W (O, C*kh*kw) @ columns (the
    GPU's layout).  Else (N, C*kh*kw, Ho*Wo): one matrix per image, NumPy's per-matrix products (the
    CPU's, ``ONE_GEMM_ON_CPU`` says why)."""
    xp = _xp(x)
    n, c, h, w = x.shape
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (h + 2 * padding - kernel_h) // stride + 1
    out_w = (w + 2 * padding - kernel_w) // stride + 1
    if one_gemm:
        x = x.transpose(1, 0, 2, 3)  # a view (C, N, H, W): each slice below copies into channel-major columns
        columns = xp.empty((c, kernel_h, kernel_w, n, out_h, out_w), dtype=x.dtype)
        patch = columns
    else:
        columns = xp.empty((n, c, kernel_h, kernel_w, out_h, out_w), dtype=x.dtype)
        patch = columns.transpose(1, 2, 3, 0, 4, 5)  # a view with the channel-major axes of the loop below
        x = x.transpose(1, 0, 2, 3)
    for i in range(kernel_h):
        for j in range(kernel_w):
            patch[:, i, j] = x[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
    shape = (c * kernel_h * kernel_w, n * out_h * out_w) if one_gemm else (n, c * kernel_h * kernel_w, out_h * out_w)
    return columns.reshape(shape), out_h, out_w


def _col2im(columns, input_shape, kernel_h, kernel_w, stride, padding, out_h, out_w, one_gemm: bool):
    """The adjoint of ``_im2col`` (same layout): add every patch entry back to the pixel it came from."""
    xp = _xp(columns)
    n, c, h, w = input_shape
    if one_gemm:
        patch = columns.reshape(c, kernel_h, kernel_w, n, out_h, out_w)
    else:
        patch = columns.reshape(n, c, kernel_h, kernel_w, out_h, out_w).transpose(1, 2, 3, 0, 4, 5)
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=columns.dtype)
    channel_major = padded.transpose(1, 0, 2, 3)  # a view: the additions land in padded
    for i in range(kernel_h):
        for j in range(kernel_w):
            channel_major[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += patch[:, i, j]
    return padded[:, :, padding:padding + h, padding:padding + w]


class Conv2d(Function):
    """2-D cross-correlation as matrix products over im2col patches.

    With P = im2col(x), W flattened to (O, C*kh*kw) and g the incoming gradient:
    y = W P + b;  dL/dW = g P^T,  dL/dP = W^T g  (then col2im),  dL/db = sum of g over all but O.
    On a GPU (``_one_gemm``) P holds the whole batch's columns, (C*kh*kw, N*L), so each is a single
    GEMM, at the price of one transpose of y from (O, N, L) to (N, O, L) and one of g back; on the
    CPU P is (N, C*kh*kw, L) and each product is NumPy's per image, dL/dW summed over the images.
    dL/dW (the GEMM on a GPU, the sum over images on the CPU) and dL/db are written straight into
    the parameters' gradient views where they are offered (``grad_target``, autograd/tensor.py).
    """

    stride = 1
    padding = 0

    def forward(self, x, weight, bias=None):
        out_channels, _, kernel_h, kernel_w = weight.shape
        self.one_gemm = _one_gemm(x)
        self.input_shape, self.weight_shape = x.shape, weight.shape
        self.columns, self.out_h, self.out_w = _im2col(x, kernel_h, kernel_w, self.stride, self.padding, self.one_gemm)
        self.weight_matrix = weight.reshape(out_channels, -1)
        self.has_bias = bias is not None
        y = self.weight_matrix @ self.columns
        if bias is not None:
            y += bias[:, None]  # in place: y is a fresh product
        if not self.one_gemm:
            return y.reshape(x.shape[0], out_channels, self.out_h, self.out_w)
        y = y.reshape(out_channels, x.shape[0], self.out_h, self.out_w).transpose(1, 0, 2, 3)
        return _xp(y).ascontiguousarray(y)

    def backward(self, g):
        n, out_channels = g.shape[:2]
        # the bias gradient from g as it comes, summed in the same order as a batch split over
        # worker processes sums it (training/parallel.py): its terms cancel, so the order shows
        grad_bias = sum_into(g.reshape(n, out_channels, -1), (0, 2), self.grad_target(2)) if self.has_bias else None
        target = self.grad_target(1)
        matrix_target = None if target is None else target.reshape(out_channels, -1)  # a view of the view
        if self.one_gemm:
            g = _xp(g).ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(out_channels, -1)
            if matrix_target is not None:
                _xp(g).matmul(g, self.columns.T, out=matrix_target)
                grad_weight = matrix_target
            else:
                grad_weight = g @ self.columns.T
        else:
            g = g.reshape(n, out_channels, -1)
            grad_weight = sum_into(g @ self.columns.transpose(0, 2, 1), 0, matrix_target)
        grad_weight = target if matrix_target is not None and grad_weight is matrix_target else \
            grad_weight.reshape(self.weight_shape)
        grad_x = None
        if self.needs_input_grad[0]:  # skipped for a constant input such as the images (saves the col2im)
            grad_columns = self.weight_matrix.T @ g
            _, _, kernel_h, kernel_w = self.weight_shape
            grad_x = _col2im(grad_columns, self.input_shape, kernel_h, kernel_w, self.stride, self.padding,
                             self.out_h, self.out_w, self.one_gemm)
        if self.has_bias:
            return grad_x, grad_weight, grad_bias
        return grad_x, grad_weight


class Embedding(Function):
    """y = table[indices] (indices constant);  dL/dtable = scatter-add of g into the used rows."""

    def forward(self, indices, table):
        self.indices = indices.astype(np.int64)
        self.table_shape = table.shape
        return table[self.indices]

    def backward(self, g):
        xp = _xp(g)
        grad_table = self.grad_target(1)  # the table's gradient view where it has one: no copy into it afterwards
        if grad_table is None or grad_table.dtype != g.dtype:
            grad_table = xp.zeros(self.table_shape, dtype=g.dtype)
        else:
            grad_table.fill(0)
        rows = self.indices.reshape(-1)
        flat = g.reshape(-1, self.table_shape[1])
        if xp is np:
            np.add.at(grad_table, rows, flat)
        else:
            import cupyx
            cupyx.scatter_add(grad_table, rows, flat)
        return None, grad_table


class MSE(Function):
    """y = mean((a - b)^2);  dL/da = g 2 (a - b) / n,  dL/db = -dL/da (before unbroadcast)."""

    def forward(self, a, b):
        self.difference = a - b
        self.shapes = (a.shape, b.shape)
        return (self.difference * self.difference).mean()

    def backward(self, g):
        grad = g * 2.0 * self.difference / self.difference.size
        return unbroadcast(grad, self.shapes[0]), unbroadcast(-grad, self.shapes[1])


class ScaledDotProductAttention(Function):
    """O = softmax(Q K^T / sqrt(d)) V for each (n, head): Q, K, V and O of shape (N, heads, L, d), no mask.

    Forward, per row i of one (n, head), with the scale s = 1 / sqrt(d):
        S = s Q K^T                      (L, L) logits
        P_ij = exp(S_ij - m_i) / sum_j' exp(S_ij' - m_i),   m_i = max_j S_ij
        O = P V
    Subtracting the row maximum m_i changes nothing (it cancels in the ratio) but keeps every
    exponent <= 0, so exp never overflows however large the logits are; the row sum is >= 1.

    Backward, given dO = dL/dO:
        dV = P^T dO
        dP = dO V^T
        dS_ij = sum_k dP_ik dP_ik/dS_ij  with  dP_ik/dS_ij = P_ik (delta_kj - P_ij), so
        dS = P * (dP - rowsum(dP * P))         (the softmax Jacobian; rowsum keeps the axis)
        dQ = s dS K,   dK = s dS^T Q.
    rowsum(dP * P)_i = sum_j (dO V^T)_ij P_ij = sum_c dO_ic O_ic, so the row term is computed from
    dO and O (L d numbers per row) instead of the (L, L) product dP * P.  Only P and the inputs are
    kept from the forward pass; m_i needs no backward of its own since P does not depend on it.
    """

    def forward(self, q, k, v):
        xp = _xp(q)
        self.scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 arrays float32
        logits = (q @ xp.swapaxes(k, -1, -2)) * self.scale
        logits -= logits.max(axis=-1, keepdims=True)
        weights = xp.exp(logits)
        weights /= weights.sum(axis=-1, keepdims=True)
        self.q, self.k, self.v, self.weights = q, k, v, weights
        self.out = weights @ v
        return self.out

    def backward(self, g):
        xp = _xp(g)
        weights = self.weights
        grad_v = xp.swapaxes(weights, -1, -2) @ g
        grad_weights = g @ xp.swapaxes(self.v, -1, -2)
        row_term = (g * self.out).sum(axis=-1, keepdims=True)       # rowsum(dP * P)
        grad_logits = weights * (grad_weights - row_term) * self.scale  # s dS
        return grad_logits @ self.k, xp.swapaxes(grad_logits, -1, -2) @ self.q, grad_v


# --------------------------------------------------------------------------------------------
# the functional API of these ops
# --------------------------------------------------------------------------------------------
def mse(a, b): return MSE.apply(a, b)


def layer_norm(x, weight=None, bias=None, eps=1e-5, fused=None):
    """LayerNorm over the last axis; ``fused`` as in ``LayerNorm`` (kernels for the weight-less case)."""
    inputs = [x] + [p for p in (weight, bias) if p is not None]
    if bias is not None and weight is None:
        raise ValueError("layer_norm with a bias needs a weight too")
    return LayerNorm.apply(*inputs, eps=eps, fused=fused)


def linear(x, weight, bias=None):
    """x W^T + b over the last axis of x (W of shape (out, in)), as one 2-D GEMM (``Linear``)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but the weight {weight.shape} takes {weight.shape[1]}; "
                         "pass an input whose last axis is the weight's second")
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return Linear.apply(*inputs)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return Conv2d.apply(*inputs, stride=stride, padding=padding)


def embedding(indices, table):
    indices = indices.data if isinstance(indices, Tensor) else indices
    indices = _xp(table.data).asarray(indices)
    return Embedding.apply(Tensor(indices), table)


def scaled_dot_product_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V over the last two axes of (N, heads, L, d) Tensors, without a mask."""
    if not (q.ndim == k.ndim == v.ndim == 4) or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"scaled_dot_product_attention needs q, k, v of one shape (N, heads, L, d); "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    return ScaledDotProductAttention.apply(q, k, v)
