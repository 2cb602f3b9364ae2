"""RWKV-4's TimeMix and ChannelMix layers for SDiT, with the authors' initialisation (docs/DESIGN.md §3).

TimeMix: token shift, the three mixes, the k/v/r projections, the WKV operator (``wkv_operator.py``)
and the output projection; ChannelMix: the token-shift MLP gated by sigma(r).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import functional as F
from ..autograd.nn import Linear, Module, Parameter, _generator
from .shift_mix import kernels_apply, token_shift_mix
from .wkv_operator import wkv

# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
def token_shift(x):
    """z_{n-1} for every position n of x (N, L, D), with z_{-1} = 0: pad one zero token in front, drop the last."""
    return F.pad(x, axis=1, before=1)[:, :-1, :]


def _mix(x, shifted, mix):
    """mu * z_n + (1 - mu) * z_{n-1}, per channel."""
    return x * mix + shifted * (1 - mix)


def _mixes(x, *mixes):
    """The token shift with its mixes: one fused ``TokenShiftMix`` where its kernels run (a GPU), else
    this composition, whose float operations and gradient sums keep CPU training bitwise as before."""
    if kernels_apply(x.data):
        return token_shift_mix(x, *mixes)
    shifted = token_shift(x)
    return [_mix(x, shifted, mix) for mix in mixes]


def _check_layer(dim: int, layer_id: int, depth: int, projection_init: str):
    if depth < 2:
        raise ValueError(f"RWKV init needs depth >= 2 (it divides by depth - 1); got depth={depth}")
    if not 0 <= layer_id < depth:
        raise ValueError(f"layer_id must be in 0..depth-1 = 0..{depth - 1}; got {layer_id}")
    if dim < 2:
        raise ValueError(f"RWKV init needs dim >= 2 (time_decay divides by dim - 1); got dim={dim}")
    if projection_init not in ("torch", "xavier"):
        raise ValueError(f"unknown projection_init {projection_init!r}; use 'torch' (PyTorch default) or 'xavier'")


def layer_ratios(layer_id: int, depth: int) -> tuple[float, float]:
    """(rho0, rho1) = (l / (depth - 1), 1 - l / depth): how deep the layer sits, for RWKV's init."""
    return layer_id / (depth - 1), 1.0 - layer_id / depth


def time_mix_init(dim: int, layer_id: int, depth: int) -> dict[str, np.ndarray]:
    """The layer-dependent RWKV vectors of docs/DESIGN.md §3 (float32, shape (dim,))."""
    rho0, rho1 = layer_ratios(layer_id, depth)
    h = np.arange(dim, dtype=np.float64)
    fraction = h / dim  # 0 .. (D-1)/D
    vectors = {
        "time_decay": -5.0 + 8.0 * (h / (dim - 1)) ** (0.7 + 1.3 * rho0),
        "time_first": math.log(0.3) + 0.5 * (((h + 1) % 3) - 1),
        "time_mix_k": fraction ** rho1,
        "time_mix_v": fraction ** rho1 + 0.3 * rho0,
        "time_mix_r": fraction ** (0.5 * rho1),
        "channel_mix_k": fraction ** rho1,
        "channel_mix_r": fraction ** rho1,
    }
    return {name: value.astype(np.float32) for name, value in vectors.items()}


class TimeMix(Module):
    """RWKV-4 time mixing: token shift, k/v/r projections, WKV, sigma(r) gate, output projection.

    Input and output (N, L, D).  Parameters: time_decay, time_first, time_mix_k, time_mix_v,
    time_mix_r (D,), and key, value, receptance, output (Linear D -> D, no bias).
    """

    def __init__(self, dim: int, layer_id: int, depth: int, rng=None, projection_init: str = "torch"):
        super().__init__()
        _check_layer(dim, layer_id, depth, projection_init)
        rng = _generator(rng)
        self.dim, self.layer_id, self.depth = dim, layer_id, depth
        vectors = time_mix_init(dim, layer_id, depth)
        self.time_decay = Parameter(vectors["time_decay"])
        self.time_first = Parameter(vectors["time_first"])
        self.time_mix_k = Parameter(vectors["time_mix_k"])
        self.time_mix_v = Parameter(vectors["time_mix_v"])
        self.time_mix_r = Parameter(vectors["time_mix_r"])
        self.key = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.value = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.receptance = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.output = Linear(dim, dim, bias=False, init=projection_init, rng=rng)

    def forward(self, x):
        _check_tokens(x, self.dim)
        x_k, x_v, x_r = _mixes(x, self.time_mix_k, self.time_mix_v, self.time_mix_r)
        k = self.key(x_k)
        v = self.value(x_v)
        r = self.receptance(x_r)
        return self.output(wkv(self.time_decay, self.time_first, k, v, r=r))  # σ(r) ⊙ wkv in one op


class ChannelMix(Module):
    """RWKV-4 channel mixing: sigma(W'_r x^r) * W'_v ReLU(W'_k x^k)^2, with a 4D hidden layer.

    Input and output (N, L, D).  Parameters: time_mix_k, time_mix_r (D,), key (D -> 4D),
    receptance (D -> D), value (4D -> D), all Linear without bias.
    """

    def __init__(self, dim: int, layer_id: int, depth: int, rng=None, projection_init: str = "torch"):
        super().__init__()
        _check_layer(dim, layer_id, depth, projection_init)
        rng = _generator(rng)
        self.dim, self.layer_id, self.depth = dim, layer_id, depth
        hidden = 4 * dim
        vectors = time_mix_init(dim, layer_id, depth)
        self.time_mix_k = Parameter(vectors["channel_mix_k"])
        self.time_mix_r = Parameter(vectors["channel_mix_r"])
        self.key = Linear(dim, hidden, bias=False, init=projection_init, rng=rng)
        self.receptance = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.value = Linear(hidden, dim, bias=False, init=projection_init, rng=rng)

    def forward(self, x):
        _check_tokens(x, self.dim)
        x_k, x_r = _mixes(x, self.time_mix_k, self.time_mix_r)
        k = F.relu(self.key(x_k)) ** 2
        r = self.receptance(x_r)
        return F.sigmoid(r) * self.value(k)


def _check_tokens(x, dim: int):
    if x.ndim != 3 or x.shape[2] != dim:
        raise ValueError(f"expected tokens of shape (N, L, {dim}); got {x.shape}")
