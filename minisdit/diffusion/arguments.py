"""The callers' arguments as the diffusion uses them: raw arrays, class labels, random generators,
the null label of classifier-free guidance, and the model's evaluation mode while sampling."""
from __future__ import annotations

import contextlib

import numpy as np

from ..autograd import backend
from ..autograd.tensor import Tensor, as_tensor


def data_of(value):
    """The array inside a Tensor, or the value itself."""
    return value.data if isinstance(value, Tensor) else value


def as_tensors(*values):
    """Every value as a Tensor on the device (and of the kind) of the first Tensor among them."""
    reference = next((v for v in values if isinstance(v, Tensor)), None)
    if reference is None:
        reference = Tensor(values[0])
    return tuple(as_tensor(v, like=reference) for v in values)


def generator(rng=None, seed=None) -> np.random.Generator:
    """A NumPy Generator from ``rng`` (a Generator or a seed) or ``seed``, never both."""
    if rng is not None and seed is not None:
        raise ValueError("pass either rng or seed, not both")
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(seed if rng is None else rng)


def labels_of(y, batch: int):
    """Class labels as a NumPy int64 array (N,) (an int is repeated); None stays None."""
    if y is None:
        return None
    labels = np.asarray(backend.to_numpy(data_of(y)) if backend.is_gpu_array(data_of(y)) else data_of(y))
    if labels.ndim == 0:
        labels = np.full(batch, int(labels))
    if labels.shape != (batch,):
        raise ValueError(f"y must hold one class label per sample, shape ({batch},), got {labels.shape}")
    return labels.astype(np.int64)


def null_label_of(model, num_classes):
    """The label ∅ = num_classes that means "no class" (given, else the model's), or None."""
    if num_classes is not None:
        return int(num_classes)
    found = getattr(model, "num_classes", None)
    return None if found is None else int(found)


def device_and_dtype(model, noise=None):
    """Where and in which dtype to sample: the given noise's, else the model's (default cpu, float32)."""
    if noise is not None:
        return backend.device_of(data_of(noise)), data_of(noise).dtype
    return getattr(model, "device", "cpu"), np.dtype(getattr(model, "dtype", np.float32))


@contextlib.contextmanager
def evaluation_mode(model):
    """Sample with the model in eval mode (deterministic neurons and layers), then restore its mode."""
    was_training = getattr(model, "training", False)
    if was_training and hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)
