"""The Reconstruction Module: SDiT's contribution (Yang et al., arXiv 2402.11588, §3.3; docs/DESIGN.md §3).

Spikes quantise every branch output to {0, 1/T, ..., 1}, and the WKV scan is causal: patch n sees
only patches before it.  SDiT gives back what these lose with a learnable Reconstruction Token
matrix R0 (M x D, one row per token, initialised to ones) that each block appends after its M
image tokens.  R0 rides through the block's spiking TimeMix and ChannelMix with the image tokens;
since it comes after all of them in the causal scan, its rows R_hat see the whole image.  The
module below turns R_hat into a multiplicative gate G for the image tokens X_hat:

    A = R_hat W_a^T + b_a          (N, M, M)   fc_a: each reconstruction token's D features -> M numbers
    G = A^T W_b^T + b_b            (N, M, D)   fc_b: each patch's M-vector (a column of A) -> D features
    Y = X_hat * (1 + G)

so every patch is rescaled by a gate built from all M reconstruction tokens.  The block owns R0
(``recon_token``, appended and split off in ``SDiTBlock.forward``); this module owns fc_a and fc_b.
"""
from __future__ import annotations

from ..autograd import functional as F
from ..autograd import nn


class ReconstructionModule(nn.Module):
    """G = (R_hat W_a^T + b_a)^T W_b^T + b_b;  the block output is X_hat * (1 + G).

    fc_a mixes the D features of each reconstruction token into M numbers (A: N x M x M); after
    the transpose, fc_b maps each patch's M-vector back to D features, so every patch receives a
    gate built from all M reconstruction tokens.
    """

    def __init__(self, hidden_size, num_tokens, rng):
        super().__init__()
        self.fc_a = nn.Linear(hidden_size, num_tokens, rng=rng)
        self.fc_b = nn.Linear(num_tokens, hidden_size, rng=rng)

    def forward(self, x_hat, r_hat):
        a = self.fc_a(r_hat)                         # (N, M, M)
        g = self.fc_b(F.transpose(a, (0, 2, 1)))     # (N, M, D)
        return x_hat * (g + 1.0)
