"""Timings of the LIF neuron and the spike rate, forward + backward (minisdit.kernel_checks.lif.benchmark).

On the CPU: the NumPy reference and minisdit/kernels/lif.cu compiled as C++; on the GPU (when CuPy sees
a CUDA device): lif.cu with CuPy.  T = 4 and 32, with the bandwidth achieved on the bytes that must move
(LIF: 3 T N elements each way; rate: 2 N forward, 3 N backward).  The fraction of peak uses --peak-gbps
when given, else the device's memory clock and bus width (4800 GB/s for an H200).
Prints a table; asserts nothing.

    python benchmarks/lif_benchmark.py [--cpu-neurons 262144] [--gpu-neurons 1048576] [--repeats 20] [--peak-gbps 4800]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernel_checks import lif  # noqa: E402
from minisdit.kernel_checks.common import gpu_peak_bandwidth, print_table  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-neurons", type=int, default=2**18, help="N for the CPU timings")
    parser.add_argument("--gpu-neurons", type=int, default=2**20, help="N for the GPU timings")
    parser.add_argument("--repeats", type=int, default=20, help="GPU repeats (the CPU uses a fifth); the best is reported")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: from the device)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rows = lif.benchmark("cpu", dtype, args.cpu_neurons, repeats=max(1, args.repeats // 5))
    if not backend.gpu_available():
        print_table(rows)
        print("\nGPU: skipped (CuPy with a CUDA device is not available here)")
        return
    peak, source = gpu_peak_bandwidth(args.peak_gbps)
    print_table(rows + lif.benchmark("gpu", dtype, args.gpu_neurons, repeats=args.repeats), peak)
    print(f"\npeak bandwidth {peak:.0f} GB/s ({source})")


if __name__ == "__main__":
    main()
