"""minisdit/kernels/optim.cu (the fused AdamW step and EMA update) against the NumPy references in
minisdit.autograd.optim, through minisdit.kernel_checks.optim.check: the .cu source run on the CPU
(odd sizes, several blocks, a grid too small so that the grid-stride loop wraps; bitwise equal to
the references), compiled with NVRTC (tests/kernels/test_kernel_checks.py), FUSED's choice of kernel or reference, and on a GPU."""

import numpy as np
import pytest

from minisdit import nn
from minisdit.autograd.optim import EMA, AdamW, adamw_step_reference, ema_update_reference
from minisdit.kernel_checks import optim as optim_check
from minisdit.kernels import optim as optim_kernels
from minisdit.kernels import runtime

SCALARS = {"float": np.float32, "double": np.float64}
SIZES = [1, 7, 1000, 4099]
LAUNCHES = [(64, None), (32, 2), (256, 1)]  # (block, max_blocks); None: enough blocks for one thread per entry
needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


@needs_compiler
@pytest.mark.parametrize("scalar_t", list(SCALARS))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block,max_blocks", LAUNCHES)
def test_kernels_on_cpu_match_numpy_bitwise(scalar_t, n, block, max_blocks):
    for bitwise in (False, True):
        assert optim_check.check(SCALARS[scalar_t], n, block=block, max_blocks=max_blocks, seed=n,
                                 bitwise=bitwise) <= 1


def test_references_read_like_the_equations():
    """adamw_step_reference is the textbook AdamW (Loshchilov & Hutter, PyTorch's place of ε) and
    ema_update_reference the EMA formula, in float64."""
    rng = np.random.default_rng(0)
    theta0, g1, g2 = rng.standard_normal((3, 50))
    lr, beta1, beta2, eps, wd = 1e-2, 0.8, 0.95, 1e-6, 0.1
    theta, m, v = theta0.copy(), np.zeros(50), np.zeros(50)
    expected, m_expected, v_expected = theta0.copy(), np.zeros(50), np.zeros(50)
    for t, g in enumerate((g1, g2), start=1):
        adamw_step_reference(theta, g, m, v, lr, beta1, beta2, eps, wd, t)
        expected = expected * (1 - lr * wd)
        m_expected = beta1 * m_expected + (1 - beta1) * g
        v_expected = beta2 * v_expected + (1 - beta2) * g ** 2
        m_hat, v_hat = m_expected / (1 - beta1 ** t), v_expected / (1 - beta2 ** t)
        expected = expected - lr * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(theta, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(m, m_expected, rtol=1e-13)
    np.testing.assert_allclose(v, v_expected, rtol=1e-13)
    shadow = theta0.copy()
    ema_update_reference(shadow, g1, 0.75)
    np.testing.assert_allclose(shadow, 0.75 * theta0 + 0.25 * g1, rtol=1e-14)


def _train(fused, steps=4):
    """A few AdamW + EMA steps of a small model with the given ``fused`` updates; its weights, m, v, shadow."""
    model = nn.Sequential(nn.Linear(5, 7, rng=1), nn.Linear(7, 3, rng=2))
    optimizer = AdamW(model, lr=1e-2, weight_decay=0.05, fused=fused)
    ema = EMA(model, decay=0.9, fused=fused)
    rng = np.random.default_rng(3)
    for _ in range(steps):
        optimizer.zero_grad()
        for p in model.parameters():
            p.grad = rng.standard_normal(p.shape).astype(p.dtype)
        optimizer.step()
        ema.update()
    return [optimizer.flat.data.copy(), optimizer.exp_avg_buffer.copy(), optimizer.exp_avg_sq_buffer.copy(),
            ema.shadow_buffer.copy()]


@needs_compiler
def test_fused_runs_the_kernel_only_inside_cpu_kernels_and_changes_no_bit(monkeypatch):
    calls = []
    for name in ("adamw_step_kernel", "ema_update_kernel"):
        original = getattr(optim_kernels, name)
        monkeypatch.setattr(optim_kernels, name, lambda *a, _f=original, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    reference = _train(None)
    outside = _train(optim_kernels.FUSED)
    assert calls == []
    with runtime.cpu_kernels():
        inside = _train(optim_kernels.FUSED)
    assert calls.count("adamw_step_kernel") == 4 and calls.count("ema_update_kernel") == 4
    for a, b, c in zip(reference, outside, inside):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@needs_compiler
def test_benchmark_reports_every_row():
    rows = optim_check.benchmark("cpu", n=100, repeats=1)
    assert [(r["op"], r["implementation"]) for r in rows] == [
        ("adamw step", "numpy"), ("ema update", "numpy"), ("adamw step", "optim.cu"), ("ema update", "optim.cu")]
    assert all(r["ms"] > 0 and r["mb_moved"] > 0 for r in rows)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_passes_on_the_gpu(dtype):
    assert optim_check.check(dtype, 100_003, device="gpu", block=None) <= 1
    assert optim_check.check(dtype, 300, device="gpu", block=32, max_blocks=2) <= 1
