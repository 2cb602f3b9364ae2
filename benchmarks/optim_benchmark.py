"""Time one AdamW step and one EMA update of a flat parameter buffer (minisdit.kernel_checks.optim.benchmark).

    python benchmarks/optim_benchmark.py [--params 3248903] [--gpu-params 30000000]

On the CPU: the NumPy references and minisdit/kernels/optim.cu compiled as C++; on the GPU (when CuPy
sees one): the references as CuPy's elementwise launches and optim.cu with CuPy.  Memory bound: the
bandwidth achieved on the bytes that must move (AdamW reads g, θ, m, v and writes θ, m, v; EMA reads
θ̄, θ and writes θ̄), also as a fraction of the device's peak.  Asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernel_checks import optim  # noqa: E402
from minisdit.kernel_checks.common import gpu_peak_bandwidth, print_table  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=3_248_903, help="flat buffer size for the CPU timings (the small preset)")
    parser.add_argument("--gpu-params", type=int, default=30_000_000, help="flat buffer size for the GPU timings")
    parser.add_argument("--repeats", type=int, default=10, help="the best of this many runs is reported")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: from the device)")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rows = optim.benchmark("cpu", dtype, args.params, repeats=args.repeats)
    if not backend.gpu_available():
        print_table(rows)
        print("\nGPU: skipped (needs CuPy and a CUDA GPU)")
        return
    peak, source = gpu_peak_bandwidth(args.peak_gbps)
    print_table(rows + optim.benchmark("gpu", dtype, args.gpu_params, repeats=args.repeats), peak)
    print(f"\npeak bandwidth {peak:.0f} GB/s ({source})")


if __name__ == "__main__":
    main()
