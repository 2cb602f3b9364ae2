"""The autograd core: the array module behind a device (``backend``), ``Tensor`` and ``Function``
(``tensor``), the ops with their hand-written backwards (``ops``, ``nn_ops``, one namespace in
``functional``), modules (``nn``), optimisers (``optim``) and the gradient checker (``gradcheck``)."""
from . import backend, functional
from .tensor import Function, Tensor, as_tensor, is_grad_enabled, no_grad

__all__ = ["Tensor", "Function", "as_tensor", "no_grad", "is_grad_enabled", "functional", "backend"]
