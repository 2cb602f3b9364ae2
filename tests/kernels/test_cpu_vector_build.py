"""The vector CPU build (minisdit/kernels/runtime.py CPU_BUILDS, lif_cpu.h, wkv_cpu.h): the fast
launch runs the LIF and WKV recurrences with the loop over threads innermost, vectorised; it must
give the NumPy references' results with the same tolerances as the GPU body, the same result on
every run, and leave what NVRTC compiles alone."""
import itertools

import numpy as np
import pytest

from minisdit.kernel_checks import lif as lif_check
from minisdit.kernel_checks import wkv as wkv_check
from minisdit.kernels import runtime
from minisdit.snn.lif import LIFOptions
from minisdit.snn.surrogate import ATan, Erf, PiecewiseQuadratic, Sigmoid, SoftSign

pytestmark = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")

SURROGATES = [ATan(), Sigmoid(), PiecewiseQuadratic(), SoftSign(), Erf()]
ALL_VARIANTS = list(itertools.product(SURROGATES, [0.0, None], [False, True], [True, False], [np.float32, np.float64]))
# each surrogate once (Sigmoid and Erf call exp: libmvec's vector exp), each reset, detach and decay
# setting and both dtypes at least once
VARIANTS = [(ATan(), 0.0, False, True, np.float32), (Sigmoid(), None, True, False, np.float32),
            (PiecewiseQuadratic(), 0.0, True, False, np.float64), (SoftSign(), None, False, True, np.float64),
            (Erf(), 0.0, False, True, np.float32), (Sigmoid(), 0.0, False, True, np.float64)]


def variant_id(variant):
    surrogate, v_reset, detach, decay, dtype = variant
    reset = "soft" if v_reset is None else f"hard{v_reset}"
    return f"{surrogate.name}-{reset}-detach{int(detach)}-decay{int(decay)}-{np.dtype(dtype).name}"


def lif_fast_launch(variant, neurons, T):
    surrogate, v_reset, detach, decay, dtype = variant
    options = LIFOptions(tau=1.7, v_threshold=0.9, v_reset=v_reset, decay_input=decay, detach_reset=detach,
                         surrogate=surrogate)
    return lif_check.check(options, dtype, neurons, T, block=None)  # block=None: the fast launch


def test_lif_and_wkv_have_vector_loops_for_every_kernel():
    assert runtime.cpu_serial_kernels("lif.cu") == {"lif_forward", "lif_backward", "spike_rate_forward",
                                                    "spike_rate_backward"}
    assert runtime.cpu_serial_kernels("wkv.cu") == {"wkv_forward", "wkv_backward", "wkv_gated_forward",
                                                    "wkv_gated_backward"}
    assert runtime.cpu_serial_kernels("ddpm_loss.cu") == set()


def test_only_the_vector_build_launches_the_vector_loops():
    vector, scalar = runtime.cpu_launcher_source("wkv.cu"), runtime.cpu_launcher_source("wkv.cu", vectorized=False)
    assert vector.count("if (grid == 1 && block == 1) { cpu_serial_") == 4
    assert "cpu_serial_" not in scalar


def test_the_vector_build_keeps_ieee_semantics():
    # -ffast-math (and its -ffinite-math-only) would break the inf/NaN handling the WKV relies on
    for options in runtime.CPU_BUILDS.values():
        assert not any(option.startswith(("-ffast-math", "-ffinite-math-only", "-Ofast", "-funsafe-math"))
                       for option in options)


def test_the_cuda_sources_include_the_cpu_loops_only_for_the_cpu():
    for file_name in ("lif.cu", "wkv.cu"):
        source = runtime.kernel_source(file_name)
        include = f'#include "{file_name[:-3]}_cpu.h"'
        # only cuda_cpu_shim.h defines MINISDIT_CPU; tests/kernels/test_kernel_checks.py compiles every
        # file with NVRTC, which then skips this block
        assert f"#ifdef MINISDIT_CPU\n{include}\n#endif" in source


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("neurons,T", [(1, 3), (257, 5), (600, 4)])
def test_lif_fast_launch_matches_the_reference(variant, neurons, T):
    # 257: a vector tail; 600: three chunks of MINISDIT_LANES = 256 neurons, the last one partial
    assert lif_fast_launch(variant, neurons, T) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=variant_id)
def test_every_lif_variant_fast_launch_matches_the_reference(variant):
    assert lif_fast_launch(variant, 531, 6) <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,length,channels", [(3, 19, 37), (2, 7, 300), (1, 1, 1)])
def test_wkv_fast_launch_matches_the_reference(dtype, batch, length, channels):
    # 37: a vector tail; 300: two chunks of 256 channels
    assert wkv_check.check(dtype, batch, length, channels, block=None) <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wkv_fast_launch_stays_finite_for_extreme_keys(dtype):
    # |k| up to 100: e^k overflows float32, so only the running maximum keeps the kernel finite
    assert wkv_check.check(dtype, 2, 25, 33, block=None, extreme_k=100.0) <= 1


def _wkv_outputs(rng_seed, build):
    rng = np.random.default_rng(rng_seed)
    batch, length, channels = 2, 30, 70
    w = rng.random(channels).astype(np.float32)
    u = rng.standard_normal(channels).astype(np.float32)
    k, v, r, grad = (rng.standard_normal((batch, length, channels)).astype(np.float32) * 3 for _ in range(4))
    out, y, log_d, grad_k, grad_v, grad_r = (np.zeros((batch, length, channels), np.float32) for _ in range(6))
    grad_w, grad_u = (np.zeros((batch, channels), np.float32) for _ in range(2))
    kernels = runtime.Kernels("wkv.cu", {"scalar_t": "float"})
    with runtime.cpu_build(build):
        kernels.run("wkv_gated_forward", batch * channels, w, u, k, v, r, out, y, log_d, batch, length, channels)
        kernels.run("wkv_gated_backward", batch * channels, w, u, k, v, r, y, log_d, grad, grad_k, grad_v, grad_r,
                    grad_w, grad_u, batch, length, channels)
    return [out, y, log_d, grad_k, grad_v, grad_r, grad_w, grad_u]


def test_the_vector_build_gives_the_same_result_on_every_run():
    first, second = _wkv_outputs(3, "vector"), _wkv_outputs(3, "vector")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_the_builds_agree_within_float32_rounding():
    for vector, scalar in zip(_wkv_outputs(4, "vector"), _wkv_outputs(4, "scalar")):
        np.testing.assert_allclose(vector, scalar, rtol=1e-4, atol=1e-5 * np.abs(scalar).max())


def test_an_unknown_build_is_refused():
    with pytest.raises(ValueError, match="unknown CPU kernel build 'fast'; choose one of vector, scalar"):
        with runtime.cpu_build("fast"):
            pass
