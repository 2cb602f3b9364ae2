"""Timings of the LIF neuron and the spike rate, forward + backward.

NumPy (the array reference) always; minisdit/kernels/lif.cu on the GPU when CuPy and a CUDA device work,
for N = 2^20 neurons and T = 4 and 32, with the bandwidth achieved on the bytes that must move:

    LIF forward   reads x, writes spikes and h      3 T N elements
    LIF backward  reads h and dL/ds, writes dL/dx   3 T N elements
    rate forward  reads x, writes the rate          2 N elements
    rate backward reads x and dL/drate, writes dL/dx  3 N elements

The fraction of peak uses --peak-gbps when given, else the device's memory clock and bus width
(4800 GB/s, the H200's HBM3e, when those are unavailable or the device is an H200).
Prints a table; asserts nothing.

    python benchmarks/lif_benchmark.py [--cpu-neurons 262144] [--repeats 20] [--peak-gbps 4800]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.snn.lif import (LIFKernels, LIFOptions, lif_backward_reference, lif_forward_reference,  # noqa: E402
                              spike_rate_backward_reference, spike_rate_forward_reference)

H200_PEAK_GBPS = 4800.0


def lif_bytes(T, N, itemsize):
    return 3 * T * N * itemsize, 3 * T * N * itemsize


def rate_bytes(T, N, itemsize):
    return 2 * N * itemsize, 3 * N * itemsize


def time_cpu(function, repeats):
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def time_gpu(cupy, function, repeats):
    for _ in range(3):
        function()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        function()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats


def peak_bandwidth(cupy, flag):
    if flag is not None:
        return flag, "--peak-gbps"
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"])
    if "H200" in name:
        return H200_PEAK_GBPS, f"{name}: H200 HBM3e"
    clock_khz, bus_bits = properties.get("memoryClockRate", 0), properties.get("memoryBusWidth", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, f"{name}: 2 x memory clock x bus width"
    return H200_PEAK_GBPS, f"{name}: no memory attributes, assuming H200"


def row(device, op, T, N, dtype, seconds, moved, peak=None):
    gbps = moved / seconds / 1e9
    fraction = f"{100 * gbps / peak:6.1f}%" if peak else "      -"
    return f"{device:4} {op:22} {T:3d} {N:9d} {dtype:8} {seconds * 1e3:10.3f} {moved / 1e6:9.1f} {gbps:9.1f} {fraction}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-neurons", type=int, default=2**18, help="N for the NumPy timings")
    parser.add_argument("--gpu-neurons", type=int, default=2**20, help="N for the GPU timings")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: from the device)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    options = LIFOptions()  # SDiT's neuron: tau 2, threshold 1, hard reset to 0, ATan(2)
    rng = np.random.default_rng(0)

    header = f"{'dev':4} {'op (fwd+bwd)':22} {'T':>3} {'N':>9} {'dtype':8} {'ms':>10} {'MB moved':>9} {'GB/s':>9} {'% peak':>7}"
    print(header)
    print("-" * len(header))

    N = args.cpu_neurons
    cpu_repeats = max(1, args.repeats // 5)
    for T in (4, 32):
        x = rng.normal(0.8, 1.0, (T, N)).astype(dtype)
        grad = rng.normal(size=(T, N)).astype(dtype)
        seconds = time_cpu(lambda: lif_backward_reference(lif_forward_reference(x, options)[1], grad, options),
                           cpu_repeats)
        print(row("cpu", "lif", T, N, dtype.name, seconds, sum(lif_bytes(T, N, dtype.itemsize))))
    for T in (4, 32):
        x = rng.normal(0.8, 1.0, N).astype(dtype)
        grad = rng.normal(size=N).astype(dtype)

        def rate_step():
            spike_rate_forward_reference(x, T, options)
            spike_rate_backward_reference(x, grad, T, options)

        print(row("cpu", "spike_rate", T, N, dtype.name, time_cpu(rate_step, cpu_repeats),
                  sum(rate_bytes(T, N, dtype.itemsize))))

    if not backend.gpu_available():
        print("\nGPU: skipped (CuPy with a CUDA device is not available here)")
        return
    cupy = backend.get_array_module("gpu")
    peak, source = peak_bandwidth(cupy, args.peak_gbps)
    kernels = LIFKernels(options, dtype)
    N = args.gpu_neurons
    for T in (4, 32):
        x = cupy.asarray(rng.normal(0.8, 1.0, (T, N)).astype(dtype))
        grad = cupy.asarray(rng.normal(size=(T, N)).astype(dtype))
        forward_bytes, backward_bytes = lif_bytes(T, N, dtype.itemsize)
        _, h = kernels.forward(x)
        forward = time_gpu(cupy, lambda: kernels.forward(x), args.repeats)
        backward = time_gpu(cupy, lambda: kernels.backward(h, grad), args.repeats)
        print(row("gpu", "lif forward", T, N, dtype.name, forward, forward_bytes, peak))
        print(row("gpu", "lif backward", T, N, dtype.name, backward, backward_bytes, peak))
        print(row("gpu", "lif fwd+bwd", T, N, dtype.name, forward + backward, forward_bytes + backward_bytes, peak))
    for T in (4, 32):
        x = cupy.asarray(rng.normal(0.8, 1.0, N).astype(dtype))
        grad = cupy.asarray(rng.normal(size=N).astype(dtype))
        forward_bytes, backward_bytes = rate_bytes(T, N, dtype.itemsize)
        forward = time_gpu(cupy, lambda: kernels.spike_rate_forward(x, T), args.repeats)
        backward = time_gpu(cupy, lambda: kernels.spike_rate_backward(x, grad, T), args.repeats)
        print(row("gpu", "spike_rate forward", T, N, dtype.name, forward, forward_bytes, peak))
        print(row("gpu", "spike_rate backward", T, N, dtype.name, backward, backward_bytes, peak))
        print(row("gpu", "spike_rate fwd+bwd", T, N, dtype.name, forward + backward, forward_bytes + backward_bytes, peak))
    print(f"\npeak bandwidth {peak:.0f} GB/s ({source})")


if __name__ == "__main__":
    main()
