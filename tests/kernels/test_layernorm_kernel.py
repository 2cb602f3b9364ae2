"""minisdit/kernels/layernorm.cu (LayerNorm without affine, forward and backward) against the weight-less
branch of nn_ops.LayerNorm, through minisdit.kernel_checks.layernorm.check: the .cu source run on the CPU
(odd sizes, several blocks, a grid that must wrap), compiled with NVRTC (tests/kernels/test_kernel_checks.py), the Function's fused branch
(float64 gradients against central differences), and on a GPU."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor
from minisdit.autograd import functional as F
from minisdit.autograd.gradcheck import gradcheck
from minisdit.kernel_checks import layernorm as layernorm_check
from minisdit.kernels import layernorm, runtime
from minisdit.kernels.layernorm import FUSED_LAYER_NORM

FAST = settings(max_examples=settings().max_examples // 2, deadline=None)
SHAPES = [(1, 1), (7, 1), (3, 17, 37), (2, 65, 48), (5, 384), (300, 3)]
LAUNCHES = [(64, None), (32, 2), (256, 1), (None, None)]  # (block, max_blocks)
needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


@pytest.fixture
def gpu_path(monkeypatch):
    """The GPU's branch on NumPy arrays: the compiled CPU kernels, with KERNELS_ON_CPU set."""
    monkeypatch.setattr(layernorm, "KERNELS_ON_CPU", True)
    with runtime.cpu_kernels():
        yield


def definition(x, eps):
    """(x - mean) / sqrt(biased var + eps) over the last axis, as the formula reads."""
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block,max_blocks", LAUNCHES)
def test_kernels_on_cpu_match_the_reference(dtype, shape, block, max_blocks):
    assert layernorm_check.check(dtype, shape, block=block, max_blocks=max_blocks, seed=len(shape)) <= 1


@needs_compiler
@FAST
@given(rows=st.integers(1, 4), features=st.integers(1, 12), scale=st.sampled_from([0.1, 1.0, 30.0]),
       seed=st.integers(0, 2**32 - 1))
def test_fused_gradient_equals_differences_of_the_definition(rows, features, scale, seed):
    """float64: the kernels' backward against central differences of the formula."""
    x = np.random.default_rng(seed).normal(size=(2, rows, features)) * scale
    with runtime.cpu_kernels(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(layernorm, "KERNELS_ON_CPU", True)
        gradcheck(lambda t: F.layer_norm(t, eps=1e-6, fused=FUSED_LAYER_NORM), [x],
                  reference=lambda a: definition(a, 1e-6), seed=seed)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_function_takes_the_kernels_on_the_gpu_path(gpu_path, dtype):
    """The fused branch of LayerNorm (a non-contiguous input included) against its NumPy branch."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 9, 20)).astype(dtype)[:, ::2]
    rtol, atol = layernorm_check.TOLERANCES[np.dtype(dtype)]
    fused, plain = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    y = F.layer_norm(fused, eps=1e-6, fused=FUSED_LAYER_NORM)
    assert y.creator.use_fused and y.dtype == dtype
    expected = F.layer_norm(plain, eps=1e-6)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=rtol, atol=atol)
    g = rng.normal(size=y.shape).astype(dtype)
    y.backward(g)
    expected.backward(g)
    np.testing.assert_allclose(fused.grad, plain.grad, rtol=rtol, atol=atol)


@needs_compiler
def test_the_cpu_keeps_the_bitwise_reference():
    """Without KERNELS_ON_CPU (the default, also inside cpu_kernels(), as the command lines run) the
    Function takes its NumPy branch, bit for bit as without ``fused``; with a weight it always does."""
    x = Tensor(np.random.default_rng(4).normal(size=(3, 5, 8)).astype(np.float32), requires_grad=True)
    with runtime.cpu_kernels():
        y = F.layer_norm(x, eps=1e-6, fused=FUSED_LAYER_NORM)
        assert not y.creator.use_fused
        np.testing.assert_array_equal(y.numpy(), F.layer_norm(x, eps=1e-6).numpy())
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(layernorm, "KERNELS_ON_CPU", True)
            weight = Tensor(np.ones(8, np.float32))
            assert not F.layer_norm(x, weight, eps=1e-6, fused=FUSED_LAYER_NORM).creator.use_fused


@needs_compiler
def test_benchmark_reports_both_rows():
    rows = layernorm_check.benchmark("cpu", shape=(2, 3, 8), repeats=1)
    assert [(r["op"], r["implementation"]) for r in rows] == [("layernorm fwd+bwd", "numpy"),
                                                              ("layernorm fwd+bwd", "layernorm.cu")]
    assert all(r["ms"] > 0 and r["mb_moved"] > 0 for r in rows)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_passes_on_the_gpu(dtype):
    assert layernorm_check.check(dtype, (3, 17, 37), device="gpu") <= 1
    assert layernorm_check.check(dtype, (256, 65, 384), device="gpu", block=None) <= 1
