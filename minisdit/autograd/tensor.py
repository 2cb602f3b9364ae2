"""A tiny reverse-mode autograd: ``Tensor`` values and ``Function`` nodes.

A ``Function`` computes its ``forward`` on raw arrays (NumPy or CuPy) and knows its own
``backward``: given dL/d(output) it returns dL/d(input) for every input.  ``Function.apply``
runs the forward and, when gradients are wanted, records the node on the output tensor.
``Tensor.backward`` visits the recorded nodes in reverse topological order and applies the chain
rule, node by node:

    dL/d(input_i) += backward_i(dL/d(output))

Gradients accumulate into the ``.grad`` of leaf tensors (those made by the user with
``requires_grad=True``).  After the backward pass each visited node drops its inputs and saved
arrays, so the memory of the graph is given back.

A parameter held in a flat buffer (autograd/flat.py) has a gradient view, its slice of the flat
gradient array, and its ``.grad`` is that view.  Copying each parameter's gradient into its view
would be one more kernel launch per parameter on a GPU, so the op that computes a parameter's
first gradient of a backward pass may write it there itself: before calling ``backward`` the pass
sets ``function.grad_targets``, one entry per input, the input's gradient view where the op may
write dL/d(input) into it (``Function.grad_target(i)``), else None.  An op that writes there
returns that very array; any other return value is copied in as before.  A view is offered only
for the first gradient a parameter gets in a pass (it has no ``.grad`` yet and no other node gave
it one), and only at the first position where the parameter is an input, so what the op writes
is the whole gradient so far; later gradients of the same pass are added into the view in place,
in the order they come, which is the order and the rounding of the sums made before.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import backend

DEFAULT_DTYPE = np.float32

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) under which no graph is recorded."""

    def __init__(self):
        # a stack, because one decorator instance is re-entered when the function recurses
        self._previous = []

    def __enter__(self):
        global _grad_enabled
        self._previous.append(_grad_enabled)
        _grad_enabled = False
        return self

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous.pop()
        return False


def sum_into(array, axis, out=None, keepdims: bool = False):
    """``array.sum(axis=axis, keepdims=keepdims)``, written into ``out`` (an array of the result's
    shape, e.g. a gradient target) where that gives the bits of a fresh result, and then ``out``.

    On a GPU always.  On NumPy only for a C-contiguous ``array``: NumPy lays out a fresh result like
    a strided input and may then run the sum in another order than into a C-contiguous ``out``, so
    for a strided array the CPU keeps its fresh result (and the copy into a gradient view after it).
    """
    if out is not None and (backend.array_module_of(array) is not np or array.flags.c_contiguous):
        array.sum(axis=axis, keepdims=keepdims, out=out)
        return out  # the object itself, which tells Tensor.backward that nothing is left to copy
    return array.sum(axis=axis, keepdims=keepdims)


def unbroadcast(grad, shape, out=None):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    Broadcasting prepends axes and stretches size-1 axes; the gradient of a value used many times
    is the sum of its uses, so both kinds of axes are summed away.  ``out`` (an array of ``shape``,
    a gradient target): the last sum is written into it where ``sum_into`` allows.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[extra + i] != 1)
    if extra > 0:
        grad = sum_into(grad, tuple(range(extra)), None if stretched else out)
    if stretched:
        grad = sum_into(grad, stretched, out, keepdims=True)
    return grad if grad is out else grad.reshape(shape)


def _accumulate(tensor, grad):
    """``tensor.grad + grad`` (or ``grad`` for a first gradient); for a parameter of a flat buffer
    (autograd/flat.py) written into its gradient view, so that the buffer stays the gradients (no
    copy where an op already wrote the gradient there, module docstring)."""
    view = tensor._grad_view
    if view is None:
        return grad if tensor.grad is None else tensor.grad + grad
    if tensor.grad is None:
        if grad is not view:
            view[...] = grad
    elif tensor.grad is view:
        view += grad
    else:  # a gradient assigned by hand
        view[...] = tensor.grad + grad
    return view


class Function:
    """One node of the graph.  Subclasses implement ``forward(*arrays)`` and ``backward(grad)``.

    Keyword arguments of ``apply`` go to the constructor (for example an axis), positional ones are
    the inputs.  ``backward`` returns one gradient (or None) per positional input.
    """

    inputs: tuple = ()
    needs_input_grad: tuple = ()
    grad_targets: tuple = ()  # set by Tensor.backward before backward: per input, its gradient view or None

    def grad_target(self, index: int):
        """The array into which ``backward`` may write the gradient of input ``index`` (and then
        return it), or None: a parameter's flat-buffer gradient view (module docstring)."""
        return self.grad_targets[index] if index < len(self.grad_targets) else None

    def __init__(self, **options):
        for name, value in options.items():
            setattr(self, name, value)

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        function = cls(**options)
        reference = next((x for x in inputs if isinstance(x, Tensor)), None)
        tensors = tuple(as_tensor(x, like=reference) for x in inputs)
        output = Tensor(function.forward(*(t.data for t in tensors)))
        if _grad_enabled and any(t.requires_grad for t in tensors):
            function.inputs = tensors
            function.needs_input_grad = tuple(t.requires_grad for t in tensors)
            output.requires_grad = True
            output.creator = function
        return output

    def release(self):
        """Forget inputs and saved arrays once the backward pass has used them."""
        self.__dict__.clear()


class Tensor:
    """An n-dimensional array (NumPy or CuPy) that can record how it was computed."""

    __array_priority__ = 1000  # so that ndarray * Tensor calls Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, np.generic):
            # full reductions give NumPy scalars; keep a 0-d array so that in-place updates work
            data = np.asarray(data)
        if device is not None:
            data = backend.to_device(data, device) if hasattr(data, "shape") else \
                backend.get_array_module(device).asarray(data, dtype=dtype or DEFAULT_DTYPE)
        xp = backend.array_module_of(data)
        if not hasattr(data, "dtype"):
            data = xp.asarray(data, dtype=dtype or DEFAULT_DTYPE)
        elif dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator: Function | None = None
        self._retain_grad = False
        self._grad_view = None  # this parameter's slice of a flat gradient buffer (autograd/flat.py)

    # ----- properties -----
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def xp(self):
        return backend.array_module_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad}, device={self.device!r})"

    # ----- conversion -----
    def numpy(self) -> np.ndarray:
        return backend.to_numpy(self.data)

    def item(self):
        return self.numpy().item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def to(self, device: str | None = None, dtype=None) -> "Tensor":
        data = self.data if device is None else backend.to_device(self.data, device)
        if dtype is not None:
            data = data.astype(dtype)
        return Tensor(data, requires_grad=self.requires_grad)

    def astype(self, dtype) -> "Tensor":
        return self.to(dtype=dtype)

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward (for inspection in tutorials)."""
        self._retain_grad = True
        return self

    def zero_grad(self):
        self.grad = None

    # ----- the backward pass -----
    def backward(self, grad=None):
        """Accumulate dL/dx into ``.grad`` of every leaf that this tensor depends on."""
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad")
        if grad is None:
            if self.size != 1:
                raise RuntimeError("backward() without a gradient needs a tensor with one element; pass grad=")
            grad = self.xp.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        grads = {id(self): grad}
        for tensor in _reverse_topological_order(self):
            grad = grads.pop(id(tensor), None)
            if grad is None:
                continue
            if tensor.creator is None or tensor._retain_grad:
                tensor.grad = _accumulate(tensor, grad)
            function = tensor.creator
            if function is None:
                continue
            function.grad_targets = _gradient_targets(function, grads)
            input_grads = function.backward(grad)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            if len(input_grads) != len(function.inputs):
                raise RuntimeError(f"{type(function).__name__}.backward returned {len(input_grads)} gradients for {len(function.inputs)} inputs")
            for parent, parent_grad, needed in zip(function.inputs, input_grads, function.needs_input_grad):
                if not needed or parent_grad is None:
                    continue
                if parent_grad.shape != parent.data.shape:
                    raise RuntimeError(f"{type(function).__name__}.backward gave a gradient of shape {parent_grad.shape} for an input of shape {parent.data.shape}")
                key = id(parent)
                if key not in grads:
                    grads[key] = parent_grad
                elif grads[key] is parent._grad_view:  # written into the view by an op: add the rest in place
                    grads[key] += parent_grad
                else:
                    grads[key] = grads[key] + parent_grad
            function.release()
            tensor.creator = None

    # ----- operators (implemented in functional.py) -----
    def __add__(self, other): return F.add(self, other)
    def __radd__(self, other): return F.add(other, self)
    def __sub__(self, other): return F.sub(self, other)
    def __rsub__(self, other): return F.sub(other, self)
    def __mul__(self, other): return F.mul(self, other)
    def __rmul__(self, other): return F.mul(other, self)
    def __truediv__(self, other): return F.div(self, other)
    def __rtruediv__(self, other): return F.div(other, self)
    def __neg__(self): return F.neg(self)
    def __pow__(self, exponent): return F.pow(self, exponent)
    def __matmul__(self, other): return F.matmul(self, other)
    def __rmatmul__(self, other): return F.matmul(other, self)
    def __getitem__(self, index): return F.getitem(self, index)

    # comparisons give plain boolean tensors: they have no gradient
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, other))

    def __lt__(self, other): return self._compare(other, lambda a, b: a < b)
    def __le__(self, other): return self._compare(other, lambda a, b: a <= b)
    def __gt__(self, other): return self._compare(other, lambda a, b: a > b)
    def __ge__(self, other): return self._compare(other, lambda a, b: a >= b)

    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def sqrt(self): return F.sqrt(self)
    def abs(self): return F.abs(self)
    def relu(self): return F.relu(self)
    def sigmoid(self): return F.sigmoid(self)
    def tanh(self): return F.tanh(self)
    def silu(self): return F.silu(self)
    def sum(self, axis=None, keepdims=False): return F.sum(self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return F.mean(self, axis=axis, keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return F.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return F.transpose(self, axes or None)

    permute = transpose

    @property
    def T(self):
        return F.transpose(self, None)


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Wrap a raw array or Python number as a constant Tensor, on ``like``'s device and dtype."""
    if isinstance(value, Tensor):
        return value
    if like is None:
        return Tensor(value)
    xp = like.xp
    if hasattr(value, "dtype") and not isinstance(value, (np.generic,)):
        if backend.device_of(value) != like.device:
            value = backend.to_device(value, like.device)
        if value.dtype.kind == "f" and value.dtype != like.dtype and like.dtype.kind == "f":
            value = value.astype(like.dtype)
        return Tensor(value)
    dtype = like.dtype if like.dtype.kind == "f" else DEFAULT_DTYPE
    return Tensor(xp.asarray(value, dtype=dtype))


def _gradient_targets(function: Function, grads: dict) -> tuple:
    """``function.grad_targets``: per input, its gradient view where the input is a flat-buffer
    parameter that has no gradient yet in this pass (no ``.grad``, none pending in ``grads``) and
    this is its first position among the inputs; else None (module docstring)."""
    targets, seen = [], set()
    for parent, needed in zip(function.inputs, function.needs_input_grad):
        view = parent._grad_view
        first = id(parent) not in seen and id(parent) not in grads
        seen.add(id(parent))
        targets.append(view if needed and first and view is not None and parent.grad is None
                       and parent.creator is None else None)
    return tuple(targets)


def _reverse_topological_order(root: Tensor):
    """Tensors reachable from ``root`` through creators, each after all tensors that use it."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor.creator is not None:
            for parent in tensor.creator.inputs:
                if id(parent) not in visited:
                    stack.append((parent, False))
    return reversed(order)


# ops.py imports this module (Function, Tensor), so it is bound here at the end: the one import cycle
# of the package, documented in docs/DESIGN.md §8 (Architecture).
from . import ops as F  # noqa: E402
