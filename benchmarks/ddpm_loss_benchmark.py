"""Time q_sample and the ε-MSE forward + backward of the DDPM loss (minisdit.kernel_checks.ddpm_loss.benchmark).

    python benchmarks/ddpm_loss_benchmark.py [--batch 256] [--gpu-batch 4096] [--image 1 28 28]

On the CPU: the NumPy references and minisdit/kernels/ddpm_loss.cu compiled as C++; on the GPU (when
CuPy sees one): ddpm_loss.cu with CuPy.  Elementwise and memory bound: the bandwidth achieved on the
bytes that must move (q_sample reads x_0, ε and writes x_t; the MSE reads ε̂, ε and writes (ε̂ − ε)²;
its backward reads ε̂, ε and writes dL/dε̂), also as a fraction of the device's peak.  Asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernel_checks import ddpm_loss  # noqa: E402
from minisdit.kernel_checks.common import gpu_peak_bandwidth, print_table  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images for the CPU timings")
    parser.add_argument("--gpu-batch", type=int, default=4096, help="images for the GPU timings")
    parser.add_argument("--image", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=20, help="the best of this many runs is reported")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: from the device)")
    args = parser.parse_args(argv)
    dtype, image = np.dtype(args.dtype), tuple(args.image)
    rows = ddpm_loss.benchmark("cpu", dtype, args.batch, image, repeats=args.repeats)
    if not backend.gpu_available():
        print_table(rows)
        print("\nGPU: skipped (needs CuPy and a CUDA GPU)")
        return
    peak, source = gpu_peak_bandwidth(args.peak_gbps)
    print_table(rows + ddpm_loss.benchmark("gpu", dtype, args.gpu_batch, image, repeats=args.repeats), peak)
    print(f"\npeak bandwidth {peak:.0f} GB/s ({source})")


if __name__ == "__main__":
    main()
