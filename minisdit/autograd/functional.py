"""The functional API in one namespace, ``from minisdit import functional as F``: the generic ops of
``ops.py`` (elementwise, reductions, shapes) and the network ops of ``nn_ops.py``."""
from .nn_ops import conv2d, embedding, layer_norm, mse
from .ops import (abs, add, broadcast_to, concat, div, exp, getitem, log, matmul, max, maximum, mean, mul, neg, pad,
                  permute, pow, relu, reshape, sigmoid, silu, split, sqrt, stack, sub, sum, tanh, transpose, where)

__all__ = ["abs", "add", "broadcast_to", "concat", "conv2d", "div", "embedding", "exp", "getitem", "layer_norm", "log",
           "matmul", "max", "maximum", "mean", "mse", "mul", "neg", "pad", "permute", "pow", "relu", "reshape",
           "sigmoid", "silu", "split", "sqrt", "stack", "sub", "sum", "tanh", "transpose", "where"]
