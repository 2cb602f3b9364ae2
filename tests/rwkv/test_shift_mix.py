"""The token shift with its mixes (minisdit/rwkv/shift_mix.py, minisdit/kernels/token_shift.cu): the kernels
on the CPU against the NumPy references through minisdit.kernel_checks.token_shift.check (forward bitwise),
NVRTC (tests/kernels/test_kernel_checks.py), float64 gradients of TokenShiftMix against central differences (reference and kernel branches), and
TimeMix / ChannelMix through the kernels against their CPU composition."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor
from minisdit.autograd.gradcheck import gradcheck
from minisdit.kernel_checks import token_shift as token_shift_check
from minisdit.kernels import runtime
from minisdit.rwkv import ChannelMix, TimeMix, shift_mix
from minisdit.rwkv.shift_mix import TokenShiftMix, token_shift_mix

FAST = settings(max_examples=settings().max_examples // 2, deadline=None)
SHAPES = [(1, 1, 1), (2, 1, 5), (3, 17, 37), (2, 65, 48), (4, 3, 300)]
LAUNCHES = [(64, None), (32, 2), (256, 1), (None, None)]  # (block, max_blocks)
needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


def definition(z, *mixes):
    """x^k_n = mu_k z_n + (1 - mu_k) z_{n-1} with z_{-1} = 0, position by position as the formula reads."""
    out = np.zeros((len(mixes),) + z.shape)
    for k, mu in enumerate(mixes):
        for n in range(z.shape[1]):
            previous = z[:, n - 1] if n > 0 else 0.0
            out[k, :, n] = mu * z[:, n] + (1 - mu) * previous
    return out


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mixes", [1, 2, 3])
@pytest.mark.parametrize("block,max_blocks", LAUNCHES)
def test_kernels_on_cpu_match_the_reference(dtype, shape, mixes, block, max_blocks):
    assert token_shift_check.check(dtype, shape, mixes, block=block, max_blocks=max_blocks, seed=mixes) <= 1


def test_reference_equals_the_definition():
    rng = np.random.default_rng(0)
    z, mus = rng.normal(size=(2, 6, 4)), [rng.uniform(size=4) for _ in range(3)]
    np.testing.assert_allclose(shift_mix.token_shift_mix_reference(z, mus), definition(z, *mus), rtol=1e-15)


def random_inputs(seed, batch, length, channels, mixes):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, length, channels))] + [rng.uniform(-0.5, 1.5, channels) for _ in range(mixes)]


@FAST
@given(batch=st.integers(1, 3), length=st.integers(1, 7), channels=st.integers(1, 5), mixes=st.integers(1, 3),
       kernels=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_gradients_equal_differences_of_the_definition(batch, length, channels, mixes, kernels, seed):
    """float64: dL/dz and every dL/dmu_k of TokenShiftMix, on its NumPy branch and on its kernel branch."""
    if kernels and runtime.cpu_compiler() is None:
        return
    inputs = random_inputs(seed, batch, length, channels, mixes)
    with runtime.cpu_kernels(kernels), pytest.MonkeyPatch.context() as patch:
        patch.setattr(shift_mix, "KERNELS_ON_CPU", kernels)
        function = lambda *t: TokenShiftMix.apply(*t)  # noqa: E731
        probe = TokenShiftMix.apply(*[Tensor(a, requires_grad=True) for a in inputs])
        assert probe.shape == (mixes, batch, length, channels) and probe.creator.use_kernels == kernels
        gradcheck(function, inputs, reference=definition, seed=seed)


def test_bad_shapes_are_refused_with_the_fix():
    z = Tensor(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"tokens \(N, L, D\) and 1 to 3 mixes of shape \(D,\)"):
        token_shift_mix(z, Tensor(np.zeros(5)))
    with pytest.raises(ValueError, match="1 to 3 mixes"):
        token_shift_mix(z, *[Tensor(np.zeros(4))] * 4)


def randomised(module, rng):
    """Mixes spread over [-0.5, 1.5], so that both terms of every mix matter."""
    for name in ("time_mix_k", "time_mix_v", "time_mix_r"):
        if hasattr(module, name):
            getattr(module, name).data[...] = rng.uniform(-0.5, 1.5, module.dim).astype(getattr(module, name).dtype)
    return module


def run(module, z, g, kernels):
    with runtime.cpu_kernels(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(shift_mix, "KERNELS_ON_CPU", kernels)
        module.zero_grad()
        x = Tensor(z, requires_grad=True)
        y = module(x)
        y.backward(g)
        return y.numpy(), x.grad, {name: p.grad.copy() for name, p in module.named_parameters()}


@needs_compiler
@pytest.mark.parametrize("module_class", [TimeMix, ChannelMix])
def test_layers_through_the_kernels(module_class):
    """The layers' outputs through the kernels are bitwise those of the composition the CPU keeps (the
    forward kernel rounds like it); input and parameter gradients agree to float32 rounding."""
    rng = np.random.default_rng(1)
    module = randomised(module_class(16, layer_id=1, depth=4, rng=2), rng)
    z, g = rng.normal(size=(2, 9, 16)).astype(np.float32), rng.normal(size=(2, 9, 16)).astype(np.float32)
    y, grad_x, grads = run(module, z, g, kernels=True)
    y_cpu, grad_x_cpu, grads_cpu = run(module, z, g, kernels=False)
    np.testing.assert_array_equal(y, y_cpu)
    np.testing.assert_allclose(grad_x, grad_x_cpu, rtol=1e-5, atol=1e-6)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_cpu[name], rtol=1e-5, atol=1e-5, err_msg=name)


@needs_compiler
def test_benchmark_reports_both_rows():
    rows = token_shift_check.benchmark("cpu", shape=(2, 3, 8), repeats=1)
    assert [(r["op"], r["implementation"]) for r in rows] == [("token_shift fwd+bwd", "numpy"),
                                                              ("token_shift fwd+bwd", "token_shift.cu")]
    assert all(r["ms"] > 0 and r["mb_moved"] > 0 for r in rows)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mixes", [2, 3])
def test_check_passes_on_the_gpu(dtype, mixes):
    assert token_shift_check.check(dtype, (3, 17, 37), mixes, device="gpu") <= 1
    assert token_shift_check.check(dtype, (256, 65, 384), mixes, device="gpu", block=None) <= 1
