"""minisdit.kernel_checks: the per-kernel check on a GPU (CuPy build against the NumPy references) and
the benchmarks' rows, small, on the CPU build (no timing is asserted, only that every row is there)."""
import re

import numpy as np
import pytest

from minisdit.kernel_checks import KERNEL_CHECKS, ddpm_loss, lif, wkv
from minisdit.kernels import runtime
from minisdit.snn import LIFOptions
from minisdit.snn.surrogate import Sigmoid

needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")
# On a GPU the transcendental functions (exp, atan) round differently from NumPy's, so float32 gets the
# looser tolerance of the GPU op tests.
GPU_FLOAT32 = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_checks_pass_on_the_gpu(dtype):
    assert lif.check(LIFOptions(tau=1.7, v_threshold=0.9), dtype, 1000, 4, device="gpu") <= 1
    assert lif.check(LIFOptions(v_reset=None, surrogate=Sigmoid()), dtype, 257, 5, device="gpu", max_blocks=1) <= 1
    assert wkv.check(dtype, 5, 33, 45, device="gpu") <= 1
    assert wkv.check(dtype, 2, 25, 33, device="gpu", extreme_k=100.0, block=None) <= 1
    assert ddpm_loss.check(dtype, 7, (3, 11, 13), device="gpu") <= 1
    assert ddpm_loss.check(dtype, 300, (1, 1, 1), device="gpu", block=32, max_blocks=2) <= 1


@needs_compiler
def test_benchmarks_report_every_row():
    rows = (lif.benchmark("cpu", neurons=64, steps=(2,), repeats=1) + wkv.benchmark("cpu", batch=1, length=3, channels=4, repeats=1)
            + ddpm_loss.benchmark("cpu", batch=2, sample_shape=(1, 3, 3), repeats=1))
    assert [(r["op"], r["implementation"]) for r in rows] == [
        ("lif fwd+bwd", "numpy"), ("lif fwd+bwd", "lif.cu"), ("spike_rate fwd+bwd", "numpy"), ("spike_rate fwd+bwd", "lif.cu"),
        ("wkv fwd+bwd", "numpy"), ("wkv fwd+bwd", "wkv.cu"), ("wkv gated fwd+bwd", "wkv.cu"),
        ("q_sample", "numpy"), ("eps-mse fwd+bwd", "numpy"), ("q_sample", "ddpm_loss.cu"), ("eps-mse fwd+bwd", "ddpm_loss.cu")]
    assert all(r["ms"] > 0 and r["mb_moved"] > 0 for r in rows)


@pytest.mark.parametrize("name", sorted(KERNEL_CHECKS))
def test_every_kernel_of_a_file_is_checked(name):
    """Each kernel_checks module lists (and so checks) every kernel its .cu file defines."""
    source = runtime.kernel_source(f"{name}.cu")
    assert set(runtime.kernel_signatures(source)) == set(KERNEL_CHECKS[name].KERNELS)


# lif.cu has its own test over its 80 variants (tests/snn/test_lif.py)
@pytest.mark.skipif(not runtime.nvrtc_available(), reason="libnvrtc not installed: pip install nvidia-cuda-nvrtc-cu12")
@pytest.mark.parametrize("arch", runtime.NVRTC_ARCHITECTURES)
@pytest.mark.parametrize("name", sorted(set(KERNEL_CHECKS) - {"lif"}))
def test_every_variant_compiles_with_nvrtc(name, arch):
    check = KERNEL_CHECKS[name]
    for defines in check.variants():
        ptx = runtime.nvrtc_compile(runtime.kernel_source(f"{name}.cu"), defines, arch=arch, name=f"{name}.cu")
        for kernel in check.KERNELS:
            assert f".entry {kernel}(" in ptx, (kernel, defines)
        if defines["scalar_t"] == "float":
            # the float variant must not fall back to double arithmetic (10-60x slower on most GPUs)
            assert re.search(r"\.f64\b", ptx) is None, defines
