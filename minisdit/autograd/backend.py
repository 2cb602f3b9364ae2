"""The array module behind a device: NumPy for "cpu", CuPy for "gpu".

Every op in minisdit is written once against an array module ``xp`` (needle style); this file is
the only place that decides which module that is.  CuPy is imported lazily, and when it cannot be
used the error says why (the real exception text) and how to fix it -- it is never swallowed.
"""
from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "gpu")
GPU_INSTALL_HINT = 'install the GPU extra with: pip install -e ".[gpu]"'


class DeviceUnavailableError(RuntimeError):
    """Raised when a device was asked for that this machine cannot provide."""


_cupy_module = None


def _import_cupy():
    """Import CuPy and check that a CUDA device exists; raise one clear error otherwise."""
    global _cupy_module
    if _cupy_module is not None:
        return _cupy_module
    try:
        import cupy
    except Exception as error:  # the real reason is kept in the message and as __cause__
        raise DeviceUnavailableError(
            f"device 'gpu' needs CuPy, but importing it failed ({type(error).__name__}: {error}); "
            f"{GPU_INSTALL_HINT}, or use --device cpu"
        ) from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        raise DeviceUnavailableError(
            f"device 'gpu' needs a CUDA GPU, but CuPy could not reach one "
            f"({type(error).__name__}: {error}); check the NVIDIA driver, or use --device cpu"
        ) from error
    if count < 1:
        raise DeviceUnavailableError("device 'gpu' needs a CUDA GPU, but none was found; use --device cpu")
    _cupy_module = cupy
    return cupy


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return device


def get_array_module(device: str = "cpu"):
    """Return the array module (``xp``) for ``device``: numpy for "cpu", cupy for "gpu"."""
    if check_device(device) == "cpu":
        return np
    return _import_cupy()


def gpu_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a CUDA device, else the one-line reason why not."""
    try:
        _import_cupy()
    except DeviceUnavailableError as error:
        return str(error)
    return None


def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device (used for the default device only)."""
    return gpu_unavailable_reason() is None


def is_gpu_array(array) -> bool:
    # CuPy arrays are the only ones we create that live outside numpy; checking the module name
    # avoids importing cupy just to answer "is this a numpy array?".
    return type(array).__module__.startswith("cupy")


def array_module_of(array):
    return _import_cupy() if is_gpu_array(array) else np


def device_of(array) -> str:
    return "gpu" if is_gpu_array(array) else "cpu"


def to_device(array, device: str):
    """Move an array to ``device`` (a no-op when it is already there)."""
    check_device(device)
    if device == "cpu":
        return array.get() if is_gpu_array(array) else np.asarray(array)
    cupy = _import_cupy()
    return cupy.asarray(array)


def to_numpy(array) -> np.ndarray:
    return to_device(array, "cpu")
