"""What the per-kernel checks share: the error measure, moving inputs to a device, and timing."""
from __future__ import annotations

import functools
import time

import numpy as np

from ..autograd import backend
from ..kernels import runtime

# assert_allclose's (rtol, atol) that float rounding allows between a kernel and its reference
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-13)}


def outputs_poisoned(check):
    """Run a ``check`` inside ``runtime.poisoned_outputs()``: an output entry that a kernel does not
    write stays NaN, an infinite error, whatever the memory held before."""
    @functools.wraps(check)
    def poisoned(*args, **kwargs):
        with runtime.poisoned_outputs():
            return check(*args, **kwargs)
    return poisoned


def worst_error(pairs, rtol: float, atol: float, *, relative_floor: bool = False) -> float:
    """max |actual - expected| / (atol + rtol |expected|) over every (actual, expected) pair.

    <= 1 is exactly ``np.testing.assert_allclose(actual, expected, rtol, atol)`` for every pair.
    ``relative_floor`` makes atol relative to each expected array's largest entry (for outputs
    whose entries cancel towards 0).  A NaN, a shape or a dtype mismatch counts as infinite.
    """
    worst = 0.0
    for actual, expected in pairs:
        actual = backend.to_numpy(actual)
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            return float("inf")
        floor = atol * np.abs(expected).max() if relative_floor and expected.size else atol
        difference = np.abs(actual.astype(np.float64) - expected)
        allowed = floor + rtol * np.abs(expected)
        # equal entries are no error even where nothing is allowed (0 against 0 with a zero floor)
        with np.errstate(divide="ignore", invalid="ignore"):
            error = np.where(difference == 0, 0.0, difference / allowed)
        if error.size:
            worst = max(worst, float(np.max(np.where(np.isnan(error), np.inf, error))))
    return worst


def exact_error(actual, expected) -> float:
    """0 when the two arrays are bitwise equal in value, else infinite (for spikes: 0 or 1)."""
    actual = backend.to_numpy(actual)
    return 0.0 if actual.shape == expected.shape and np.array_equal(actual, expected) else float("inf")


def on_device(device: str, *arrays):
    return [backend.to_device(np.ascontiguousarray(a), device) for a in arrays]


def best_time(function, device: str, repeats: int) -> float:
    """The best of ``repeats`` wall-clock (CPU) or CUDA-event (GPU) times of ``function()``, after a warm-up."""
    function()  # compiles the kernels, fills CuPy's memory pool
    if device == "gpu":
        cupy = backend.get_array_module("gpu")
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        if device == "gpu":
            start.record()
            function()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        else:
            began = time.perf_counter()
            function()
            times.append(time.perf_counter() - began)
    return min(times)


def timing(op: str, implementation: str, device: str, dtype, size: str, seconds: float, moved: int) -> dict:
    """One benchmark row; ``moved`` is the bytes the op must read and write."""
    return dict(op=op, implementation=implementation, device=device, dtype=np.dtype(dtype).name, size=size,
                ms=seconds * 1e3, mb_moved=moved / 1e6, gb_per_s=moved / seconds / 1e9)


def print_table(rows, peak_gbps: float | None = None) -> None:
    header = f"{'dev':4} {'op':22} {'implementation':15} {'dtype':8} {'size':22} {'ms':>10} {'MB moved':>9} {'GB/s':>8}"
    header += f" {'% peak':>7}" if peak_gbps else ""
    print(header)
    print("-" * len(header))
    for r in rows:
        line = (f"{r['device']:4} {r['op']:22} {r['implementation']:15} {r['dtype']:8} {r['size']:22} "
                f"{r['ms']:10.3f} {r['mb_moved']:9.1f} {r['gb_per_s']:8.1f}")
        if peak_gbps:
            line += f" {100 * r['gb_per_s'] / peak_gbps:6.1f}%" if r["device"] == "gpu" else "       -"
        print(line)


def gpu_peak_bandwidth(flag: float | None = None) -> tuple[float, str]:
    """The device's peak memory bandwidth in GB/s and where the number comes from."""
    if flag is not None:
        return flag, "--peak-gbps"
    cupy = backend.get_array_module("gpu")
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"])
    if "H200" in name:
        return 4800.0, f"{name}: H200 HBM3e"
    clock_khz, bus_bits = properties.get("memoryClockRate", 0), properties.get("memoryBusWidth", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, f"{name}: 2 x memory clock x bus width"
    return 4800.0, f"{name}: no memory attributes, assuming an H200's 4800 GB/s"
