"""Standard multi-head self-attention: the `attention="softmax"` ablation of TimeMix in the block of docs/DESIGN.md §3.

The SDiT paper keeps RWKV's WKV recurrence as its attention; this layer is the Transformer's
attention in its place, to weigh what the linear-time, causal WKV costs in quality.  With H heads of
width d = D / H and no causal mask (every token, the Reconstruction Tokens included, sees every other):

    Q, K, V = X W_q^T, X W_k^T, X W_v^T                         (N, L, D) each, split into (N, H, L, d)
    O_h = softmax(Q_h K_h^T / sqrt(d)) V_h                        per head (``scaled_dot_product_attention``)
    Y = [O_1, ..., O_H] W_o^T                                     heads concatenated back to (N, L, D)

The four projections are D x D without bias and initialised like RWKV's (``projection_init``,
PyTorch's default U(-1/sqrt(D), 1/sqrt(D)) unless told otherwise), so the variants differ in the
attention only.  The softmax core and its backward live in ``autograd/nn_ops.py`` beside LayerNorm:
it is a generic array op with no parameters, while this layer (names, heads, init) is SDiT's.
"""
from __future__ import annotations

from ..autograd import functional as F
from ..autograd.nn import Linear, Module, _generator
from ..autograd.nn_ops import scaled_dot_product_attention


def default_num_heads(dim: int) -> int:
    """Heads of width 64 as in DiT, at least one: tiny (D = 64) 1, small (192) 3, paper (384) 6."""
    return max(1, dim // 64)


class SelfAttention(Module):
    """Bidirectional multi-head softmax self-attention; input and output (N, L, D).

    Parameters: query, key, value, output (Linear D -> D, no bias), named like TimeMix's projections.
    """

    def __init__(self, dim: int, num_heads: int | None = None, rng=None, projection_init: str = "torch"):
        super().__init__()
        num_heads = default_num_heads(dim) if num_heads is None else num_heads
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"softmax attention needs a width D divisible by its number of heads; got D={dim} "
                             f"with {num_heads} heads (choose a hidden size that is a multiple of {max(num_heads, 1)})")
        rng = _generator(rng)
        self.dim, self.num_heads = dim, num_heads
        self.query = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.key = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.value = Linear(dim, dim, bias=False, init=projection_init, rng=rng)
        self.output = Linear(dim, dim, bias=False, init=projection_init, rng=rng)

    def _split_heads(self, x):
        """(N, L, D) -> (N, H, L, d): head h holds features h d .. (h + 1) d - 1."""
        n, length, _ = x.shape
        return F.transpose(F.reshape(x, (n, length, self.num_heads, self.dim // self.num_heads)), (0, 2, 1, 3))

    def forward(self, x):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"expected tokens of shape (N, L, {self.dim}); got {x.shape}")
        n, length, _ = x.shape
        q, k, v = (self._split_heads(projection(x)) for projection in (self.query, self.key, self.value))
        heads = scaled_dot_product_attention(q, k, v)                     # (N, H, L, d)
        return self.output(F.reshape(F.transpose(heads, (0, 2, 1, 3)), (n, length, self.dim)))
