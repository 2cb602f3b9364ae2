"""The CUDA RawKernels: their ``.cu`` sources beside this file, and ``runtime``, which compiles a
source for a GPU (CuPy), checks it without one (NVRTC) and runs it on the CPU (compiled as C++)."""
from . import runtime

__all__ = ["runtime"]
