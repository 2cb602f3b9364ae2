"""Time the fused LayerNorm and token-shift kernels, forward + backward (minisdit.kernel_checks.layernorm
and .token_shift benchmark).

    python benchmarks/fused_elementwise_benchmark.py [--shape 256 65 384] [--repeats 10]

On the CPU: the NumPy references and minisdit/kernels/layernorm.cu, token_shift.cu compiled as C++; on the
GPU (when CuPy sees one): the same files with CuPy.  Memory bound: the bandwidth achieved on the bytes that
must move (each benchmark's docstring), also as a fraction of the device's peak.  Asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernel_checks import layernorm, token_shift  # noqa: E402
from minisdit.kernel_checks.common import gpu_peak_bandwidth, print_table  # noqa: E402


def rows_on(device: str, shape, dtype, repeats: int) -> list[dict]:
    return (layernorm.benchmark(device, dtype, shape, repeats=repeats)
            + token_shift.benchmark(device, dtype, shape, 3, repeats=repeats))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 65, 384], metavar=("N", "L", "D"),
                        help="tokens for the CPU timings")
    parser.add_argument("--gpu-shape", type=int, nargs=3, default=[256, 65, 384], metavar=("N", "L", "D"))
    parser.add_argument("--repeats", type=int, default=10, help="the best of this many runs is reported")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: from the device)")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rows = rows_on("cpu", tuple(args.shape), dtype, args.repeats)
    if not backend.gpu_available():
        print_table(rows)
        print("\nGPU: skipped (needs CuPy and a CUDA GPU)")
        return
    peak, source = gpu_peak_bandwidth(args.peak_gbps)
    print_table(rows + rows_on("gpu", tuple(args.gpu_shape), dtype, args.repeats), peak)
    print(f"\npeak bandwidth {peak:.0f} GB/s ({source})")


if __name__ == "__main__":
    main()
