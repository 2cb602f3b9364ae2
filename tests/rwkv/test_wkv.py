"""The WKV operator: forward and backward against its O(L^2) definition, and minisdit/kernels/wkv.cu against
the NumPy recurrences (minisdit.kernel_checks.wkv.check on the CPU build, compiled with NVRTC (tests/kernels/test_kernel_checks.py), and on a GPU if any)."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor, backend
from minisdit.kernel_checks import wkv as wkv_check
from minisdit.kernels import runtime
from minisdit.autograd.gradcheck import gradcheck
from minisdit.rwkv import wkv_operator
from minisdit.rwkv.wkv_operator import (kernel_defines, wkv, wkv_backward_kernel, wkv_backward_numpy, wkv_forward_kernel,
                                        wkv_forward_numpy, wkv_quadratic_numpy)

FAST = settings(max_examples=settings().max_examples, deadline=None)
# no overflow, no 0/0, no log(0) anywhere: underflow to 0 is the only thing the recurrences allow
STRICT = dict(over="raise", invalid="raise", divide="raise")
needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


def random_inputs(rng, batch, length, channels, k_scale=1.0, dtype=np.float64):
    time_decay = rng.uniform(-5.0, 3.0, channels)  # the range of the layer-dependent init
    time_first = rng.normal(np.log(0.3), 0.5, channels)
    k = rng.normal(0.0, k_scale, (batch, length, channels))
    v = rng.standard_normal((batch, length, channels))
    return [np.asarray(a, dtype=dtype) for a in (time_decay, time_first, k, v)]


def extreme_k(rng, batch, length, channels, magnitude):
    """k at +-magnitude and in between, with long runs of one sign (the worst case for the maxima)."""
    signs = np.where(rng.random((batch, length, channels)) < 0.5, -1.0, 1.0)
    signs[:, : length // 2] = 1.0
    return signs * rng.uniform(0.5 * magnitude, magnitude, (batch, length, channels))


def quadratic(time_decay, time_first, k, v):
    return wkv_quadratic_numpy(time_decay, time_first, k, v)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@FAST
@given(batch=st.integers(1, 3), length=st.integers(1, 40), channels=st.integers(1, 5),
       k_scale=st.sampled_from([0.1, 1.0, 10.0, 60.0, 100.0]), seed=st.integers(0, 2**32 - 1))
def test_forward_equals_definition(batch, length, channels, k_scale, seed):
    inputs = random_inputs(np.random.default_rng(seed), batch, length, channels, k_scale)
    with np.errstate(**STRICT):
        y = wkv(*[Tensor(a) for a in inputs]).numpy()
    np.testing.assert_allclose(y, quadratic(*inputs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("magnitude", [60.0, 100.0, 1000.0])
def test_forward_extreme_k_has_no_overflow(magnitude):
    rng = np.random.default_rng(1)
    time_decay, time_first, _, v = random_inputs(rng, 2, 33, 4)
    k = extreme_k(rng, 2, 33, 4, magnitude)
    with np.errstate(**STRICT):
        y64 = wkv(Tensor(time_decay), Tensor(time_first), Tensor(k), Tensor(v)).numpy()
        y32 = wkv(*[Tensor(a.astype(np.float32)) for a in (time_decay, time_first, k, v)]).numpy()
    expected = quadratic(time_decay, time_first, k, v)
    assert np.isfinite(y64).all() and np.isfinite(y32).all()
    np.testing.assert_allclose(y64, expected, rtol=1e-10, atol=1e-12)
    # float32: exponents of size |k| are rounded to ulp(|k|), i.e. a relative weight error of ~|k| 6e-8
    np.testing.assert_allclose(y32, expected, rtol=0, atol=4 * magnitude * 6e-8 * np.abs(v).max())


def test_log_denominator_is_ln_of_the_sum():
    rng = np.random.default_rng(2)
    time_decay, time_first, k, v = random_inputs(rng, 2, 9, 3)
    w = np.exp(time_decay)
    _, log_denominator = wkv_forward_numpy(w, time_first, k, v)
    # D_n = sum_{i<n} e^{-(n-1-i)w + k_i} + e^{u + k_n}, summed directly (k is small here)
    expected = np.empty_like(k)
    for n in range(k.shape[1]):
        total = np.exp(time_first + k[:, n])
        for i in range(n):
            total = total + np.exp(-(n - 1 - i) * w + k[:, i])
        expected[:, n] = np.log(total)
    np.testing.assert_allclose(log_denominator, expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# backward: analytic gradients of the fused op against central differences of the definition
# ---------------------------------------------------------------------------------------------
def check_gradients_against_definition(inputs, seed):
    """The fused op's backward against central differences of ``wkv_quadratic_numpy``, with no
    overflow or invalid operation anywhere (gradcheck fails on a non-finite gradient too)."""
    with np.errstate(**STRICT):
        gradcheck(wkv, inputs, reference=quadratic, seed=seed)


@FAST
@given(batch=st.integers(1, 3), length=st.integers(1, 40), channels=st.integers(1, 5),
       k_scale=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**32 - 1))
def test_backward_equals_differences_of_definition(batch, length, channels, k_scale, seed):
    check_gradients_against_definition(random_inputs(np.random.default_rng(seed), batch, length, channels, k_scale), seed)


@pytest.mark.parametrize("magnitude", [60.0, 100.0])
def test_backward_extreme_k(magnitude):
    rng = np.random.default_rng(3)
    time_decay, time_first, _, v = random_inputs(rng, 2, 21, 3)
    k = extreme_k(rng, 2, 21, 3, magnitude)
    check_gradients_against_definition([time_decay, time_first, k, v], seed=3)


def test_float32_gradients_have_the_input_dtypes_and_are_finite_for_extreme_k():
    rng = np.random.default_rng(4)
    time_decay, time_first, _, v = random_inputs(rng, 2, 30, 6, dtype=np.float32)
    k = extreme_k(rng, 2, 30, 6, 100.0).astype(np.float32)
    leaves = [Tensor(a, requires_grad=True) for a in (time_decay, time_first, k, v)]
    with np.errstate(**STRICT):
        wkv(*leaves).sum().backward()
    for leaf in leaves:
        assert leaf.grad.dtype == np.float32 and np.isfinite(leaf.grad).all()


def test_bad_inputs_give_clear_errors():
    k = Tensor(np.zeros((2, 3, 4)))
    vector = Tensor(np.zeros(4))
    with pytest.raises(ValueError, match="one shape"):
        wkv(vector, vector, k, Tensor(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match=r"shape \(C,\)"):
        wkv(Tensor(np.zeros(3)), vector, k, k)
    with pytest.raises(TypeError, match="float32 or both float64"):
        wkv(vector, vector, Tensor(np.zeros((2, 3, 4), np.float16)), Tensor(np.zeros((2, 3, 4), np.float16)))


# ---------------------------------------------------------------------------------------------
# minisdit/kernels/wkv.cu
# ---------------------------------------------------------------------------------------------
VARIANTS = {"float": np.float32, "double": np.float64}


def kernel_case(dtype, batch=3, length=19, channels=37, k_scale=3.0, seed=5):
    """Inputs and the NumPy reference's forward and backward outputs."""
    rng = np.random.default_rng(seed)
    time_decay, time_first, k, v = random_inputs(rng, batch, length, channels, k_scale, dtype=dtype)
    w = np.exp(time_decay)
    grad_y = rng.standard_normal(k.shape).astype(dtype)
    y, log_denominator = wkv_forward_numpy(w, time_first, k, v)
    grads = wkv_backward_numpy(w, time_first, k, v, y, log_denominator, grad_y)
    return (w, time_first, k, v, grad_y), (y, log_denominator), grads


def assert_matches(actual, expected, dtype):
    names = ("y", "log_denominator") if len(expected) == 2 else ("grad_k", "grad_v", "grad_w", "grad_u")
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        # relative to the entry, with a floor relative to the largest entry (cancellation near 0)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max(), err_msg=name)


@pytest.mark.parametrize("scalar_t", sorted(VARIANTS))
@pytest.mark.parametrize("shape", [(3, 19, 37), (1, 1, 5), (2, 40, 1)])
def test_kernel_on_cpu_matches_numpy(scalar_t, shape):
    # minisdit.kernel_checks.wkv.check: block 32, so (3, 37) is 111 threads, four blocks with the last one
    # partly idle; every output relative to the entry with a floor relative to its largest entry
    assert wkv_check.check(VARIANTS[scalar_t], *shape, block=32) <= 1


@pytest.mark.parametrize("scalar_t", sorted(VARIANTS))
def test_kernel_grid_stride_loop_covers_every_recurrence(scalar_t):
    """Fewer threads than (b, c) pairs (2 blocks of 16 for 111 pairs): each thread takes several recurrences."""
    assert wkv_check.check(VARIANTS[scalar_t], 3, 7, 37, block=16, max_blocks=2, seed=6) <= 1


class RecordingCpuKernel(runtime.CpuKernel):
    """A CpuKernel that records its launch shapes instead of running."""

    def __init__(self):
        self.launches = []

    def __call__(self, grid, block, args):
        self.launches.append((grid, block))


def test_launch_chooses_the_grid():
    cpu = RecordingCpuKernel()
    runtime.launch(cpu, 111, ())                         # default on the CPU: one thread runs the grid-stride loop
    runtime.launch(cpu, 111, (), block=32)               # an explicit block: 4 blocks, the last one partly idle
    runtime.launch(cpu, 111, (), block=32, max_blocks=2)
    runtime.launch(cpu, 0, ())                           # nothing to run: no launch (CUDA rejects empty grids)
    assert cpu.launches == [((1,), (1,)), ((4,), (32,)), ((2,), (32,))]
    gpu_launches = []  # any other callable stands for a CuPy kernel

    def gpu(grid, block, args):
        gpu_launches.append((grid, block))

    runtime.launch(gpu, 111, (), gpu_block=64)
    runtime.launch(gpu, 1000, (), max_blocks=3)
    runtime.launch(gpu, 1000, (), block=128)
    assert gpu_launches == [((2,), (64,)), ((3,), (256,)), ((8,), (128,))]


def test_scalar_type_names_the_c_type():
    assert runtime.scalar_type(np.float32) == "float" and runtime.scalar_type(np.dtype("float64")) == "double"
    assert kernel_defines(np.float32) == {"scalar_t": "float"}
    with pytest.raises(TypeError, match="float32 or float64.*float16.*astype"):
        runtime.scalar_type(np.float16)


@pytest.mark.parametrize("scalar_t", sorted(VARIANTS))
def test_kernel_on_cpu_extreme_k(scalar_t):
    # k at +-100 with long runs of one sign; the reference runs with floating-point errors raised, and a
    # non-finite kernel output is an infinite error
    assert wkv_check.check(VARIANTS[scalar_t], 2, 25, 33, extreme_k=100.0, seed=7) <= 1


# ---------------------------------------------------------------------------------------------
# GPU (CuPy): the Function uses the kernels on CuPy arrays
# ---------------------------------------------------------------------------------------------
# tests/conftest.py skips tests marked gpu where CuPy finds no GPU, saying why (or fails them when
# MINISDIT_REQUIRE_GPU=1)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k_scale", [((3, 19, 37), 1.0), ((4, 394, 96), 3.0), ((2, 50, 33), 100.0)])
def test_gpu_kernel_matches_numpy(dtype, shape, k_scale):
    rng = np.random.default_rng(8)
    inputs = random_inputs(rng, *shape, k_scale=k_scale, dtype=dtype)
    grad_y = rng.standard_normal(shape).astype(dtype)
    results = {}
    for device in ("cpu", "gpu"):
        leaves = [Tensor(a, requires_grad=True, device=device) for a in inputs]
        y = wkv(*leaves)
        assert backend.is_gpu_array(y.data) == (device == "gpu")
        y.backward(Tensor(grad_y, device=device))
        results[device] = [backend.to_numpy(y.data)] + [backend.to_numpy(leaf.grad) for leaf in leaves]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, gpu, cpu in zip(("y", "time_decay", "time_first", "k", "v"), results["gpu"], results["cpu"]):
        assert gpu.dtype == cpu.dtype and np.isfinite(gpu).all(), name
        # relative to the entry, with a floor relative to the largest entry (cancellation near 0)
        np.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=rtol * np.abs(cpu).max(), err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("scalar_t", sorted(VARIANTS))
def test_gpu_kernels_match_cpu_run_of_the_same_source(scalar_t):
    cupy = backend.get_array_module("gpu")
    dtype = VARIANTS[scalar_t]
    (w, u, k, v, grad_y), _, _ = kernel_case(dtype, 5, 33, 45)
    forward_cpu = wkv_forward_kernel(w, u, k, v)  # NumPy arrays: the C++ build of wkv.cu
    grads_cpu = wkv_backward_kernel(w, u, k, v, *forward_cpu, grad_y)
    on_gpu = [cupy.asarray(a) for a in (w, u, k, v, grad_y)]
    forward_gpu = wkv_forward_kernel(*on_gpu[:4])  # CuPy arrays: the CuPy build of the same source
    grads_gpu = wkv_backward_kernel(*on_gpu[:4], *forward_gpu, on_gpu[4])
    assert_matches([a.get() for a in forward_gpu], forward_cpu, dtype)
    assert_matches([a.get() for a in grads_gpu], grads_cpu, dtype)


# ---------------------------------------------------------------------------------------------
# the gated operator σ(r) ⊙ wkv (TimeMix's gate folded into WKV)
# ---------------------------------------------------------------------------------------------
def gated(time_decay, time_first, k, v, r):
    return wkv(time_decay, time_first, k, v, r=r)


def gated_definition(time_decay, time_first, k, v, r):
    return 1.0 / (1.0 + np.exp(-r)) * quadratic(time_decay, time_first, k, v)


def random_gate(rng, shape, scale=3.0, dtype=np.float64):
    return np.asarray(rng.normal(0.0, scale, shape), dtype=dtype)


@FAST
@given(batch=st.integers(1, 3), length=st.integers(1, 30), channels=st.integers(1, 5),
       k_scale=st.sampled_from([0.1, 1.0, 5.0]), r_scale=st.sampled_from([0.5, 3.0, 10.0]),
       seed=st.integers(0, 2**32 - 1))
def test_gated_backward_equals_differences_of_definition(batch, length, channels, k_scale, r_scale, seed):
    """All five inputs (time_decay, time_first, k, v, r), float64, against central differences of
    σ(r) times the O(L^2) definition."""
    rng = np.random.default_rng(seed)
    inputs = random_inputs(rng, batch, length, channels, k_scale) + [random_gate(rng, (batch, length, channels), r_scale)]
    with np.errstate(**STRICT):
        gradcheck(gated, inputs, reference=gated_definition, seed=seed)


def test_gated_on_numpy_is_bitwise_the_separate_sigmoid_and_product():
    """The default CPU path: the same bits (outputs and all five gradients) as F.sigmoid(r) * wkv(...)."""
    from minisdit.autograd import ops as F
    rng = np.random.default_rng(8)
    arrays = random_inputs(rng, 2, 13, 6, 3.0, dtype=np.float32)
    arrays.append(random_gate(rng, arrays[2].shape, dtype=np.float32))
    projection = Tensor(rng.standard_normal(arrays[2].shape).astype(np.float32))
    results = []
    for fn in (lambda td, tf, k, v, r: F.sigmoid(r) * wkv(td, tf, k, v), gated):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        out = fn(*leaves)
        (out * projection).sum().backward()
        results.append([out.data] + [leaf.grad for leaf in leaves])
    for separate, fused in zip(*results):
        assert fused.dtype == separate.dtype and np.array_equal(fused, separate)


@needs_compiler
@pytest.mark.parametrize("scalar_t", sorted(VARIANTS))
def test_gated_op_with_the_gated_kernels_matches_the_reference(scalar_t, monkeypatch):
    """With the GPU's gated kernels (wkv_gated_forward/backward, one launch each) on the CPU build:
    the reference's values to float rounding (σ is computed in the kernel, not by NumPy)."""
    monkeypatch.setattr(wkv_operator, "GATE_IN_KERNEL_ON_CPU", True)
    dtype = VARIANTS[scalar_t]
    rng = np.random.default_rng(9)
    arrays = random_inputs(rng, 3, 17, 37, 3.0, dtype=dtype)
    arrays.append(random_gate(rng, arrays[2].shape, dtype=dtype))
    projection = rng.standard_normal(arrays[2].shape).astype(dtype)
    results = []
    for kernels in (False, True):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        with (runtime.cpu_kernels() if kernels else contextlib.nullcontext()):
            out = gated(*leaves)
            (out * Tensor(projection)).sum().backward()
        results.append([out.data] + [leaf.grad for leaf in leaves])
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for name, kernel, reference in zip(("out", "time_decay", "time_first", "k", "v", "r"), *reversed(results)):
        assert kernel.dtype == reference.dtype, name
        np.testing.assert_allclose(kernel, reference, rtol=rtol, atol=rtol * np.abs(reference).max(), err_msg=name)


@needs_compiler
def test_gated_op_with_cpu_kernels_is_bitwise_the_separate_sigmoid_and_product():
    """The CPU training's path (compiled kernels selected): the plain WKV kernels with the gate in
    NumPy, bitwise what F.sigmoid(r) * wkv(...) gave."""
    from minisdit.autograd import ops as F
    rng = np.random.default_rng(10)
    arrays = random_inputs(rng, 2, 13, 6, 3.0, dtype=np.float32)
    arrays.append(random_gate(rng, arrays[2].shape, dtype=np.float32))
    projection = Tensor(rng.standard_normal(arrays[2].shape).astype(np.float32))
    results = []
    for fn in (lambda td, tf, k, v, r: F.sigmoid(r) * wkv(td, tf, k, v), gated):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        with runtime.cpu_kernels():
            out = fn(*leaves)
            (out * projection).sum().backward()
        results.append([out.data] + [leaf.grad for leaf in leaves])
    for separate, fused in zip(*results):
        assert np.array_equal(fused, separate)


def test_gated_op_refuses_a_gate_unlike_k():
    k, vector = Tensor(np.zeros((2, 3, 4))), Tensor(np.zeros(4))
    with pytest.raises(ValueError, match=r"gate r must be like k: shape \(2, 3, 4\).*pass the receptance"):
        wkv(vector, vector, k, k, r=Tensor(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match="dtype float64"):
        wkv(vector, vector, k, k, r=Tensor(np.zeros((2, 3, 4), np.float32)))
