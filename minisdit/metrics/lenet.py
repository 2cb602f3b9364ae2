"""A small LeNet classifier for FID_LeNet and the classifier Inception Score on 28×28 grey images.

    x (N, 1, 28, 28) in [−1, 1]
    conv1 5×5, 1→8, pad 2 → ReLU → max pool 2       (8, 14, 14)
    conv2 5×5, 8→16       → ReLU → max pool 2       (16, 5, 5)
    fc1   400→128 → ReLU                             the penultimate features (128-d)
    fc2   128→10                                     logits; softmax gives p(y|x)

(the widths are arguments; the shipped files record theirs in the metadata "architecture").
It is small on purpose: it trains on two shared CPU cores in minutes.

FID_LeNet is the Fréchet distance between the 128-d penultimate features of the samples and of
the real test split; the Inception Score uses p(y|x) of the same network.  The network is trained
by ``scripts/train_lenet.py`` on the real training split of each data set; the weights ship in
``minisdit/weights/lenet_<dataset>.safetensors`` with the measured test accuracy in the file's
metadata and the test split's feature statistics (mean, covariance, count) beside the weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..autograd import backend
from ..autograd import functional as F
from ..autograd.nn import Conv2d, Linear, Module
from ..autograd.tensor import Tensor, no_grad
from .fid import FeatureStatistics
from .inception import as_uint8
from .layers import max_pool2d, softmax

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DATASETS = ("mnist", "fashion-mnist")
DEFAULT_ARCHITECTURE = {"channels": [8, 16], "hidden": 128}
STATISTICS_PREFIX = "reference.test."


class LeNet(Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels=(8, 16), hidden: int = 128, rng=0):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.architecture = {"channels": [int(c) for c in channels], "hidden": int(hidden)}
        self.conv1 = Conv2d(in_channels, channels[0], 5, padding=2, rng=rng)
        self.conv2 = Conv2d(channels[0], channels[1], 5, rng=rng)
        self.fc1 = Linear(channels[1] * 5 * 5, hidden, init="torch", rng=rng)
        self.fc2 = Linear(hidden, num_classes, init="torch", rng=rng)

    @property
    def feature_dim(self) -> int:
        return self.architecture["hidden"]

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations (N, hidden)."""
        x = max_pool2d(F.relu(self.conv1(x)), 2)
        x = max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(F.reshape(x, (x.shape[0], -1))))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes)."""
        return self.fc2(self.features(x))


def images_to_input(images, dtype=np.float32):
    """uint8 images (or samples in [−1, 1], made uint8 first) → floats u/127.5 − 1 in [−1, 1]."""
    images = as_uint8(images)
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"LeNet takes (N, 1, 28, 28) images, got shape {tuple(images.shape)}")
    return images.astype(dtype) / dtype(127.5) - dtype(1.0)


def lenet_outputs(images, model: LeNet, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, hidden), class probabilities p(y|x) (N, 10)), float64 NumPy, in one pass."""
    images = images.data if isinstance(images, Tensor) else images
    xp = backend.get_array_module(model.device)
    features, probabilities = [], []
    with no_grad():
        for start in range(0, len(images), batch_size):
            batch = images_to_input(xp.asarray(images[start:start + batch_size]), dtype=model.dtype.type)
            hidden = model.features(Tensor(batch))
            logits = model.fc2(hidden).data.astype(np.float64)
            features.append(backend.to_numpy(hidden.data).astype(np.float64))
            probabilities.append(backend.to_numpy(softmax(logits, axis=1)))
    if not features:
        return np.zeros((0, model.feature_dim)), np.zeros((0, model.fc2.out_features))
    return np.concatenate(features), np.concatenate(probabilities)


def lenet_features(images, model: LeNet, batch_size: int = 500) -> np.ndarray:
    """Penultimate features (N, hidden) as float64 NumPy."""
    return lenet_outputs(images, model, batch_size)[0]


def lenet_probabilities(images, model: LeNet, batch_size: int = 500) -> np.ndarray:
    """Class probabilities p(y|x) (N, 10) as float64 NumPy."""
    return lenet_outputs(images, model, batch_size)[1]


def weights_path(dataset: str) -> Path:
    if dataset not in DATASETS:
        raise ValueError(f"no LeNet for dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return WEIGHTS_DIR / f"lenet_{dataset}.safetensors"


def _read(path: Path):
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"LeNet weights {path} are missing; train them with `python scripts/train_lenet.py {path.stem[6:]}`")
    arrays = {}
    with safe_open(str(path), framework="numpy") as file:
        metadata = dict(file.metadata() or {})
        for key in file.keys():
            arrays[key] = file.get_tensor(key)
    return arrays, metadata


def load_lenet(dataset: str, device: str = "cpu", path=None) -> LeNet:
    """The shipped LeNet for ``dataset`` ("mnist" or "fashion-mnist") in eval mode; ``.metadata`` holds
    what the training script measured (test accuracy, epochs, seconds, ...)."""
    arrays, metadata = _read(Path(path) if path is not None else weights_path(dataset))
    metadata = {k: json.loads(v) for k, v in metadata.items()}
    model = LeNet(**metadata.get("architecture", DEFAULT_ARCHITECTURE))
    model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith(STATISTICS_PREFIX)})
    model.eval()
    model.metadata = metadata
    return model.to(device=device) if device != "cpu" else model


def reference_statistics(dataset: str, path=None) -> FeatureStatistics:
    """Mean and covariance of the shipped LeNet's features over the real test split of ``dataset``."""
    arrays, metadata = _read(Path(path) if path is not None else weights_path(dataset))
    return FeatureStatistics.from_moments(arrays[STATISTICS_PREFIX + "mean"], arrays[STATISTICS_PREFIX + "covariance"],
                                          int(json.loads(metadata[STATISTICS_PREFIX + "count"])))


def save_lenet(path, model: LeNet, test_statistics: FeatureStatistics, metadata: dict):
    """Weights + test-split feature statistics in one safetensors file; metadata values stored as JSON."""
    from safetensors.numpy import save_file

    arrays = dict(model.state_dict())
    arrays[STATISTICS_PREFIX + "mean"] = test_statistics.mean
    arrays[STATISTICS_PREFIX + "covariance"] = test_statistics.covariance
    metadata = dict(metadata, architecture=model.architecture, **{STATISTICS_PREFIX + "count": test_statistics.count})
    save_file(arrays, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
