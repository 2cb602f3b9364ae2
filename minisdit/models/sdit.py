"""SDiT: the Spiking Diffusion Transformer (Yang et al., arXiv 2402.11588), as docs/DESIGN.md §3.

The data flow, with N images of C channels, H = W = 28, patch p, L = (H/p)(W/p), M = L + 1, width D:

    x (N, C, H, W) --Conv2d(C->D, kernel p, stride p)--> patches (N, L, D), raster order
        (spiking_embedding=True: patches = SN(patches), so the first block sees spike rates)
    t (N,) --256 sinusoids--> Linear -> SiLU -> Linear --> t_emb (N, D)
    y (N,) --table of num_classes + 1 rows (the trainer drops 10% to "no class": drop_labels)--> y_emb (N, D)
    tokens = [t_emb + y_emb, patches] + pos_embed                       (N, M, D)

    in-blocks (depth/2)  -> each output kept as a skip
    mid-block
    out-blocks (depth/2) -> first Linear(2D->D) of [x, skip], skips taken last-in-first-out

    one block, X (N, M, D), Reconstruction Token R0 (M, D):
        Z = [X, R0]                                   (N, 2M, D)  R0 rides along the causal scan
        Z = Z + SN(TimeMix(LN(Z)))                    spiking RWKV attention (WKV recurrence);
                                                      attention="softmax": multi-head softmax attention
        Z = Z + SN(ChannelMix(LN(Z)))                 spiking RWKV feed-forward
        X_hat, R_hat = Z[:, :M], Z[:, M:]
        A = R_hat W_a^T + b_a                         (N, M, M)   Reconstruction Module
        G = A^T W_b^T + b_b                           (N, M, D)
        Y = X_hat * (1 + G)                           the gate gives back what spikes lost

    head: LN -> Linear(D -> p^2 2C) -> drop token 0 -> unpatchify -> Conv2d(2C->2C, 3x3)
        -> (N, 2C, H, W): channels [0, C) predict the noise eps, [C, 2C) the variance interpolation v.

SN(a) presents the same a to a LIF neuron for T steps and returns the mean spike count
(``minisdit.snn.spike_rate``), so every branch output lies in {0, 1/T, ..., 1}.

The ablations of issue 15 are keyword arguments: ``reconstruction=False`` (no R0, no gate),
``spiking=False`` (every SN, the embedding's too, is the identity), ``T``, ``attention="softmax"``
(``attention.py``) and ``spiking_embedding=True``.  The defaults are the paper's model.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import backend
from ..autograd import functional as F
from ..autograd import nn
from ..rwkv import ChannelMix, TimeMix
from ..snn import SpikeRate
from ..autograd.tensor import Tensor
from ..kernels.layernorm import FUSED_LAYER_NORM
from .attention import SelfAttention
from .reconstruction import ReconstructionModule

PRESETS = {
    "tiny": dict(hidden_size=64, depth=2, patch_size=4),
    "small": dict(hidden_size=192, depth=4, patch_size=2),
    "paper": dict(hidden_size=384, depth=4, patch_size=2),
    "paper-cifar": dict(hidden_size=512, depth=8, patch_size=2),
}

ATTENTIONS = ("rwkv", "softmax")


class Identity(nn.Module):
    def forward(self, x):
        return x


class PatchEmbed(nn.Module):
    """Conv2d(C -> D, kernel p, stride p), then tokens in raster order: (N, L, D)."""

    def __init__(self, in_channels, hidden_size, patch_size, rng):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, rng=rng)
        fan_in = in_channels * patch_size * patch_size
        # Xavier on the weight seen as a (D, C p^2) matrix, bias zero (DiT's initialisation)
        self.proj.weight.data = nn.xavier_uniform(rng, self.proj.weight.shape, fan_in, hidden_size)
        self.proj.bias.data = np.zeros(hidden_size, np.float32)

    def forward(self, x):
        x = self.proj(x)  # (N, D, h, w)
        n, d = x.shape[:2]
        return F.transpose(F.reshape(x, (n, d, -1)), (0, 2, 1))


def timestep_sinusoids(t, dim: int = 256, xp=np, dtype=np.float32):
    """[cos(t f_i), sin(t f_i)] with f_i = exp(-ln(10000) i / (dim/2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    frequencies = xp.exp(-math.log(10000.0) * xp.arange(half, dtype=np.float64) / half)
    angles = xp.asarray(t, dtype=np.float64)[:, None] * frequencies[None]
    return xp.concatenate([xp.cos(angles), xp.sin(angles)], axis=1).astype(dtype)


class TimestepEmbedder(nn.Module):
    """t -> 256 sinusoid features -> Linear(256 -> D) -> SiLU -> Linear(D -> D)."""

    frequency_size = 256

    def __init__(self, hidden_size, rng):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.frequency_size, hidden_size, rng=rng), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, rng=rng))
        for layer in (self.mlp[0], self.mlp[2]):
            layer.weight.data = (rng.standard_normal(layer.weight.shape) * 0.02).astype(np.float32)

    def forward(self, t):
        weight = self.mlp[0].weight
        features = timestep_sinusoids(t, self.frequency_size, xp=weight.xp, dtype=weight.dtype)
        return self.mlp(Tensor(features))


class LabelEmbedder(nn.Module):
    """A table of num_classes + 1 rows; the last row means "no class" (classifier-free guidance)."""

    def __init__(self, num_classes, hidden_size, rng):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size, std=0.02, rng=rng)

    def forward(self, y):
        y = np.asarray(y if not hasattr(y, "get") else y.get()).astype(np.int64)
        return self.embedding_table(y)


class SDiTBlock(nn.Module):
    """Spiking RWKV block with the Reconstruction Token; ``skip`` given for output blocks.

    ``attention="softmax"`` puts ``SelfAttention`` where TimeMix is, under the same name ``att``
    and the same SN; ChannelMix stays.
    """

    def __init__(self, hidden_size, num_tokens, layer_id, depth, rng, *, skip=False, reconstruction=True,
                 spiking=True, T=4, neuron_options=None, projection_init="torch", attention="rwkv"):
        super().__init__()
        self.reconstruction = reconstruction
        if skip:
            self.skip_linear = nn.Linear(2 * hidden_size, hidden_size, rng=rng)
        else:
            self.skip_linear = None
        if reconstruction:
            self.recon_token = nn.Parameter(np.ones((num_tokens, hidden_size), np.float32))
        if attention == "softmax":
            self.att = SelfAttention(hidden_size, rng=rng, projection_init=projection_init)
        else:
            self.att = TimeMix(hidden_size, layer_id, depth, rng=rng, projection_init=projection_init)
        self.ffn = ChannelMix(hidden_size, layer_id, depth, rng=rng, projection_init=projection_init)
        self.att_neuron = SpikeRate(T=T, **(neuron_options or {})) if spiking else Identity()
        self.ffn_neuron = SpikeRate(T=T, **(neuron_options or {})) if spiking else Identity()
        if reconstruction:
            self.recon = ReconstructionModule(hidden_size, num_tokens, rng)

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(F.concat([x, skip], axis=-1))
        n, m, d = x.shape
        z = x
        if self.reconstruction:
            # one (M, D) token matrix shared by the batch: its gradient is the sum over the batch
            tokens = F.broadcast_to(self.recon_token, (n, m, d))
            z = F.concat([x, tokens], axis=1)
        z = z + self.att_neuron(self.att(F.layer_norm(z, eps=1e-6, fused=FUSED_LAYER_NORM)))
        z = z + self.ffn_neuron(self.ffn(F.layer_norm(z, eps=1e-6, fused=FUSED_LAYER_NORM)))
        if not self.reconstruction:
            return z
        return self.recon(z[:, :m], z[:, m:])


class FinalLayer(nn.Module):
    """LN -> Linear(D -> p^2 2C) (zero init) -> drop token 0 -> unpatchify -> Conv2d 3x3."""

    def __init__(self, hidden_size, patch_size, out_channels, rng):
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, init="zeros", rng=rng)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1, rng=rng)

    def forward(self, x, grid_size):
        x = self.linear(F.layer_norm(x, eps=1e-6, fused=FUSED_LAYER_NORM))[:, 1:]
        return self.conv(unpatchify(x, grid_size, self.patch_size, self.out_channels))


def unpatchify(x, grid_size, patch_size, channels):
    """(N, L, p p C') -> (N, C', H, W): feature (a p + b) C' + ch goes to pixel (ch, r p + a, c p + b)."""
    n = x.shape[0]
    h, w = grid_size
    x = F.reshape(x, (n, h, w, patch_size, patch_size, channels))   # n, r, c, a, b, ch
    x = F.transpose(x, (0, 5, 1, 3, 2, 4))                          # n, ch, r, a, c, b
    return F.reshape(x, (n, channels, h * patch_size, w * patch_size))


class SDiT(nn.Module):
    """The noise predictor: ``model(x, t, y)`` -> (N, 2C, H, W) (or (N, C, H, W) without learn_sigma)."""

    def __init__(self, *, input_size=28, patch_size=2, in_channels=1, hidden_size=384, depth=4,
                 num_classes=10, class_dropout_prob=0.1, learn_sigma=True, reconstruction=True,
                 spiking=True, T=4, neuron_options=None, projection_init="torch", attention="rwkv",
                 spiking_embedding=False, seed=0):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
        for name, value in (("reconstruction", reconstruction), ("spiking", spiking),
                            ("spiking_embedding", spiking_embedding)):
            if not isinstance(value, (bool, np.bool_)):  # a string such as "False" would silently be true
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if depth < 2 or depth % 2:
            raise ValueError(f"depth must be even and >= 2, got {depth}")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        rng = np.random.default_rng(seed)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.depth, self.num_classes = hidden_size, depth, num_classes
        self.learn_sigma, self.reconstruction, self.spiking, self.T = learn_sigma, reconstruction, spiking, T
        self.attention, self.spiking_embedding = attention, bool(spiking_embedding)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid_size = (input_size // patch_size, input_size // patch_size)
        self.num_tokens = self.grid_size[0] * self.grid_size[1] + 1
        self.class_dropout_prob = class_dropout_prob

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size, rng)
        if spiking_embedding:  # no parameters: the default model's module tree stays as it was
            self.x_neuron = SpikeRate(T=T, **(neuron_options or {})) if spiking else Identity()
        self.t_embedder = TimestepEmbedder(hidden_size, rng)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, rng)
        self.pos_embed = nn.Parameter(np.zeros((1, self.num_tokens, hidden_size), np.float32))
        block_options = dict(reconstruction=reconstruction, spiking=spiking, T=T, neuron_options=neuron_options,
                             projection_init=projection_init, attention=attention)
        half = depth // 2
        self.in_blocks = nn.ModuleList(
            SDiTBlock(hidden_size, self.num_tokens, i, depth, rng, **block_options) for i in range(half))
        self.mid_block = SDiTBlock(hidden_size, self.num_tokens, half, depth, rng, **block_options)
        self.out_blocks = nn.ModuleList(
            SDiTBlock(hidden_size, self.num_tokens, i, depth, rng, skip=True, **block_options) for i in range(half))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, rng)

    def drop_labels(self, y, rng: np.random.Generator) -> np.ndarray:
        """Classifier-free guidance's training half: each label becomes "no class" (num_classes) with
        probability ``class_dropout_prob``, from one uniform draw of ``rng`` per label.  The caller drops
        the labels of a batch once and passes them to ``forward``, which uses labels as given."""
        y = np.asarray(y if not hasattr(y, "get") else y.get()).astype(np.int64)
        if self.class_dropout_prob <= 0:
            return y
        return np.where(rng.random(y.shape[0]) < self.class_dropout_prob, self.num_classes, y)

    def forward(self, x, t, y):
        """x: images (N, C, H, W); t: integer steps (N,), any t >= 0 (the diffusion's original step,
        0..999 for 1000 steps); y: integer labels (N,) in 0..num_classes, num_classes meaning "no class"
        (used as given, in training too: label dropout is ``drop_labels``, applied by the caller)."""
        if not isinstance(x, Tensor):
            x = Tensor(x)
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"SDiT expects images (N, {self.in_channels}, {self.input_size}, {self.input_size}), got {x.shape}")
        n = x.shape[0]
        t = _integer_array("t", t, n, "one diffusion step per image")
        if t.size and t.min() < 0:
            raise ValueError(f"t must hold diffusion steps >= 0, got {t.min()}")
        y = _integer_array("y", y, n, f"one class label per image, {self.num_classes} meaning 'no class'")
        if y.size and (y.min() < 0 or y.max() > self.num_classes):
            raise ValueError(f"y must hold class labels in 0..{self.num_classes} ({self.num_classes} means 'no class'), "
                             f"got values {y.min()}..{y.max()}")
        tokens = self.x_embedder(x)
        if self.spiking_embedding:
            tokens = self.x_neuron(tokens)
        condition = self.t_embedder(t) + self.y_embedder(y)
        n, _, d = tokens.shape
        z = F.concat([F.reshape(condition, (n, 1, d)), tokens], axis=1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            z = block(z)
            skips.append(z)
        z = self.mid_block(z)
        for block in self.out_blocks:
            z = block(z, skips.pop())
        return self.final_layer(z, self.grid_size)


def _integer_array(name, values, batch, meaning):
    """``values`` (NumPy, CuPy, a list or a Tensor) as a NumPy int64 array of shape (batch,), or a one-line error."""
    values = values.data if isinstance(values, Tensor) else values
    array = backend.to_numpy(values) if backend.is_gpu_array(values) else np.asarray(values)
    if array.dtype.kind not in "iu" or array.shape != (batch,):
        raise ValueError(f"{name} must be an integer array of shape ({batch},), {meaning}; "
                         f"got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


def sdit_from_preset(name: str, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, **options) -> SDiT:
    """Build one of the presets in docs/DESIGN.md §2: tiny, small, paper, paper-cifar.

    ``options`` go to ``SDiT``: the ablations ``reconstruction``, ``spiking``, ``T``, ``attention``,
    ``spiking_embedding``, and ``neuron_options``, ``projection_init``, ``seed``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return SDiT(input_size=input_size, in_channels=in_channels, num_classes=num_classes, **PRESETS[name], **options)
