"""The kernel workflow of llm.c's ``dev/cuda``, one module per kernel file (docs/DESIGN.md §7).

Each of ``lif``, ``wkv``, ``ddpm_loss``, ``optim``, ``layernorm`` and ``token_shift`` puts in one place

* which NumPy reference the kernels of ``minisdit/kernels/<name>.cu`` must match (the module
  docstring's REFERENCE paragraph),
* ``variants()``: every set of defines the library compiles the file with (the NVRTC check),
* ``check(...) -> worst error``: run the kernel source on random inputs (compiled as C++ on NumPy
  arrays, or with CuPy on a GPU) next to the reference; the worst error is in units of the
  tolerance that float rounding allows, so ``check(...) <= 1`` passes (``common.worst_error``),
* ``benchmark(...)``: time the reference and the kernels, with the bytes that must move.

The tests (``tests/kernels``) call the same ``check``; ``benchmarks/<name>_benchmark.py`` are
command lines over ``benchmark``.  This package sits at the top of the layers, next to
``minisdit.cli``, because the references live in ``snn``, ``rwkv`` and ``diffusion``, which are
above ``minisdit.kernels``.
"""
from . import ddpm_loss, layernorm, lif, optim, token_shift, wkv

KERNEL_CHECKS = {"lif": lif, "wkv": wkv, "ddpm_loss": ddpm_loss, "optim": optim, "layernorm": layernorm,
                 "token_shift": token_shift}

__all__ = ["KERNEL_CHECKS", "ddpm_loss", "layernorm", "lif", "optim", "token_shift", "wkv"]
