"""One runtime for every CUDA source in ``minisdit/kernels/*.cu`` (docs/DESIGN.md §7).

``Kernels(file, defines)`` is the kernels of one ``.cu`` file for one variant (the preprocessor
defines, for example ``{"SURROGATE": 0, "HARD_RESET": 1, "scalar_t": "float"}``).
``kernels.run(name, threads, *arguments)`` launches kernel ``name`` over ``threads`` independent
recurrences: with CuPy when the arrays are CuPy arrays (compiled once per variant by
``cupy.RawModule``), and with the same source compiled as C++ (``cuda_cpu_shim.h``) when they
are NumPy arrays.  Scalars are passed as Python numbers and converted to the C types of the
kernel's signature, so a caller never spells ``np.int32``.

Every kernel follows one convention, checked when its source is parsed (``kernel_signatures``):

* ``extern "C" __global__`` functions, one thread per independent recurrence in a grid-stride
  loop, no shared memory and no barriers (so running the threads one after another on the CPU
  computes what the GPU computes, up to float rounding: CuPy compiles with FMA contraction and
  float32 flush-to-zero);
* the arguments in the order **inputs** (``const scalar_t*``), **outputs** (``scalar_t*``),
  **sizes** (integers), **scalar parameters** (``scalar_t``/floating point), by value.

Whether an op runs its kernel on NumPy arrays is an explicit, scoped setting: inside
``with cpu_kernels():`` (a ``contextvars`` variable, so it ends with the block, and forked
processes and ``copy_context`` copies inherit it) the ops use these compiled CPU kernels; outside it
they run their NumPy references.  On CuPy arrays the ops always use the kernels
(``kernels_run_on(array)`` says which).

Also here: ``nvrtc_compile`` compiles a source to PTX with NVRTC without a GPU (the
``nvidia-cuda-nvrtc-cu12`` wheel), so that CI catches a kernel that does not compile for a GPU.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..autograd import backend


def kernel_directory() -> Path:
    """The folder holding the ``.cu`` files: this package's own folder (installed as package data)."""
    return Path(__file__).resolve().parent


def kernel_source(file_name: str) -> str:
    return (kernel_directory() / file_name).read_text()


def _define_flags(defines: dict) -> list[str]:
    return [f"-D{name}={value}" for name, value in sorted(defines.items())]


def _freeze(defines: dict | None) -> tuple:
    return tuple(sorted((defines or {}).items()))


# ---------------------------------------------------------------------------------------------
# GPU: CuPy RawModule
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _gpu_module(file_name: str, frozen_defines: tuple):
    import cupy  # the caller has already checked that the GPU backend works

    options = tuple(_define_flags(dict(frozen_defines))) + ("--std=c++14",)
    return cupy.RawModule(code=kernel_source(file_name), options=options)


def gpu_function(file_name: str, kernel_name: str, defines: dict | None = None):
    """The compiled CuPy kernel ``kernel_name`` from ``kernels/file_name`` for this variant."""
    return _gpu_module(file_name, _freeze(defines)).get_function(kernel_name)


# The C type behind ``scalar_t`` for each array dtype the kernels accept.
SCALAR_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def scalar_type(dtype) -> str:
    """"float" or "double": the ``scalar_t`` define that makes a kernel work on arrays of ``dtype``."""
    name = SCALAR_TYPES.get(np.dtype(dtype))
    if name is None:
        raise TypeError(f"the CUDA kernels take float32 or float64 arrays, got {np.dtype(dtype)}; cast them with .astype(np.float32)")
    return name


# On the CPU every kernel runs sequentially; a grid of one block of one thread makes the kernel's
# grid-stride loop visit every element in one call instead of one call per thread.
CPU_LAUNCH = ((1,), (1,))


def launch_configuration(threads: int, block: int = 256) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) covering ``threads`` threads, one per independent recurrence."""
    return ((threads + block - 1) // block,), (block,)


def launch(kernel, threads: int, args, block: int | None = None, max_blocks: int | None = None,
           gpu_block: int = 256) -> None:
    """Run ``kernel`` (CuPy's, or a ``CpuKernel``) over ``threads`` independent recurrences.

    ``block=None`` picks the fast launch: one CPU thread for a ``CpuKernel`` (``CPU_LAUNCH``), and
    ``gpu_block`` threads per block on a GPU.  An explicit ``block`` launches enough blocks of that
    size on either device, so that a CPU run exercises the kernel's multi-block indexing;
    ``max_blocks`` caps the grid, so that its grid-stride loop must wrap.
    """
    if threads == 0:
        return  # nothing to do, and CUDA rejects a grid of zero blocks
    if block is None and isinstance(kernel, CpuKernel):
        grid, block_shape = CPU_LAUNCH
    else:
        grid, block_shape = launch_configuration(threads, gpu_block if block is None else block)
    if max_blocks is not None:
        grid = (min(grid[0], max_blocks),)
    kernel(grid, block_shape, args)


# ---------------------------------------------------------------------------------------------
# NVRTC: compile without a GPU
# ---------------------------------------------------------------------------------------------
class KernelCompileError(RuntimeError):
    """A kernel source failed to compile; the message holds the compiler's log."""


def _find_nvrtc() -> str | None:
    patterns = []
    for entry in sys.path:
        patterns.append(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
        patterns.append(os.path.join(entry, "nvidia", "cu*", "lib", "libnvrtc.so*"))
    for root in filter(None, [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]):
        patterns.append(os.path.join(root, "lib64", "libnvrtc.so*"))
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if "builtins" not in os.path.basename(path):
                return path
    return None


def nvrtc_available() -> bool:
    return _find_nvrtc() is not None


# What CI compiles every kernel file and variant for: the virtual architecture the PTX is shipped
# for (any GPU from the A100 on), and the H100's real one (NVRTC then also runs ptxas to machine code).
NVRTC_ARCHITECTURES = ("compute_80", "sm_90")


def nvrtc_compile(source: str, defines: dict | None = None, arch: str = "compute_80", name: str = "kernel.cu") -> str:
    """Compile CUDA C ``source`` to PTX with NVRTC; raise ``KernelCompileError`` with the log.

    For a real architecture (``sm_90``) NVRTC also assembles the PTX to machine code (a cubin);
    an empty cubin is an error too."""
    library_path = _find_nvrtc()
    if library_path is None:
        raise FileNotFoundError('libnvrtc not found; install it with: pip install nvidia-cuda-nvrtc-cu12 (part of ".[dev]")')
    nvrtc = ctypes.CDLL(library_path)
    program = ctypes.c_void_p()

    def check(status, what):
        if status != 0:
            nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise KernelCompileError(f"NVRTC {what} failed: {nvrtc.nvrtcGetErrorString(status).decode()}")

    check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None), "create")
    options = [f"--gpu-architecture={arch}", "--std=c++14"] + _define_flags(defines or {})
    option_array = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(program, len(options), option_array)
    log_size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(log_size))
    log = ctypes.create_string_buffer(log_size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    if status != 0:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
        raise KernelCompileError(f"{name} ({' '.join(options)}) failed to compile:\n{log.value.decode()}")
    ptx_size = ctypes.c_size_t()
    check(nvrtc.nvrtcGetPTXSize(program, ctypes.byref(ptx_size)), "PTX size")
    ptx = ctypes.create_string_buffer(ptx_size.value)
    check(nvrtc.nvrtcGetPTX(program, ptx), "PTX")
    if arch.startswith("sm_"):
        cubin_size = ctypes.c_size_t()
        check(nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(cubin_size)), "CUBIN size")
        if cubin_size.value == 0:
            raise KernelCompileError(f"{name} ({' '.join(options)}) gave no machine code for {arch}")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return ptx.value.decode()


# ---------------------------------------------------------------------------------------------
# The settings: whether ops run their kernels on NumPy arrays, and poisoned outputs for checks
# ---------------------------------------------------------------------------------------------
_CPU_KERNELS = contextvars.ContextVar("minisdit_cpu_kernels", default=False)


@contextlib.contextmanager
def cpu_kernels(enabled: bool = True):
    """Inside this block the ops (LIF, WKV, the DDPM loss) run on NumPy arrays as their ``.cu``
    kernels compiled as C++ instead of their NumPy references: the same results up to float
    rounding, about twice as fast for a whole SDiT training step on a CPU (the references loop
    over time in Python).  ``enabled=False`` selects the references inside an enabled block.

    A ``contextvars`` variable, so the setting ends with the block (nothing for tests to undo),
    and a process forked inside the block (the data-parallel workers) inherits it.
    """
    token = select_cpu_kernels(enabled)
    try:
        yield
    finally:
        _CPU_KERNELS.reset(token)


def select_cpu_kernels(enabled: bool = True) -> contextvars.Token:
    """``cpu_kernels(enabled)`` for the rest of the current ``contextvars`` context, for a command
    whose whole run is one context (minisdit/cli/common.py: own_runtime_settings); elsewhere use
    ``with cpu_kernels():``.  Returns the token that ``_CPU_KERNELS.reset`` would undo it with."""
    if enabled and cpu_compiler() is None:
        raise FileNotFoundError("CPU kernels need a C++ compiler (g++); install build-essential, "
                                "or run without them (--no-cpu-kernels)")
    return _CPU_KERNELS.set(bool(enabled))


def cpu_kernels_enabled() -> bool:
    """Whether ops run their compiled kernels on NumPy arrays here (inside ``cpu_kernels()``)."""
    return _CPU_KERNELS.get()


_POISON_OUTPUTS = contextvars.ContextVar("minisdit_poison_outputs", default=False)


@contextlib.contextmanager
def poisoned_outputs():
    """Inside this block ``Kernels.run`` fills every output array with NaN before the launch, so
    that a check sees an entry the kernel forgot to write (uninitialised memory could otherwise
    hold the right answer, left there by an earlier run)."""
    token = _POISON_OUTPUTS.set(True)
    try:
        yield
    finally:
        _POISON_OUTPUTS.reset(token)


def kernels_run_on(array) -> bool:
    """Whether an op runs its kernel on ``array``: always on a CuPy array, on a NumPy array only
    inside ``cpu_kernels()``; elsewhere the op runs its NumPy reference."""
    return backend.is_gpu_array(array) or cpu_kernels_enabled()


# ---------------------------------------------------------------------------------------------
# CPU: the same source compiled as C++ and run thread by thread
# ---------------------------------------------------------------------------------------------
def cpu_compiler() -> str | None:
    """The C++ compiler used for CPU kernels (``$CXX``, g++ or c++), or None."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


_KERNEL_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

_CTYPES = {
    "float": ctypes.c_float, "double": ctypes.c_double, "int": ctypes.c_int, "long long": ctypes.c_longlong,
    "unsigned int": ctypes.c_uint, "scalar_t": None,
}


class KernelConventionError(ValueError):
    """A kernel's arguments are not in the order inputs, outputs, sizes, scalar parameters."""


# The four groups of the argument convention, in order.
ARGUMENT_GROUPS = ("input", "output", "size", "scalar parameter")


def argument_group(ctype: str) -> str:
    """Which group of the convention a parameter of C type ``ctype`` belongs to."""
    if "*" in ctype:
        return "input" if "const" in ctype.split("*")[0] else "output"
    base = ctype.replace("const", "").strip()
    return "scalar parameter" if base in ("scalar_t", "float", "double") else "size"


def kernel_signatures(source: str) -> dict[str, list[tuple[str, str]]]:
    """{kernel name: [(parameter type, parameter name), ...]} for every extern "C" kernel.

    Raises ``KernelConventionError`` for a kernel whose arguments break the convention (module docstring)."""
    signatures = {}
    for name, parameters in _KERNEL_SIGNATURE.findall(source):
        parsed = []
        for parameter in " ".join(parameters.split()).split(","):
            match = re.match(r"(.*?)(\w+)\s*$", parameter.strip())
            parsed.append((match.group(1).strip(), match.group(2)))
        ranks = [ARGUMENT_GROUPS.index(argument_group(ctype)) for ctype, _ in parsed]
        if ranks != sorted(ranks):
            order = ", ".join(f"{pname} ({argument_group(ctype)})" for ctype, pname in parsed)
            raise KernelConventionError(f"kernel {name} takes {order}; reorder its arguments as inputs, outputs, "
                                        "sizes, scalar parameters (minisdit/kernels/runtime.py)")
        signatures[name] = parsed
    return signatures


class CpuKernel:
    """A kernel compiled for the CPU, called like a CuPy kernel: ``kernel(grid, block, args)``."""

    def __init__(self, function, parameters, scalar_type):
        self.function, self.parameters, self.scalar_type = function, parameters, scalar_type

    def __call__(self, grid, block, args):
        if len(args) != len(self.parameters):
            raise TypeError(f"kernel takes {len(self.parameters)} arguments, got {len(args)}")
        converted = [ctypes.c_uint(int(grid[0])), ctypes.c_uint(int(block[0]))]
        # the arrays stay alive during the call because ``args`` holds them
        for (ctype_name, name), value in zip(self.parameters, args):
            if "*" in ctype_name:
                if not (isinstance(value, np.ndarray) and value.flags.c_contiguous):
                    raise TypeError(f"argument {name} must be a C-contiguous numpy array")
                converted.append(ctypes.c_void_p(value.ctypes.data))
            else:
                base = ctype_name.replace("const", "").strip()
                if base == "scalar_t":
                    base = self.scalar_type
                converted.append(_CTYPES[base](value))
        self.function(*converted)


def cpu_companion_header(file_name: str) -> str:
    """The text of ``kernels/<stem>_cpu.h`` (the CPU-only loops a ``.cu`` file includes for the
    C++ build, docs/DESIGN.md §7), or "" when the file has none."""
    path = kernel_directory() / f"{Path(file_name).stem}_cpu.h"
    return path.read_text() if path.exists() else ""


_SERIAL_FUNCTION = re.compile(r"\bcpu_serial_(\w+)\s*\(")


def cpu_serial_kernels(file_name: str) -> set[str]:
    """The kernels of ``file_name`` that have a ``cpu_serial_<name>`` in its companion header: the
    same recurrences with the loop over threads innermost, which the compiler vectorises."""
    return set(_SERIAL_FUNCTION.findall(cpu_companion_header(file_name))) & set(_signatures_of(file_name))


def cpu_launcher_source(file_name: str, vectorized: bool = True) -> str:
    """The C++ that runs ``kernels/file_name`` on the CPU: per kernel, a ``cpu_launch_<name>`` that
    loops over the blocks and threads of the grid and calls the kernel with the built-ins set.

    For the fast launch (``CPU_LAUNCH``: one block of one thread, which visits every thread in the
    kernel's grid-stride loop) a kernel with a ``cpu_serial_<name>`` (``cpu_serial_kernels``) calls
    that instead: the same result, computed with the loop over threads innermost and vectorised.
    ``vectorized=False``: every launch runs the kernel thread by thread (the "scalar" build)."""
    signatures = _signatures_of(file_name)
    serial = cpu_serial_kernels(file_name) if vectorized else set()
    lines = ['#include "cuda_cpu_shim.h"', f'#include "{file_name}"', ""]
    for name, parameters in signatures.items():
        declared = ", ".join(f"{ctype} {pname}" for ctype, pname in parameters)
        passed = ", ".join(pname for _, pname in parameters)
        lines += [
            f'extern "C" void cpu_launch_{name}(unsigned int grid, unsigned int block, {declared}) {{',
        ]
        if name in serial:
            lines += [f"    if (grid == 1 && block == 1) {{ cpu_serial_{name}({passed}); return; }}"]
        lines += [
            "    gridDim.x = grid; blockDim.x = block;",
            "    for (unsigned int b = 0; b < grid; ++b) {",
            "        blockIdx.x = b;",
            "        for (unsigned int t = 0; t < block; ++t) {",
            f"            threadIdx.x = t; {name}({passed});",
            "        }",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _cache_directory() -> Path:
    root = Path(os.environ.get("MINISDIT_KERNEL_CACHE", Path(tempfile.gettempdir()) / "minisdit-kernels"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# How the kernels are built for the CPU (docs/DESIGN.md §7).  Each build's compile options are
# part of the cache key with the compiler, the sources and (for -march=native) the host CPU, so that
# changing any of them rebuilds the library.
#   "vector" (the default): -O3 for this CPU's vector unit (-march=native: AVX2 and FMA where the
#       CPU has them), `#pragma omp simd` honoured without OpenMP's run-time (-fopenmp-simd),
#       libmvec's vector exp/log, and the fast launch running the *_cpu.h loops (threads innermost).
#       -fno-math-errno: exp and log need not set errno (nothing reads it), without which GCC keeps
#       every loop that calls them scalar; -fno-trapping-math: no floating-point traps are enabled,
#       so GCC may compute both sides of a `?:` (a division included) and blend them, without which
#       the LIF loops stay scalar ("control flow in loop").  Neither changes a result: IEEE
#       rounding, inf and NaN are kept (-ffast-math's -ffinite-math-only and reassociation are not used).
#   "scalar": what minisdit did before: -O2, every launch thread by thread; also what the files
#       without a *_cpu.h get in the "vector" build (_cpu_library says why).  Kept for
#       benchmarks/cpu_simd_benchmark.py (the side-by-side measurement) and the agreement tests.
# Never -ffast-math: it breaks the isfinite/inf handling the WKV and the loss checks rely on.
# FMA contraction is allowed (the GPU contracts too), and each build is deterministic on a machine.
CPU_BUILDS = {
    "vector": ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c++14", "-shared", "-fPIC"],
    "scalar": ["-O2", "-std=c++14", "-shared", "-fPIC"],
}

_CPU_BUILD = contextvars.ContextVar("minisdit_cpu_build", default="vector")


@contextlib.contextmanager
def cpu_build(name: str):
    """Inside this block the ops run the CPU kernels of build ``name`` ("vector" or "scalar",
    ``CPU_BUILDS``), for side-by-side measurements and agreement tests."""
    if name not in CPU_BUILDS:
        raise ValueError(f"unknown CPU kernel build {name!r}; choose one of {', '.join(CPU_BUILDS)}")
    token = _CPU_BUILD.set(name)
    try:
        yield
    finally:
        _CPU_BUILD.reset(token)


@functools.lru_cache(maxsize=None)
def vector_math_options(compiler: str) -> tuple[list[str], list[str]]:
    """(compile options, link options) for libmvec's vector exp/log: (["-DMINISDIT_VECTOR_MATH"],
    ["-lmvec"]) where ``compiler`` finds libmvec (glibc on x86-64), else ([], []): the loops then
    still vectorise except around exp and log."""
    found = subprocess.run([compiler, "-print-file-name=libmvec.so"], capture_output=True, text=True).stdout.strip()
    if os.path.isabs(found) and os.path.exists(found):
        return ["-DMINISDIT_VECTOR_MATH"], ["-lmvec"]
    return [], []


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """The CPU model and its instruction-set flags, part of the cache key of a -march=native build
    (a cache folder shared between machines must not hand one CPU's build to another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform
        return platform.machine() + platform.processor()
    wanted = [line for line in text.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(wanted)))


@functools.lru_cache(maxsize=None)
def _cpu_library(file_name: str, frozen_defines: tuple, build: str = "vector"):
    compiler = cpu_compiler()
    if compiler is None:
        raise FileNotFoundError("running kernels on the CPU needs a C++ compiler (g++); install build-essential")
    directory = kernel_directory()
    source = kernel_source(file_name)
    signatures = kernel_signatures(source)
    # Only a file with CPU-only loops (a companion *_cpu.h) gets the vector build: the others (the
    # DDPM loss, AdamW, LayerNorm, token shift) are elementwise or reductions that are a small share
    # of a step, and their checks require the CPU build to equal the NumPy reference bitwise,
    # which -march=native's FMA contraction would break.
    vectorized = build == "vector" and bool(cpu_serial_kernels(file_name))
    launcher = cpu_launcher_source(file_name, vectorized=vectorized)
    flags = _define_flags(dict(frozen_defines))
    math_compile, math_link = vector_math_options(compiler) if vectorized else ([], [])
    options = CPU_BUILDS["vector" if vectorized else "scalar"] + math_compile + flags
    machine = host_cpu() if "-march=native" in options else ""
    headers = (directory / "cuda_cpu_shim.h").read_text() + cpu_companion_header(file_name)
    key = hashlib.sha256((compiler + source + launcher + " ".join(options + math_link) + headers + machine).encode()).hexdigest()[:16]
    cache = _cache_directory()
    library_path = cache / f"{Path(file_name).stem}-{key}.so"
    if not library_path.exists():
        # Several processes (test workers) may compile the same variant at once: each writes and
        # compiles its own pid-named files and renames them into place, so nobody reads a half-written
        # file.  The launcher keeps its .cpp suffix, which is how the compiler knows it is C++.
        stem = f"{Path(file_name).stem}-{key}"
        launcher_path = cache / f"{stem}.cpp"
        launcher_temporary = cache / f"{stem}.{os.getpid()}.cpp"
        launcher_temporary.write_text(launcher)
        temporary = library_path.with_suffix(f".{os.getpid()}.tmp")
        command = [compiler, *options, "-I", str(directory),
                   "-o", str(temporary), str(launcher_temporary), *math_link]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelCompileError(f"{file_name} failed to compile as C++ for the CPU:\n{result.stderr}")
        os.replace(launcher_temporary, launcher_path)  # kept next to the .so for reading
        os.replace(temporary, library_path)
    library = ctypes.CDLL(str(library_path))
    scalar_type = dict(frozen_defines).get("scalar_t", "float")
    kernels = {}
    for name, parameters in signatures.items():
        function = getattr(library, f"cpu_launch_{name}")
        function.restype = None
        kernels[name] = CpuKernel(function, parameters, scalar_type)
    return kernels


def cpu_library(file_name: str, defines: dict | None = None, build: str | None = None) -> dict[str, CpuKernel]:
    """Every kernel of ``kernels/file_name`` compiled for the CPU, for this variant (cached), in
    build ``build`` (``CPU_BUILDS``; default: the one ``cpu_build`` selects, "vector" outside it)."""
    return _cpu_library(file_name, _freeze(defines), build or _CPU_BUILD.get())


# ---------------------------------------------------------------------------------------------
# Kernels: one object per kernel file and variant, the same call on either device
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _signatures_of(file_name: str) -> dict:
    return kernel_signatures(kernel_source(file_name))


# The NumPy type a by-value argument is passed as to CuPy (the CPU path converts with ctypes).
_VALUE_TYPES = {"int": np.int32, "long long": np.int64, "unsigned int": np.uint32, "float": np.float32,
                "double": np.float64}


class Kernels:
    """The kernels of ``minisdit/kernels/<file_name>`` for one variant (``defines``).

    ``run(name, threads, *arguments)`` launches kernel ``name`` over ``threads`` independent
    recurrences on the device of the array arguments: CuPy arrays run the CuPy build, NumPy arrays
    the C++ build (both compiled once per variant and cached).  Arguments in the kernel's order
    (inputs, outputs, sizes, scalar parameters); arrays C-contiguous and of the ``scalar_t`` dtype.
    ``block=None`` is the fast launch (``gpu_block`` threads per block on a GPU, one thread on the
    CPU); an explicit ``block`` (and ``max_blocks``) as in ``launch``, so that a CPU run exercises
    the multi-block indexing and the grid-stride loop.
    """

    def __init__(self, file_name: str, defines: dict | None = None, *, gpu_block: int = 256):
        self.file_name, self.defines, self.gpu_block = file_name, dict(defines or {}), gpu_block
        self.dtype = np.dtype({"float": np.float32, "double": np.float64}[self.defines.get("scalar_t", "float")])
        self.signatures = _signatures_of(file_name)

    def __repr__(self):
        return f"Kernels({self.file_name!r}, {self.defines})"

    def run(self, name: str, threads: int, *arguments, block: int | None = None, max_blocks: int | None = None):
        parameters = self.signatures.get(name)
        if parameters is None:
            raise KeyError(f"{self.file_name} has no kernel {name!r}; it has {', '.join(self.signatures)}")
        if len(arguments) != len(parameters):
            names = ", ".join(pname for _, pname in parameters)
            raise TypeError(f"kernel {name} takes {len(parameters)} arguments ({names}), got {len(arguments)}")
        arrays = [value for (ctype, _), value in zip(parameters, arguments) if "*" in ctype]
        on_gpu = {backend.is_gpu_array(array) for array in arrays}
        if len(on_gpu) > 1:
            raise ValueError(f"kernel {name} got arrays on both devices; move them to one with backend.to_device")
        for (ctype, pname), value in zip(parameters, arguments):
            if "*" in ctype and (value.dtype != self.dtype or not value.flags.c_contiguous):
                raise TypeError(f"argument {pname} of kernel {name} must be a C-contiguous {self.dtype} array, got "
                                f"{value.dtype}; pass xp.ascontiguousarray(a, dtype=np.{self.dtype})")
        if _POISON_OUTPUTS.get():
            for (ctype, _), value in zip(parameters, arguments):
                if argument_group(ctype) == "output":
                    value.fill(np.nan)
        if True in on_gpu:
            kernel = gpu_function(self.file_name, name, self.defines)
            arguments = [value if "*" in ctype else self._value(ctype, value) for (ctype, _), value in zip(parameters, arguments)]
        else:
            kernel = cpu_library(self.file_name, self.defines)[name]
        launch(kernel, threads, tuple(arguments), block=block, max_blocks=max_blocks, gpu_block=self.gpu_block)

    def _value(self, ctype: str, value):
        base = ctype.replace("const", "").strip()
        return self.dtype.type(value) if base == "scalar_t" else _VALUE_TYPES[base](value)
