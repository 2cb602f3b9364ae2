"""Differentiable ops: each a ``Function`` with ``forward`` on raw arrays and a hand-written ``backward``.

Notation in the docstrings: y is the output, g = dL/dy the incoming gradient, and each backward
returns dL/dx for every input x.  Inputs that were broadcast get their gradient summed back to
their own shape (``unbroadcast``).
"""
from __future__ import annotations

import builtins

import numpy as np

from . import backend
from .tensor import Function, Tensor, as_tensor, unbroadcast


def _xp(array):
    return backend.array_module_of(array)


# --------------------------------------------------------------------------------------------
# elementwise, two inputs
# --------------------------------------------------------------------------------------------
class Add(Function):
    """y = a + b;  dL/da = g,  dL/db = g."""

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, g):
        return (unbroadcast(g, self.shapes[0], self.grad_target(0)),
                unbroadcast(g, self.shapes[1], self.grad_target(1)))


class Sub(Function):
    """y = a - b;  dL/da = g,  dL/db = -g."""

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, g):
        return (unbroadcast(g, self.shapes[0], self.grad_target(0)),
                unbroadcast(-g, self.shapes[1], self.grad_target(1)))


class Mul(Function):
    """y = a b;  dL/da = g b,  dL/db = g a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return (unbroadcast(g * self.b, self.a.shape, self.grad_target(0)),
                unbroadcast(g * self.a, self.b.shape, self.grad_target(1)))


class Div(Function):
    """y = a / b;  dL/da = g / b,  dL/db = -g a / b^2."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        grad_a = unbroadcast(g / self.b, self.a.shape)
        grad_b = unbroadcast(-g * self.a / (self.b * self.b), self.b.shape)
        return grad_a, grad_b


class Maximum(Function):
    """y = max(a, b);  the gradient goes to the larger input (split in half on ties)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return _xp(a).maximum(a, b)

    def backward(self, g):
        a_wins = (self.a > self.b).astype(g.dtype)
        tie = (self.a == self.b).astype(g.dtype)
        share_a = a_wins + 0.5 * tie
        return unbroadcast(g * share_a, self.a.shape), unbroadcast(g * (1 - share_a), self.b.shape)


class Where(Function):
    """y = a where condition else b (condition is constant);  dL/da = g [c],  dL/db = g [not c]."""

    def forward(self, condition, a, b):
        self.condition = condition.astype(bool)
        self.shapes = (a.shape, b.shape)
        return _xp(a).where(self.condition, a, b)

    def backward(self, g):
        zero = _xp(g).zeros((), dtype=g.dtype)
        return (None, unbroadcast(_xp(g).where(self.condition, g, zero), self.shapes[0]),
                unbroadcast(_xp(g).where(self.condition, zero, g), self.shapes[1]))


# --------------------------------------------------------------------------------------------
# elementwise, one input
# --------------------------------------------------------------------------------------------
class Neg(Function):
    """y = -x;  dL/dx = -g."""

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class Pow(Function):
    """y = x^p for a constant p;  dL/dx = g p x^(p-1)."""

    exponent: float

    def forward(self, x):
        self.x = x
        return x ** self.exponent

    def backward(self, g):
        if self.exponent == 2:  # x^1 is x: skip a power over the whole array (ChannelMix squares a 4D-wide ReLU)
            return g * self.exponent * self.x
        return g * self.exponent * self.x ** (self.exponent - 1)


class Exp(Function):
    """y = e^x;  dL/dx = g y."""

    def forward(self, x):
        self.y = _xp(x).exp(x)
        return self.y

    def backward(self, g):
        return g * self.y


class Log(Function):
    """y = ln x;  dL/dx = g / x."""

    def forward(self, x):
        self.x = x
        return _xp(x).log(x)

    def backward(self, g):
        return g / self.x


class Sqrt(Function):
    """y = sqrt(x);  dL/dx = g / (2 y)."""

    def forward(self, x):
        self.y = _xp(x).sqrt(x)
        return self.y

    def backward(self, g):
        return g / (2 * self.y)


class Abs(Function):
    """y = |x|;  dL/dx = g sign(x) (0 at x = 0)."""

    def forward(self, x):
        self.x = x
        return _xp(x).abs(x)

    def backward(self, g):
        return g * _xp(g).sign(self.x)


class ReLU(Function):
    """y = max(x, 0);  dL/dx = g [x > 0]."""

    def forward(self, x):
        self.positive = x > 0
        return x * self.positive

    def backward(self, g):
        return g * self.positive


def _sigmoid(x):
    xp = _xp(x)
    # split by sign so that exp never overflows: 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below;
    # one division into e's own buffer (a hot op: about half the time of dividing twice)
    e = xp.asarray(xp.exp(-xp.abs(x)))  # an array even for a 0-d x (NumPy returns a scalar there)
    numerator = xp.where(x >= 0, xp.ones((), dtype=e.dtype), e)
    e += 1
    return xp.divide(numerator, e, out=e)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x);  dL/dx = g y (1 - y)."""

    def forward(self, x):
        self.y = _sigmoid(x)
        return self.y

    def backward(self, g):
        return g * self.y * (1 - self.y)


class Tanh(Function):
    """y = tanh x;  dL/dx = g (1 - y^2)."""

    def forward(self, x):
        self.y = _xp(x).tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y * self.y)


class SiLU(Function):
    """y = x sigma(x);  dL/dx = g sigma(x) (1 + x (1 - sigma(x)))."""

    def forward(self, x):
        self.x, self.s = x, _sigmoid(x)
        return x * self.s

    def backward(self, g):
        return g * self.s * (1 + self.x * (1 - self.s))


# --------------------------------------------------------------------------------------------
# linear algebra and reductions
# --------------------------------------------------------------------------------------------
class MatMul(Function):
    """y = a @ b (batched, broadcast over leading axes);  dL/da = g b^T,  dL/db = a^T g.

    1-D operands are promoted to matrices the way NumPy does and the result squeezed back.
    """

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        # put back the axes that NumPy removed for 1-D operands; b's first, so that the 0-d
        # gradient of vector @ vector becomes (1,) and then (1, 1)
        if b.ndim == 1:
            g2 = _xp(g).expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = _xp(g).expand_dims(g2, -2)
        grad_a = g2 @ _xp(g).swapaxes(b2, -1, -2)
        if b.ndim == 2:
            # a matrix shared by every batch entry (a Linear weight): the batch sum of a_i^T g_i is one
            # product of the stacked rows, which BLAS does far faster than a batched product plus a sum
            grad_b = a2.reshape(-1, a2.shape[-1]).T @ g2.reshape(-1, g2.shape[-1])
        else:
            grad_b = _xp(g).swapaxes(a2, -1, -2) @ g2
        grad_a = unbroadcast(grad_a, a2.shape).reshape(a.shape)
        grad_b = unbroadcast(grad_b, b2.shape).reshape(b.shape)
        return grad_a, grad_b


def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim for a in axis))


def _expand_to(g, axes, keepdims):
    """Put back the reduced axes of ``g`` as size-1 axes so that it broadcasts against the input."""
    if keepdims:
        return g
    for axis in axes:
        g = _xp(g).expand_dims(g, axis)
    return g


class Sum(Function):
    """y = sum of x over axes;  dL/dx = g broadcast back over the summed axes."""

    axis = None
    keepdims = False

    def forward(self, x):
        self.shape = x.shape
        self.axes = _normalize_axes(self.axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, g):
        return _xp(g).broadcast_to(_expand_to(g, self.axes, self.keepdims), self.shape).copy()


class Mean(Function):
    """y = mean of x over axes (n entries);  dL/dx = g / n broadcast back."""

    axis = None
    keepdims = False

    def forward(self, x):
        self.shape = x.shape
        self.axes = _normalize_axes(self.axis, x.ndim)
        self.count = int(np.prod([x.shape[a] for a in self.axes])) if self.axes else 1
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, g):
        g = _expand_to(g, self.axes, self.keepdims) / self.count
        return _xp(g).broadcast_to(g, self.shape).copy()


class Max(Function):
    """y = max of x over axes;  dL/dx = g at the arg-max entries (shared equally on ties)."""

    axis = None
    keepdims = False

    def forward(self, x):
        self.x = x
        self.axes = _normalize_axes(self.axis, x.ndim)
        self.y = x.max(axis=self.axes, keepdims=True)
        return self.y if self.keepdims else self.y.reshape([s for i, s in enumerate(x.shape) if i not in self.axes])

    def backward(self, g):
        is_max = (self.x == self.y).astype(g.dtype)
        share = is_max / is_max.sum(axis=self.axes, keepdims=True)
        return share * _expand_to(g, self.axes, self.keepdims)


# --------------------------------------------------------------------------------------------
# shape ops
# --------------------------------------------------------------------------------------------
class Reshape(Function):
    """y = x viewed with a new shape;  dL/dx = g reshaped back."""

    shape = None

    def forward(self, x):
        self.input_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, g):
        return g.reshape(self.input_shape)


class Transpose(Function):
    """y = x with axes permuted;  dL/dx = g with the inverse permutation."""

    axes = None

    def forward(self, x):
        self.order = tuple(range(x.ndim))[::-1] if self.axes is None else tuple(a % x.ndim for a in self.axes)
        return x.transpose(self.order)

    def backward(self, g):
        return g.transpose(tuple(np.argsort(self.order)))


class BroadcastTo(Function):
    """y = x broadcast to ``shape`` (NumPy's rules);  dL/dx = g summed back to x's shape (unbroadcast).

    A value used by every entry of a new or stretched axis receives the sum of their gradients.
    """

    shape = None

    def forward(self, x):
        self.input_shape = x.shape
        # a copy: NumPy's broadcast view is read-only and has zero strides, which a raw CUDA
        # kernel taking the array's pointer would misread
        return _xp(x).broadcast_to(x, self.shape).copy()

    def backward(self, g):
        return unbroadcast(g, self.input_shape, self.grad_target(0))  # e.g. SDiT's Reconstruction Tokens


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(part, (int, np.integer, slice)) or part is None or part is Ellipsis for part in parts)


class GetItem(Function):
    """y = x[index] (basic slicing and integer arrays);  dL/dx = g scattered back (added on repeats)."""

    index = None

    def forward(self, x):
        self.input_shape, self.input_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, g):
        xp = _xp(g)
        grad = xp.zeros(self.input_shape, dtype=g.dtype)
        if _is_basic_index(self.index):
            # basic indexing (ints, slices, None, ...) picks every entry at most once: plain
            # assignment is exact, and much faster than a scatter-add
            grad[self.index] = g
        elif xp is np:
            np.add.at(grad, self.index, g)
        else:
            import cupyx
            cupyx.scatter_add(grad, self.index, g)
        return grad


class Concat(Function):
    """y = concatenation along ``axis``;  dL/dx_i = the slice of g that x_i filled."""

    axis = 0

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return _xp(arrays[0]).concatenate(arrays, axis=self.axis)

    def backward(self, g):
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(_xp(g).split(g, cuts, axis=self.axis))


class Stack(Function):
    """y = stack along a new ``axis``;  dL/dx_i = g taken at position i of that axis."""

    axis = 0

    def forward(self, *arrays):
        return _xp(arrays[0]).stack(arrays, axis=self.axis)

    def backward(self, g):
        xp = _xp(g)
        return tuple(xp.take(g, i, axis=self.axis) for i in range(g.shape[self.axis]))


class Pad(Function):
    """Zero padding along one axis: ``before`` zeros in front and ``after`` behind.

    dL/dx = the middle part of g (the padding is constant, so it gets no gradient).
    Token shift uses Pad with before=1 followed by dropping the last position.
    """

    axis = 0
    before = 0
    after = 0

    def forward(self, x):
        widths = [(0, 0)] * x.ndim
        widths[self.axis] = (self.before, self.after)
        self.length = x.shape[self.axis]
        return _xp(x).pad(x, widths)

    def backward(self, g):
        index = [slice(None)] * g.ndim
        index[self.axis] = slice(self.before, self.before + self.length)
        return g[tuple(index)]


# --------------------------------------------------------------------------------------------
# the functional API (what modules and users call)
# --------------------------------------------------------------------------------------------
def add(a, b): return Add.apply(a, b)
def sub(a, b): return Sub.apply(a, b)
def mul(a, b): return Mul.apply(a, b)
def div(a, b): return Div.apply(a, b)
def neg(x): return Neg.apply(x)
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def abs(x): return Abs.apply(x)  # noqa: A001 - mirrors numpy's name
def relu(x): return ReLU.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def tanh(x): return Tanh.apply(x)
def silu(x): return SiLU.apply(x)
def maximum(a, b): return Maximum.apply(a, b)
def matmul(a, b): return MatMul.apply(a, b)
def sum(x, axis=None, keepdims=False): return Sum.apply(x, axis=axis, keepdims=keepdims)  # noqa: A001
def mean(x, axis=None, keepdims=False): return Mean.apply(x, axis=axis, keepdims=keepdims)
def max(x, axis=None, keepdims=False): return Max.apply(x, axis=axis, keepdims=keepdims)  # noqa: A001
def reshape(x, shape): return Reshape.apply(x, shape=tuple(shape))
def transpose(x, axes=None): return Transpose.apply(x, axes=axes)


def pow(x, exponent):  # noqa: A001
    if isinstance(exponent, Tensor):
        raise TypeError("pow takes a constant exponent; use exp(b * log(a)) for a tensor exponent")
    return Pow.apply(x, exponent=float(exponent))


def broadcast_to(x, shape):
    """x repeated along new leading axes and stretched size-1 axes, as ``numpy.broadcast_to``."""
    shape = tuple(int(size) for size in shape)
    compatible = len(x.shape) <= len(shape) and all(
        size in (1, target) for size, target in zip(reversed(x.shape), reversed(shape)))
    if not compatible:
        raise ValueError(f"cannot broadcast shape {x.shape} to {shape}: aligned from the right, each axis of x "
                         "must be 1 or equal the target's")
    return BroadcastTo.apply(x, shape=shape)


def permute(x, axes):
    return Transpose.apply(x, axes=tuple(axes))


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem.apply(x, index=index)


def where(condition, a, b):
    condition = condition.data if isinstance(condition, Tensor) else condition
    reference = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    a, b = as_tensor(a, like=reference), as_tensor(b, like=reference)
    condition = _xp(a.data).asarray(condition)
    return Where.apply(Tensor(condition), a, b)


def concat(tensors, axis=0):
    return Concat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    return Stack.apply(*tensors, axis=axis)


def split(x, sections, axis=0):
    """Split into pieces: ``sections`` is a number of equal parts or a list of sizes."""
    length = x.shape[axis]
    if isinstance(sections, int):
        if length % sections:
            raise ValueError(f"cannot split an axis of length {length} into {sections} equal parts")
        sizes = [length // sections] * sections
    else:
        sizes = list(sections)
        if builtins.sum(sizes) != length:
            raise ValueError(f"split sizes {sizes} do not add up to the axis length {length}")
    pieces, start = [], 0
    for size in sizes:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + size)
        pieces.append(getitem(x, tuple(index)))
        start += size
    return pieces


def pad(x, axis, before=0, after=0):
    return Pad.apply(x, axis=axis % x.ndim, before=before, after=after)
