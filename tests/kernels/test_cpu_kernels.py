"""The CPU fast path: inside ``runtime.cpu_kernels()`` LIF, WKV and the DDPM loss run as minisdit/kernels/*.cu
compiled as C++ and give the NumPy references' results."""
import numpy as np
import pytest

from minisdit import Tensor
from minisdit.kernels import runtime
from minisdit.diffusion import GaussianDiffusion
from minisdit.models import SDiT
from minisdit.rwkv import wkv
from minisdit.snn import spike_rate

pytestmark = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


def _run_both(fn):
    """fn() with the NumPy references, then with the compiled CPU kernels."""
    assert not runtime.cpu_kernels_enabled()  # the default: nothing to undo between tests
    reference = fn()
    with runtime.cpu_kernels():
        fast = fn()
    assert not runtime.cpu_kernels_enabled()
    return reference, fast


@pytest.mark.parametrize("dtype,tolerance", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_spike_rate_and_wkv_match_the_references(dtype, tolerance):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5)).astype(dtype) * 2
    k, v = rng.standard_normal((2, 9, 5)).astype(dtype) * 5, rng.standard_normal((2, 9, 5)).astype(dtype)
    decay, first = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    projection_rate, projection_wkv = rng.standard_normal(x.shape), rng.standard_normal(k.shape)

    def run():
        leaves = [Tensor(a, requires_grad=True) for a in (x, decay, first, k, v)]
        rate = spike_rate(leaves[0], T=4)
        out = wkv(*leaves[1:])
        ((rate * Tensor(projection_rate.astype(dtype))).sum() + (out * Tensor(projection_wkv.astype(dtype))).sum()).backward()
        return [rate.numpy(), out.numpy()] + [leaf.grad for leaf in leaves]

    for reference, fast in zip(*_run_both(run)):
        np.testing.assert_allclose(fast, reference, rtol=tolerance, atol=tolerance)


def test_a_whole_training_step_matches():
    diffusion = GaussianDiffusion()
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)

    def step():
        model = SDiT(input_size=8, patch_size=2, hidden_size=16, depth=2, seed=0)
        loss = diffusion.training_losses(model, Tensor(x0), np.array([1, 200, 500, 999]), noise=noise,
                                         y=np.array([0, 1, 2, 3]))["loss"]
        loss.backward()
        return [loss.numpy()] + [p.grad for p in model.parameters()]

    for reference, fast in zip(*_run_both(step)):
        np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-6)
