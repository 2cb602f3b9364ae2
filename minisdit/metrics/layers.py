"""Pooling and the classification loss: the few ops the evaluation networks need beyond minisdit.nn.

Notation: x is the input (N, C, H, W), y the output (N, C, Ho, Wo), g = dL/dy.  A pooling window
with kernel (kh, kw), stride (sh, sw) and zero-or-minus-infinity padding (ph, pw) covers the input
pixels (sh·i + a − ph, sw·j + b − pw) for a < kh, b < kw, and

    Ho = floor((H + 2 ph − kh) / sh) + 1,   Wo = floor((W + 2 pw − kw) / sw) + 1   (no ceil mode).

Both poolings loop over the kh·kw window offsets (a, b), never over pixels: each offset is one strided
slice of the padded input, so the work is kh·kw vectorised array operations.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..autograd.tensor import Function, Tensor


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(int(v) != v for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _pool_geometry(shape, kernel_size, stride, padding):
    """(kh, kw), (sh, sw), (ph, pw), (Ho, Wo), checked like PyTorch checks them."""
    if len(shape) != 4:
        raise ValueError(f"pooling expects an (N, C, H, W) input, got shape {tuple(shape)}")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"pooling needs kernel >= 1, stride >= 1, padding >= 0; got {kernel}, {stride}, {padding}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"pooling padding {padding} must be at most half the kernel {kernel}")
    height, width = shape[2] + 2 * padding[0], shape[3] + 2 * padding[1]
    if height < kernel[0] or width < kernel[1]:
        raise ValueError(f"pooling kernel {kernel} is larger than the padded input {(height, width)}")
    out = ((height - kernel[0]) // stride[0] + 1, (width - kernel[1]) // stride[1] + 1)
    return kernel, stride, padding, out


def _window(padded, a, b, stride, out):
    """The strided slice of ``padded`` that window offset (a, b) reads: shape (N, C, Ho, Wo)."""
    return padded[:, :, a:a + stride[0] * (out[0] - 1) + 1:stride[0], b:b + stride[1] * (out[1] - 1) + 1:stride[1]]


def _pad(x, padding, value):
    if padding == (0, 0):
        return x
    xp = backend.array_module_of(x)
    return xp.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])), constant_values=value)


def _crop(padded, padding, shape):
    return padded[:, :, padding[0]:padding[0] + shape[2], padding[1]:padding[1] + shape[3]]


class MaxPool2d(Function):
    """y = max over the window (padding counts as −∞);  dL/dx = g routed to the window's arg-max.

    Ties go to the first offset in raster order (as PyTorch does), so each output sends its
    gradient to exactly one input pixel; overlapping windows add up.
    """

    kernel_size = 2
    stride = None
    padding = 0

    def forward(self, x):
        xp = backend.array_module_of(x)
        kernel, stride, padding, out = _pool_geometry(x.shape, self.kernel_size, self.stride, self.padding)
        self.geometry = (kernel, stride, padding, out, x.shape)
        padded = _pad(x, padding, -np.inf)
        best = _window(padded, 0, 0, stride, out).copy()
        self.argmax = xp.zeros(best.shape, dtype=np.int32)
        for offset in range(1, kernel[0] * kernel[1]):
            candidate = _window(padded, offset // kernel[1], offset % kernel[1], stride, out)
            better = candidate > best
            best = xp.where(better, candidate, best)
            self.argmax[better] = offset
        return best

    def backward(self, g):
        xp = backend.array_module_of(g)
        kernel, stride, padding, out, shape = self.geometry
        grad = xp.zeros((shape[0], shape[1], shape[2] + 2 * padding[0], shape[3] + 2 * padding[1]), dtype=g.dtype)
        for offset in range(kernel[0] * kernel[1]):
            _window(grad, offset // kernel[1], offset % kernel[1], stride, out)[...] += g * (self.argmax == offset)
        return _crop(grad, padding, shape)


class AvgPool2d(Function):
    """y = (sum over the window) / d;  dL/dx = g / d added to every pixel of the window.

    d = kh·kw when ``count_include_pad`` (padding counts as zeros), otherwise the number of real
    pixels in the window -- the TF-Inception FID network uses the latter.
    """

    kernel_size = 2
    stride = None
    padding = 0
    count_include_pad = True

    def forward(self, x):
        xp = backend.array_module_of(x)
        kernel, stride, padding, out = _pool_geometry(x.shape, self.kernel_size, self.stride, self.padding)
        padded = _pad(x, padding, 0)
        total = _window(padded, 0, 0, stride, out).copy()
        for offset in range(1, kernel[0] * kernel[1]):
            total += _window(padded, offset // kernel[1], offset % kernel[1], stride, out)
        if self.count_include_pad or padding == (0, 0):
            divisor = xp.asarray(kernel[0] * kernel[1], dtype=x.dtype)
        else:
            # how many real pixels each window covers: the same pooling applied to a padded mask of ones
            real = _pad(xp.ones((1, 1) + x.shape[2:], dtype=x.dtype), padding, 0)
            divisor = sum(_window(real, a, b, stride, out) for a in range(kernel[0]) for b in range(kernel[1]))
        self.geometry = (kernel, stride, padding, out, x.shape)
        self.divisor = divisor
        return total / divisor

    def backward(self, g):
        xp = backend.array_module_of(g)
        kernel, stride, padding, out, shape = self.geometry
        share = g / self.divisor
        grad = xp.zeros((shape[0], shape[1], shape[2] + 2 * padding[0], shape[3] + 2 * padding[1]), dtype=g.dtype)
        for a in range(kernel[0]):
            for b in range(kernel[1]):
                _window(grad, a, b, stride, out)[...] += share
        return _crop(grad, padding, shape)


class CrossEntropy(Function):
    """L = mean_n −log softmax(z_n)[y_n]  with z the logits (N, K) and y integer labels (N,).

    log softmax(z)_k = z_k − m − log Σ_j exp(z_j − m) with m = max_j z_j (no overflow);
    dL/dz_n = g (softmax(z_n) − onehot(y_n)) / N;  the labels get no gradient.
    """

    def forward(self, logits, labels):
        xp = backend.array_module_of(logits)
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"cross_entropy expects logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probabilities = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.labels = labels.astype(np.int64)
        self.log_probabilities = log_probabilities
        rows = xp.arange(logits.shape[0])
        return -log_probabilities[rows, self.labels].mean()

    def backward(self, g):
        xp = backend.array_module_of(g)
        count = self.log_probabilities.shape[0]
        grad = xp.exp(self.log_probabilities)
        grad[xp.arange(count), self.labels] -= 1
        return grad * (g / count), None


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max pooling over (H, W); ``stride`` defaults to the kernel size."""
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding)


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> Tensor:
    """Average pooling over (H, W); ``stride`` defaults to the kernel size."""
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                           count_include_pad=count_include_pad)


def cross_entropy(logits: Tensor, labels) -> Tensor:
    """Mean softmax cross-entropy of logits (N, K) against integer labels (N,)."""
    labels = labels.data if isinstance(labels, Tensor) else labels
    return CrossEntropy.apply(logits, Tensor(logits.xp.asarray(labels)))


def softmax(logits, axis: int = -1):
    """softmax on a raw array (inference only): exp(z − max z) / Σ exp(z − max z)."""
    xp = backend.array_module_of(logits)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = xp.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)
