"""What the GPU step needs, and whether it is there: the first stage of scripts/gpu_check.sh.

    python scripts/gpu_environment.py [--cpu]

Prints the versions of NumPy, CuPy, the CUDA runtime and driver, NVRTC and cuBLAS and the device,
then ``backend.gpu_unavailable_reason()`` (a probe kernel compiled by NVRTC and launched, and a cuBLAS
GEMM).  Exit 0 when the GPU can take a training step, else 1 with one line naming what is missing.
``--cpu`` (the dry run): the same report for the CPU route instead -- a kernel file compiled as C++
and run on NumPy arrays, and NVRTC (the ``nvidia-cuda-nvrtc-cu12`` wheel) compiling it for the GPU.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernels import runtime  # noqa: E402


def version(read) -> str:
    """``read()``, or why it could not be read (a version is information: it never fails the stage)."""
    try:
        return str(read())
    except Exception as error:
        return f"unknown ({backend.one_line(error)})"


def gpu_report() -> int:
    reason = backend.gpu_unavailable_reason()
    if reason is not None:
        print(f"error: {reason}")
        return 1
    cupy = backend.get_array_module("gpu")
    runtime_api = cupy.cuda.runtime

    def cuda_version(number: int) -> str:
        return f"{number // 1000}.{number % 1000 // 10}"

    properties = runtime_api.getDeviceProperties(cupy.cuda.Device().id)
    name = properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"])
    free, total = runtime_api.memGetInfo()
    print(f"device   {name}, compute capability {properties['major']}.{properties['minor']}, "
          f"{total / 2**30:.0f} GiB ({free / 2**30:.0f} GiB free), {runtime_api.getDeviceCount()} device(s)")
    print(f"CuPy     {cupy.__version__}, CUDA runtime {version(lambda: cuda_version(runtime_api.runtimeGetVersion()))}, "
          f"driver supports CUDA {version(lambda: cuda_version(runtime_api.driverGetVersion()))}")
    print(f"NVRTC    {version(lambda: '.'.join(map(str, cupy.cuda.nvrtc.getVersion())))}")
    print(f"cuBLAS   {version(lambda: cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle()))}")
    print("probe    a RawKernel compiled and launched, a float32 GEMM: both correct")
    return 0


def cpu_report() -> int:
    from minisdit.snn.lif import KERNEL_FILE, LIFKernels, LIFOptions

    options = LIFOptions()  # SDiT's neuron

    x = np.random.default_rng(0).normal(0.8, 1.0, (4, 64)).astype(np.float32)
    spikes, _ = LIFKernels(options, np.float32).forward(x)  # lif.cu compiled as C++, on NumPy arrays
    print(f"CPU      {KERNEL_FILE} compiled as C++ and run: {int(spikes.sum())} spikes from 4 x 64 inputs")
    if runtime.nvrtc_available():
        ptx = runtime.nvrtc_compile(runtime.kernel_source(KERNEL_FILE), options.kernel_defines(np.float32),
                                     name=KERNEL_FILE)
        print(f"NVRTC    {KERNEL_FILE} compiled for compute_80: {len(ptx)} characters of PTX")
    else:
        print("NVRTC    not found (pip install nvidia-cuda-nvrtc-cu12, part of the dev extra): compile check skipped")
    print(f"GPU      {backend.gpu_unavailable_reason() or 'usable'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run: report the CPU route instead")
    args = parser.parse_args(argv)
    print(f"Python   {platform.python_version()}, NumPy {np.__version__}")
    return cpu_report() if args.cpu else gpu_report()


if __name__ == "__main__":
    sys.exit(main())
