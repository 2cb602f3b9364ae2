"""Time the WKV operator, forward + backward, on NumPy and (when CuPy sees a GPU) on the kernels.

    python benchmarks/wkv_benchmark.py [--batch 32 --length 394 --channels 384]

The default size is the paper's MNIST model: D = 384 channels, 2M = 2 (L + 1) = 394 tokens
(image tokens, condition token and the Reconstruction Tokens), batch 32.

On the GPU the recurrences are memory bound, so the figure of merit is the bandwidth achieved:
the bytes the kernels must move divided by their time, and that as a fraction of the device's
peak.  Per element of (B, L, C) the forward reads k, v and writes y, ln D (4 values); the backward
reads k, v, y, ln D, dL/dy and writes dL/dk, dL/dv (7 values): 11 values in all (the (C,) and
(B, C) vectors are negligible).  Prints numbers only; asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from minisdit import backend
from minisdit.kernels import runtime as cuda
from minisdit.rwkv.wkv_operator import (kernel_defines, wkv_backward_kernel, wkv_backward_numpy, wkv_forward_kernel,
                           wkv_forward_numpy)

VALUES_MOVED_PER_ELEMENT = 4 + 7


def make_inputs(xp, batch, length, channels, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(-5.0, 3.0, channels))
    u = rng.normal(np.log(0.3), 0.5, channels)
    k = rng.normal(0.0, 3.0, (batch, length, channels))
    v = rng.standard_normal((batch, length, channels))
    grad_y = rng.standard_normal((batch, length, channels))
    return [xp.asarray(a, dtype=dtype) for a in (w, u, k, v, grad_y)]


def time_numpy(batch, length, channels, dtype, repeats):
    w, u, k, v, grad_y = make_inputs(np, batch, length, channels, dtype)
    forward_times, backward_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        y, log_denominator = wkv_forward_numpy(w, u, k, v)
        middle = time.perf_counter()
        wkv_backward_numpy(w, u, k, v, y, log_denominator, grad_y)
        forward_times.append(middle - start)
        backward_times.append(time.perf_counter() - middle)
    return min(forward_times), min(backward_times)


def peak_bandwidth(cupy) -> float:
    """Bytes per second: 2 transfers per clock (DDR/HBM) x memory clock x bus width."""
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return 2.0 * properties["memoryClockRate"] * 1e3 * properties["memoryBusWidth"] / 8


def time_gpu(cupy, batch, length, channels, dtype, repeats):
    w, u, k, v, grad_y = make_inputs(cupy, batch, length, channels, dtype)
    kernels = {name: cuda.gpu_function("wkv.cu", name, kernel_defines(dtype)) for name in ("wkv_forward", "wkv_backward")}
    # warm up: compiles the kernels and fills CuPy's memory pool
    forward = wkv_forward_kernel(kernels, w, u, k, v)
    wkv_backward_kernel(kernels, w, u, k, v, *forward, grad_y)
    start, middle, stop = cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.Event()
    forward_times, backward_times = [], []
    for _ in range(repeats):
        start.record()
        forward = wkv_forward_kernel(kernels, w, u, k, v)
        middle.record()
        wkv_backward_kernel(kernels, w, u, k, v, *forward, grad_y)
        stop.record()
        stop.synchronize()
        forward_times.append(cupy.cuda.get_elapsed_time(start, middle) / 1e3)
        backward_times.append(cupy.cuda.get_elapsed_time(middle, stop) / 1e3)
    return min(forward_times), min(backward_times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=394)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--numpy-batch", type=int, default=None, help="smaller batch for NumPy (default: --batch)")
    parser.add_argument("--repeats", type=int, default=20, help="GPU repeats (NumPy uses 3); the best is reported")
    args = parser.parse_args()

    numpy_batch = args.numpy_batch or args.batch
    for dtype in (np.float32, np.float64):
        forward, backward = time_numpy(numpy_batch, args.length, args.channels, dtype, repeats=3)
        print(f"numpy {np.dtype(dtype).name}  B={numpy_batch} L={args.length} C={args.channels}: "
              f"forward {forward * 1e3:.1f} ms, backward {backward * 1e3:.1f} ms")

    if not backend.gpu_available():
        print("gpu: skipped (needs CuPy and a CUDA GPU)")
        return
    cupy = backend.get_array_module("gpu")
    peak = peak_bandwidth(cupy)
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    print(f"gpu: {name}, peak memory bandwidth {peak / 1e9:.0f} GB/s (from clock x bus width)")
    elements = args.batch * args.length * args.channels
    for dtype in (np.float32, np.float64):
        forward, backward = time_gpu(cupy, args.batch, args.length, args.channels, dtype, args.repeats)
        total = forward + backward
        moved = VALUES_MOVED_PER_ELEMENT * elements * np.dtype(dtype).itemsize
        bandwidth = moved / total
        print(f"gpu {np.dtype(dtype).name}  B={args.batch} L={args.length} C={args.channels}: "
              f"forward {forward * 1e3:.3f} ms, backward {backward * 1e3:.3f} ms, "
              f"{moved / 1e6:.1f} MB moved, {bandwidth / 1e9:.0f} GB/s = {bandwidth / peak:.1%} of peak")


if __name__ == "__main__":
    main()
