"""Differentiable network ops (LayerNorm, Conv2d, Embedding, MSE, softmax attention): ``Function``s with a fused
forward on raw arrays and a hand-written backward, in the notation of ``ops.py``."""
from __future__ import annotations

import math

import numpy as np

from .ops import _xp
from .tensor import Function, Tensor, unbroadcast

# --------------------------------------------------------------------------------------------
# fused ops used by the networks
# --------------------------------------------------------------------------------------------
class LayerNorm(Function):
    """Layer normalisation over the last axis, with optional affine weight and bias.

    x_hat = (x - mean) / sqrt(var + eps) with the biased variance; y = x_hat * weight + bias.
    With g_hat = g * weight and n features, the backward of the normalisation is
        dL/dx = (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)) / sqrt(var + eps),
    and dL/dweight = sum(g * x_hat), dL/dbias = sum(g) over every axis but the last.
    """

    eps = 1e-5

    def forward(self, x, weight=None, bias=None):
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
        reduce_axes = tuple(range(g.ndim - 1))
        grad_weight = (g * self.x_hat).sum(axis=reduce_axes) if self.weight is not None else None
        grad_bias = g.sum(axis=reduce_axes) if self.has_bias else None
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


def _im2col(x, kernel_h, kernel_w, stride, padding):
    """(N, C, H, W) -> (N, C*kh*kw, Ho*Wo) of the patches that each output pixel sees."""
    xp = _xp(x)
    n, c, h, w = x.shape
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (h + 2 * padding - kernel_h) // stride + 1
    out_w = (w + 2 * padding - kernel_w) // stride + 1
    columns = xp.empty((n, c, kernel_h, kernel_w, out_h, out_w), dtype=x.dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            columns[:, :, i, j] = x[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
    return columns.reshape(n, c * kernel_h * kernel_w, out_h * out_w), out_h, out_w


def _col2im(columns, input_shape, kernel_h, kernel_w, stride, padding, out_h, out_w):
    """The adjoint of ``_im2col``: add every patch entry back to the pixel it came from."""
    xp = _xp(columns)
    n, c, h, w = input_shape
    columns = columns.reshape(n, c, kernel_h, kernel_w, out_h, out_w)
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=columns.dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += columns[:, :, i, j]
    return padded[:, :, padding:padding + h, padding:padding + w]


class Conv2d(Function):
    """2-D cross-correlation as a matrix product over im2col patches.

    With P = im2col(x) of shape (N, C*kh*kw, L) and W flattened to (O, C*kh*kw):
    y = W P + b;  dL/dW = sum_n g_n P_n^T,  dL/dP = W^T g  (then col2im),  dL/db = sum g.
    """

    stride = 1
    padding = 0

    def forward(self, x, weight, bias=None):
        out_channels, _, kernel_h, kernel_w = weight.shape
        self.input_shape, self.weight_shape = x.shape, weight.shape
        self.columns, self.out_h, self.out_w = _im2col(x, kernel_h, kernel_w, self.stride, self.padding)
        self.weight_matrix = weight.reshape(out_channels, -1)
        self.has_bias = bias is not None
        y = self.weight_matrix @ self.columns
        if bias is not None:
            y = y + bias[:, None]
        return y.reshape(x.shape[0], out_channels, self.out_h, self.out_w)

    def backward(self, g):
        n, out_channels = g.shape[:2]
        g = g.reshape(n, out_channels, -1)
        grad_weight = (g @ _xp(g).swapaxes(self.columns, 1, 2)).sum(axis=0).reshape(self.weight_shape)
        grad_x = None
        if self.needs_input_grad[0]:  # skipped for a constant input such as the images (saves the col2im)
            grad_columns = self.weight_matrix.T @ g
            _, _, kernel_h, kernel_w = self.weight_shape
            grad_x = _col2im(grad_columns, self.input_shape, kernel_h, kernel_w, self.stride, self.padding, self.out_h, self.out_w)
        if self.has_bias:
            return grad_x, grad_weight, g.sum(axis=(0, 2))
        return grad_x, grad_weight


class Embedding(Function):
    """y = table[indices] (indices constant);  dL/dtable = scatter-add of g into the used rows."""

    def forward(self, indices, table):
        self.indices = indices.astype(np.int64)
        self.table_shape = table.shape
        return table[self.indices]

    def backward(self, g):
        xp = _xp(g)
        grad_table = xp.zeros(self.table_shape, dtype=g.dtype)
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


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    inputs = [x] + [p for p in (weight, bias) if p is not None]
    if bias is not None and weight is None:
        raise ValueError("layer_norm with a bias needs a weight too")
    return LayerNorm.apply(*inputs, eps=eps)


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
