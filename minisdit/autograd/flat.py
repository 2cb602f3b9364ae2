"""Flat buffers: all parameters of a model in one contiguous array, all their gradients in another.

``FlatParameters(params)`` lays the parameters end to end in ``flat.data`` and makes every
``Parameter.data`` a view of its slice; ``flat.grad`` holds the gradients the same way, and
autograd accumulates into each parameter's gradient view instead of allocating a new array
(``Tensor.backward``: a leaf with a ``_grad_view`` writes into it).  ``flat.zeros()`` makes one more
buffer of the same layout, which is how AdamW keeps its moments m and v and EMA its shadow
weights.  A whole-model update is then one operation over one array (one fused kernel on a GPU
instead of a dozen launches per parameter), gradient clipping one reduction, and data
parallelism adds one gradient buffer per worker.

Layout: parameter i occupies ``data[offset_i : offset_i + size_i]``; each offset is a multiple of
``ALIGNMENT`` bytes, so every view starts where a separately allocated array would (BLAS and
SIMD loops take the same aligned path, which keeps results bitwise those of separate arrays).
The padding between slices is zero in every buffer and stays zero under every update (AdamW and
EMA map 0 to 0), so it changes no sum.

What the views promise, and what keeps them:

* ``Module.load_state_dict`` and ``EMA.copy_to`` assign a new ``.data``; ``attach()`` copies such
  an array back into its slice and makes ``.data`` the view again (the optimizer calls it at the
  start of every ``zero_grad`` and ``step``).
* backward writes a parameter's first gradient of a pass straight into its view where the op
  that computes it can (``Function.grad_target``, autograd/tensor.py), so no copy follows;
  ``stacked_grad_view`` gives an op that computes the gradients of several consecutive parameters
  as one array (the token shift's mixes) their views as one array to write into.
* ``p.grad is None`` still means "no gradient this step" (AdamW skips such a parameter, as
  PyTorch does); ``zero_grad()`` fills ``flat.grad`` with zeros in one call and sets every
  ``.grad`` to None, so a parameter that backward never reaches contributes zeros to a sum over
  the buffer.  ``gather_grads()`` copies a gradient that someone assigned by hand
  (``p.grad = array``) into its view.

State dicts and checkpoints are unchanged: they are written per parameter name from the views.
"""
from __future__ import annotations

import numpy as np

from . import backend

ALIGNMENT = 64  # bytes: a cache line, and the alignment NumPy and CuPy allocations have at least


class FlatParameters:
    """Parameters (one dtype, one device) as views of one flat array, gradients of another."""

    def __init__(self, params, allocate=None):
        self.params = list(params)
        if not self.params:
            raise ValueError("FlatParameters got an empty parameter list; pass model.parameters()")
        dtypes = {p.data.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"flat buffers hold one dtype on one device, the parameters have {sorted(map(str, dtypes))} "
                             f"on {sorted(devices)}; cast the model with model.to(device, dtype) first")
        self.dtype, self.device = dtypes.pop(), devices.pop()
        self.xp = backend.array_module_of(self.params[0].data)
        step = max(1, ALIGNMENT // self.dtype.itemsize)
        self.shapes = [tuple(p.data.shape) for p in self.params]
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.offsets, end = [], 0
        for size in self.sizes:
            self.offsets.append(end)
            end += -(-size // step) * step  # the next slice starts on the next aligned offset
        self.numel = end
        self.data = self.zeros() if allocate is None else allocate(self.numel, self.dtype)
        self.grad = self.zeros()
        self.data_views = self.views(self.data)
        self.grad_views = self.views(self.grad)
        self.index = {id(p): i for i, p in enumerate(self.params)}
        for p, view, grad_view in zip(self.params, self.data_views, self.grad_views):
            view[...] = p.data
            p.data = view
            p._grad_view = grad_view
            p._flat = self
            if p.grad is not None:
                grad_view[...] = p.grad
                p.grad = grad_view

    @classmethod
    def of(cls, params) -> "FlatParameters":
        """The flat buffers that already hold exactly ``params`` (in this order), else new ones: an
        optimizer and an EMA built over the same model share one layout, so the EMA update runs over
        the optimizer's parameter buffer."""
        params = list(params)
        existing = getattr(params[0], "_flat", None) if params else None
        if existing is not None and len(existing.params) == len(params) and all(
                a is b for a, b in zip(existing.params, params)):
            return existing
        return cls(params)

    def zeros(self):
        """A new zero buffer of this layout (for optimizer moments, EMA weights)."""
        return self.xp.zeros(self.numel, dtype=self.dtype)

    def views(self, buffer) -> list:
        """One view of ``buffer`` per parameter, in the parameters' shapes."""
        return [buffer[offset:offset + size].reshape(shape)
                for offset, size, shape in zip(self.offsets, self.sizes, self.shapes)]

    def relocate(self, buffer):
        """Move the parameters into ``buffer`` (for example shared memory for worker processes)."""
        buffer[...] = self.data
        self.data = buffer
        self.data_views = self.views(buffer)
        for p, view in zip(self.params, self.data_views):
            p.data = view

    def attach(self):
        """Make every ``.data`` its view again where something assigned a new array (a loaded state dict)."""
        for p, view in zip(self.params, self.data_views):
            if p.data is not view:
                if p.data.shape != view.shape:
                    raise ValueError(f"a parameter of shape {view.shape} now holds an array of shape {p.data.shape}; "
                                     "build the optimizer again for the changed model")
                view[...] = backend.to_device(p.data, self.device) if backend.device_of(p.data) != self.device else p.data
                p.data = view

    def zero_grad(self):
        """One fill of the gradient buffer; every ``.grad`` None until backward writes its view."""
        self.grad.fill(0)
        for p in self.params:
            p.grad = None

    def gather_grads(self) -> bool:
        """Copy hand-assigned gradients into their views (zeros for a None gradient's view); True
        when every parameter has a gradient."""
        every = True
        for p, view in zip(self.params, self.grad_views):
            if p.grad is None:
                view.fill(0)
                every = False
            elif p.grad is not view:
                view[...] = p.grad
                p.grad = view
        return every


def stacked_grad_view(params):
    """The gradient views of ``params`` as one array (K, *shape), a view of their flat gradient
    buffer, when they are K consecutive parameters of one ``FlatParameters`` of one shape with no
    padding between them (a size that is a multiple of ``ALIGNMENT`` bytes: TimeMix's three mixes
    of D floats for every preset); else None.  An op that computes their gradients as one (K, ...)
    array writes it there in one go instead of K copies."""
    flat = getattr(params[0], "_flat", None) if params else None
    first = None if flat is None else flat.index.get(id(params[0]))
    if first is None or first + len(params) > len(flat.params):
        return None
    shape, size, start = flat.shapes[first], flat.sizes[first], flat.offsets[first]
    for k, p in enumerate(params):
        i = first + k
        if flat.params[i] is not p or flat.shapes[i] != shape or flat.offsets[i] != start + k * size \
                or p._grad_view is not flat.grad_views[i]:
            return None
    return flat.grad[start:start + len(params) * size].reshape((len(params),) + shape)
