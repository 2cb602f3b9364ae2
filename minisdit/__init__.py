"""minisdit: the Spiking Diffusion Transformer (SDiT) from scratch on NumPy and CuPy.

The package's folders are its layers, each importing only from the ones below it (docs/DESIGN.md
§8): ``autograd`` < ``kernels``, ``data`` < ``snn``, ``rwkv`` < ``models`` <
``diffusion``, ``metrics`` < ``training`` < ``cli``, ``kernel_checks``.
"""
from .autograd import backend, functional, nn, optim
from .autograd.tensor import Function, Tensor, is_grad_enabled, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "functional", "backend", "nn", "optim"]
