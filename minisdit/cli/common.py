"""What the command-line tools share: one-line argument errors, the CPU options and their runtime
settings, and the choice of device."""
from __future__ import annotations

import argparse
import ctypes
import contextvars
import functools
import sys

from threadpoolctl import threadpool_limits

from .. import data
from ..autograd import backend
from ..diffusion import VARIANCES, progress_line
from ..kernels import runtime
from ..training.checkpoint import CheckpointError
from ..training.trainer import TrainingError

# The failures of a training command whose message already says what to do: printed as one line.
EXPECTED_ERRORS = (TrainingError, CheckpointError, backend.DeviceUnavailableError, data.DataIntegrityError,
                   data.FetchError, ValueError, OSError)


def one_line_error(error: Exception, prefix: str = "") -> int:
    """Print ``error`` as one line "error: <prefix>..." on stderr; the exit code 1."""
    print(f"error: {prefix}{' '.join(str(error).split())}", file=sys.stderr, flush=True)
    return 1


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line ("error: ...; see --help"), exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def add_cpu_arguments(parser):
    """--blas-threads and --no-cpu-kernels, shared by train, sample and evaluate."""
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads on the CPU (default 1: SDiT's matrices are small, and extra BLAS threads "
                             "competing for a few cores were 5-10x slower; 0 keeps the library's default)")
    parser.add_argument("--no-cpu-kernels", action="store_true",
                        help="on the CPU, run LIF, WKV and the DDPM loss with the NumPy references instead of minisdit/kernels/*.cu compiled as C++")


def add_sampling_arguments(parser):
    """--workers, --clip-denoised, --variance and --guidance-min-t, shared by sample and evaluate."""
    parser.add_argument("--workers", type=int, default=2,
                        help="CPU processes sharing the batches (default 2; the images are the same for any number; "
                             "a GPU uses one)")
    parser.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=False,
                        help="clip the predicted x̂_0 to [-1, 1] at every step (default off, as the authors)")
    parser.add_argument("--variance", choices=VARIANCES, default="learned",
                        help="the DDPM step's noise: the model's learned variance (default) or the posterior's "
                             "beta-tilde, which leaves fewer faint background dots (docs/decisions.md, session 8)")
    parser.add_argument("--guidance-min-t", type=int, default=0,
                        help="apply --cfg-scale only at timesteps >= this (default 0: every step); e.g. 200 stops "
                             "guidance from amplifying leftover noise at the end")


def sampling_report(show: bool):
    """The progress ``report`` of generate_in_workers: a line per finished batch on stderr, or None."""
    return progress_line(sys.stderr) if show else None


def _gpu_name() -> str:
    try:
        cupy = backend.get_array_module("gpu")
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # only decoration for the message; the device itself was checked already
        return "CUDA GPU"


def choose_device(requested: str | None) -> tuple[str, str]:
    """The device to use and a sentence saying which and why (the first line the CLIs print)."""
    if requested == "gpu":
        backend.get_array_module("gpu")  # raises DeviceUnavailableError with the real reason
        return "gpu", f"device: gpu ({_gpu_name()}; asked for with --device gpu)"
    if requested == "cpu":
        return "cpu", "device: cpu (asked for with --device cpu)"
    try:
        backend.get_array_module("gpu")
    except backend.DeviceUnavailableError as error:
        return "cpu", f"device: cpu (no usable GPU: {error})"
    return "gpu", f"device: gpu ({_gpu_name()}; found a usable CUDA GPU, --device cpu to avoid it)"


def own_runtime_settings(main):
    """Run a command-line ``main`` in a copy of the caller's ``contextvars`` context, so that the runtime
    settings it makes (``configure_cpu_runtime``: the CPU kernels) last until it returns and no longer,
    also when a test or a notebook calls ``main`` in its own process.  Forked workers inherit them."""
    @functools.wraps(main)
    def in_own_context(*args, **kwargs):
        return contextvars.copy_context().run(main, *args, **kwargs)
    return in_own_context


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER_TRIM = -1  # mallopt(3): "setting M_TRIM_THRESHOLD to -1 disables trimming completely"
_NO_MMAP = 0  # no chunk in a mapping of its own: the main thread's arrays come from its heap


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory a training step frees for the next step (Linux only).

    A step allocates its activations and frees them all at the end of backward.  Since the
    gradients live in the flat buffers (autograd/flat.py) nothing else stays allocated on top of
    the heap, so glibc gave the whole freed top back to the system after every step and the next
    step faulted every page in again: ``small`` at batch 8 took 137,744 page faults and 0.81 s of
    system time per step, against 9,388 and 0.05 s before the flat buffers (decisions.md).  Two
    settings keep the peak allocated, as it was before: no trimming of the heap's top, and no
    array in a mapping of its own (glibc maps those above its mmap threshold, at most 32 MB, and
    unmaps them on free, so ``small`` at batch 32, whose largest activations are about 39 MB and
    whose freed top passes 2 GB, still took 37,000-134,000 faults per step; now it takes under 20).
    Returns False where there is no glibc (nothing to change there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)) and bool(mallopt(_M_MMAP_MAX, _NO_MMAP))


def configure_cpu_runtime(blas_threads: int = 1, compiled_kernels: bool = True) -> str | None:
    """Settings that make SDiT fast on a CPU; the command-line tools call this for ``--device cpu``.

    * ``blas_threads``: SDiT's matrices are small, and extra BLAS threads competing for a few cores
      were 5-10x slower on a two-core machine (0 leaves the BLAS library's own setting).
    * ``compiled_kernels``: run LIF, WKV and the DDPM loss as minisdit/kernels/*.cu compiled as C++
      when a C++ compiler is present: ``runtime.select_cpu_kernels`` for the rest of the current
      context, which is the command's own (``own_runtime_settings``) and ends with it.
    * the memory a step frees stays with the process for the next one (``keep_freed_memory``).

    Returns a sentence for the user about the kernels, or None.
    """
    keep_freed_memory()
    if blas_threads > 0:
        threadpool_limits(limits=blas_threads, user_api="blas")
    if compiled_kernels:
        if runtime.cpu_compiler() is not None:
            runtime.select_cpu_kernels(True)  # ends with the context that own_runtime_settings made
            # the first words are what scripts and tests look for; keep them
            return ("LIF and WKV run as minisdit/kernels/*.cu compiled for the CPU, as does the DDPM loss "
                    "(--no-cpu-kernels: NumPy references)")
    return None
