"""Time the WKV operator, forward + backward (minisdit.kernel_checks.wkv.benchmark).

    python benchmarks/wkv_benchmark.py [--batch 32 --length 394 --channels 384] [--numpy-batch 8]

The default size is the paper's MNIST model: D = 384 channels, 2M = 2 (L + 1) = 394 tokens (image
tokens, condition token and the Reconstruction Tokens), batch 32.  On the CPU: the NumPy reference and
minisdit/kernels/wkv.cu compiled as C++; on the GPU (when CuPy sees one): wkv.cu with CuPy.  The
recurrences are memory bound, so the figure of merit is the bandwidth achieved: 11 values moved per
element of (B, L, C) (forward reads k, v, writes y, ln D; backward reads k, v, y, ln D, dL/dy and writes
dL/dk, dL/dv), also as a fraction of the device's peak.  Prints numbers only; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernel_checks import wkv  # noqa: E402
from minisdit.kernel_checks.common import gpu_peak_bandwidth, print_table  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=394)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--numpy-batch", type=int, default=None, help="smaller batch for the CPU (default: --batch)")
    parser.add_argument("--repeats", type=int, default=20, help="GPU repeats (the CPU uses 3); the best is reported")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: from the device)")
    args = parser.parse_args(argv)
    sizes = dict(length=args.length, channels=args.channels)
    rows = []
    for dtype in (np.float32, np.float64):
        rows += wkv.benchmark("cpu", dtype, args.numpy_batch or args.batch, repeats=3, **sizes)
    if not backend.gpu_available():
        print_table(rows)
        print("\nGPU: skipped (needs CuPy and a CUDA GPU)")
        return
    peak, source = gpu_peak_bandwidth(args.peak_gbps)
    for dtype in (np.float32, np.float64):
        rows += wkv.benchmark("gpu", dtype, args.batch, repeats=args.repeats, **sizes)
    print_table(rows, peak)
    print(f"\npeak bandwidth {peak:.0f} GB/s ({source})")


if __name__ == "__main__":
    main()
