"""minisdit: the Spiking Diffusion Transformer (SDiT) from scratch on NumPy and CuPy."""
from . import backend, functional
from .tensor import Function, Tensor, no_grad, is_grad_enabled

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "functional", "backend"]
