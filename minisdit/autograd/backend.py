"""The array module behind a device: NumPy for "cpu", CuPy for "gpu".

Every op in minisdit is written once against an array module ``xp`` (needle style); this file is
the only place that decides which module that is.  CuPy is imported lazily and, before it is
first used, made to compile and launch a tiny kernel and run a GEMM, so that a missing NVRTC or
cuBLAS is one clear line here rather than a raw CuPy error in the middle of a step.  When the GPU
cannot be used the error says why (the real exception text) and how to fix it -- it is never
swallowed (it is the ``__cause__``).
"""
from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "gpu")
# CuPy's wheels are built per CUDA major version; the [ctk] extra brings NVRTC and cuBLAS with it
GPU_INSTALL_HINT = ('install the GPU extra of your CUDA version: pip install -e ".[gpu12]" (CUDA 12) '
                    'or ".[gpu13]" (CUDA 13)')
MAX_REASON_CHARS = 300  # a compiler log can be pages long; its start names the cause, __cause__ keeps it all


class DeviceUnavailableError(RuntimeError):
    """Raised when a device was asked for that this machine cannot provide."""


_cupy_module = None

# The smallest program that needs what a training step needs of the GPU besides memory: NVRTC to
# compile it (every minisdit/kernels/*.cu is compiled by CuPy at run time) and the driver to launch it.
PROBE_KERNEL = r'''
extern "C" __global__ void minisdit_probe(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}
'''
PROBE_SIZE = 64


def one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line (whitespace collapsed), cut to MAX_REASON_CHARS."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def _probe(cupy) -> None:
    """Compile and launch ``PROBE_KERNEL`` (NVRTC, driver), then one float32 GEMM (cuBLAS), and
    check both results; raise one clear ``DeviceUnavailableError`` naming the part that failed."""
    try:
        x = cupy.zeros(PROBE_SIZE, dtype=cupy.float32)
        cupy.RawKernel(PROBE_KERNEL, "minisdit_probe")((1,), (PROBE_SIZE,), (x, cupy.int32(PROBE_SIZE)))
        launched = float(x.sum())
    except Exception as error:
        raise DeviceUnavailableError(
            f"device 'gpu' needs NVRTC to compile its CUDA kernels, but compiling and launching a test kernel "
            f"failed ({one_line(error)}); {GPU_INSTALL_HINT}, or use --device cpu") from error
    if launched != PROBE_SIZE:
        raise DeviceUnavailableError(f"device 'gpu': a test kernel ran but computed {launched:g} instead of "
                                     f"{PROBE_SIZE}; check the NVIDIA driver, or use --device cpu")
    try:
        ones = cupy.ones((PROBE_SIZE, PROBE_SIZE), dtype=cupy.float32)
        product = float((ones @ ones)[0, 0])  # a 2-D float32 matmul is a cuBLAS SGEMM
    except Exception as error:
        raise DeviceUnavailableError(
            f"device 'gpu' needs cuBLAS for its matrix products, but a test GEMM failed ({one_line(error)}); "
            f"{GPU_INSTALL_HINT}, or use --device cpu") from error
    if product != PROBE_SIZE:
        raise DeviceUnavailableError(f"device 'gpu': a test GEMM computed {product:g} instead of {PROBE_SIZE}; "
                                     "check the NVIDIA driver and CUDA libraries, or use --device cpu")


def _import_cupy():
    """Import CuPy, check that a CUDA device exists and that a kernel compiles, launches and a GEMM
    runs on it (``_probe``); raise one clear error otherwise.  Done once: the module is kept."""
    global _cupy_module
    if _cupy_module is not None:
        return _cupy_module
    try:
        import cupy
    except Exception as error:  # the real reason is kept in the message and as __cause__
        raise DeviceUnavailableError(
            f"device 'gpu' needs CuPy, but importing it failed ({one_line(error)}); "
            f"{GPU_INSTALL_HINT}, or use --device cpu"
        ) from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        raise DeviceUnavailableError(
            f"device 'gpu' needs a CUDA GPU, but CuPy could not reach one "
            f"({one_line(error)}); check the NVIDIA driver, or use --device cpu"
        ) from error
    if count < 1:
        raise DeviceUnavailableError("device 'gpu' needs a CUDA GPU, but none was found; use --device cpu")
    _probe(cupy)
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
    """None when the GPU can take a training step, else the one-line reason why not: CuPy must
    import, see a CUDA device, compile and launch a kernel (NVRTC) and run a GEMM (cuBLAS)."""
    try:
        _import_cupy()
    except DeviceUnavailableError as error:
        return str(error)
    return None


def gpu_available() -> bool:
    """True when the GPU can take a training step (``gpu_unavailable_reason`` is None)."""
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
