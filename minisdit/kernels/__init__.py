"""The CUDA RawKernels: their ``.cu`` sources beside this file, and ``runtime``, which runs any of them
(``Kernels(file, defines).run(name, threads, *arguments)``) with CuPy on GPU arrays or compiled as C++
on NumPy arrays, holds the scoped CPU-kernel setting (``with runtime.cpu_kernels():``), and checks a
source without a GPU (NVRTC).  The per-kernel checks and benchmarks are ``minisdit.kernel_checks``."""
from . import runtime

__all__ = ["runtime"]
