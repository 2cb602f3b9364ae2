"""Modules: parameters with names, PyTorch-style state dicts, and the few layers SDiT needs.

Names follow PyTorch's convention (``blocks.0.att.key.weight``; a Linear weight is (out, in)) so
that a state dict moves between minisdit and a PyTorch port without renaming.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .nn_ops import linear
from .tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad is always on)."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)


class Module:
    """Base class: attributes that are Parameters or Modules are found by name, recursively."""

    def __init__(self):
        object.__setattr__(self, "training", True)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # ----- discovery -----
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix: str = ""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ----- modes -----
    def train(self, mode: bool = True):
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ----- devices and dtypes -----
    def to(self, device: str | None = None, dtype=None):
        """Move every parameter (in place) to ``device`` and/or cast it to ``dtype``."""
        for module in self.modules():
            for name, value in list(vars(module).items()):
                if isinstance(value, Parameter):
                    data = value.data if device is None else backend.to_device(value.data, device)
                    if dtype is not None:
                        data = data.astype(dtype)
                    value.data, value.grad = data, None
        return self

    @property
    def device(self) -> str:
        parameters = self.parameters()
        return parameters[0].device if parameters else "cpu"

    @property
    def dtype(self):
        parameters = self.parameters()
        return parameters[0].dtype if parameters else np.dtype(np.float32)

    # ----- state dicts -----
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """{dotted name: NumPy array copy} of every parameter."""
        return OrderedDict((name, backend.to_numpy(p.data).copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy arrays into the parameters; names and shapes must match (all of them if strict)."""
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state dict does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for name, parameter in own.items():
            if name not in state:
                continue
            value = np.asarray(backend.to_numpy(state[name]))
            if value.shape != parameter.shape:
                raise ValueError(f"shape mismatch for {name}: checkpoint has {value.shape}, model has {parameter.shape}")
            parameter.data = backend.to_device(value.astype(parameter.dtype), parameter.device)
            parameter.grad = None
        return self


class ModuleList(Module):
    """A list of modules named 0, 1, 2, ... in the state dict."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module):
        setattr(self, str(len(self)), module)

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def __getitem__(self, index: int) -> Module:
        return getattr(self, str(index % len(self)))

    def __iter__(self):
        return (module for _, module in self.named_children())


class Sequential(ModuleList):
    """Applies its modules in order."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x


# --------------------------------------------------------------------------------------------
# initialisers (NumPy, seeded through the generator that the caller passes)
# --------------------------------------------------------------------------------------------
def xavier_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def torch_default_uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weights and biases)."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _generator(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------
class Linear(Module):
    """y = x W^T + b with W of shape (out_features, in_features).

    ``init`` is "xavier" (Xavier-uniform weight, zero bias), "torch" (PyTorch's default uniform
    for weight and bias) or "zeros".
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "xavier", rng=None):
        super().__init__()
        rng = _generator(rng)
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features)
        if init == "xavier":
            weight = xavier_uniform(rng, shape, in_features, out_features)
            bias_value = np.zeros(out_features, np.float32)
        elif init == "torch":
            weight = torch_default_uniform(rng, shape, in_features)
            bias_value = torch_default_uniform(rng, (out_features,), in_features)
        elif init == "zeros":
            weight = np.zeros(shape, np.float32)
            bias_value = np.zeros(out_features, np.float32)
        else:
            raise ValueError(f"unknown init {init!r}; use 'xavier', 'torch' or 'zeros'")
        self.weight = Parameter(weight)
        if bias:
            self.bias = Parameter(bias_value)
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)  # one fused node, one 2-D GEMM (nn_ops.Linear)


class LayerNorm(Module):
    """LayerNorm over the last axis: (x - mean) / sqrt(biased var + eps), optionally * weight + bias."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        if elementwise_affine:
            self.weight = Parameter(np.ones(normalized_shape, np.float32))
            self.bias = Parameter(np.zeros(normalized_shape, np.float32))
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)


class Conv2d(Module):
    """2-D convolution (cross-correlation), weight (out, in, kh, kw); PyTorch's default init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, rng=None):
        super().__init__()
        rng = _generator(rng)
        self.stride, self.padding = stride, padding
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = Parameter(torch_default_uniform(rng, (out_channels, in_channels, kernel_size, kernel_size), fan_in))
        self.bias = Parameter(torch_default_uniform(rng, (out_channels,), fan_in)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


class Embedding(Module):
    """A lookup table (num_embeddings, dim), initialised N(0, std^2)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 1.0, rng=None):
        super().__init__()
        rng = _generator(rng)
        self.weight = Parameter((rng.standard_normal((num_embeddings, embedding_dim)) * std).astype(np.float32))

    def forward(self, indices) -> Tensor:
        return F.embedding(indices, self.weight)


class SiLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)
