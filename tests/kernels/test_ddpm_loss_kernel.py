"""minisdit/kernels/ddpm_loss.cu (q_sample, the squared error of the ε-MSE and its backward) against the NumPy
references in minisdit.diffusion, through minisdit.kernel_checks.ddpm_loss.check: the .cu source run on the CPU
(odd sizes, several blocks, a grid too small so that the grid-stride loop wraps; bitwise equal to the
references), compiled with NVRTC (tests/kernels/test_kernel_checks.py), the ops' kernel branch inside runtime.cpu_kernels(), and on a GPU."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor, backend
from minisdit.kernel_checks import ddpm_loss as ddpm_check
from minisdit.kernels import runtime
from minisdit.diffusion import (EpsilonMSE, GaussianDiffusion, epsilon_mse_backward_reference,
                                epsilon_mse_reference, fused_q_sample, q_sample_reference, squared_error_reference)

FAST = settings(max_examples=settings().max_examples * 5 // 6, deadline=None)
SCALARS = {"float": np.float32, "double": np.float64}
TOLERANCE = {"float": dict(rtol=2e-6, atol=1e-6), "double": dict(rtol=1e-13, atol=1e-14)}
# (batch, per-sample shape): odd sizes, size-1 axes, and enough elements for several blocks
SHAPES = [(1, (1, 1, 1)), (3, (1, 5, 7)), (7, (3, 11, 13)), (5, (2, 1, 9)), (300, (1, 1, 1)), (2, (3, 28, 28))]
LAUNCHES = [(64, None), (32, 2), (256, 1)]  # (block, max_blocks); None: enough blocks for one thread per item
KERNELS = ddpm_check.KERNELS
needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


def random_case(rng, batch, sample_shape, dtype):
    return ddpm_check.random_case(rng, batch, sample_shape, dtype)[:4]


@needs_compiler
@pytest.mark.parametrize("scalar_t", list(SCALARS))
@pytest.mark.parametrize("batch,sample_shape", SHAPES)
@pytest.mark.parametrize("block,max_blocks", LAUNCHES)
def test_kernels_on_cpu_match_numpy(scalar_t, batch, sample_shape, block, max_blocks):
    """All three kernels within the tolerance, and the CPU build bitwise equal to the references."""
    for bitwise in (False, True):
        assert ddpm_check.check(SCALARS[scalar_t], batch, sample_shape, block=block, max_blocks=max_blocks,
                                seed=batch, bitwise=bitwise) <= 1


def test_numpy_references_read_like_the_equations():
    rng = np.random.default_rng(0)
    predicted, target = rng.standard_normal((2, 4, 3, 2, 5))
    g = rng.standard_normal(4)
    np.testing.assert_allclose(squared_error_reference(predicted, target), (predicted - target) ** 2)
    for n in range(4):
        assert np.isclose(epsilon_mse_reference(predicted, target)[n], np.mean((predicted[n] - target[n]) ** 2))
        np.testing.assert_allclose(epsilon_mse_backward_reference(predicted, target, g)[n],
                                   2 * (predicted[n] - target[n]) / 30 * g[n])
    a, b = rng.uniform(0, 1, (2, 4))
    x_t = q_sample_reference(predicted, target, a, b)
    for n in range(4):
        np.testing.assert_allclose(x_t[n], a[n] * predicted[n] + b[n] * target[n])


class _CpuPretendingToBeGpu:
    """minisdit.backend as seen by minisdit.diffusion, except that NumPy arrays count as device arrays."""

    def __getattr__(self, name):
        return getattr(backend, name)

    @staticmethod
    def is_gpu_array(array):
        return True

    @staticmethod
    def array_module_of(array):
        return np


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_branch_of_the_ops(dtype):
    """The kernel branch of fused_q_sample and EpsilonMSE (argument order, sizes, a non-contiguous
    input), run on NumPy arrays inside runtime.cpu_kernels(): the branch a GPU takes, without one."""
    scalar_t = "float" if dtype == np.float32 else "double"
    rng = np.random.default_rng(5)
    x0, noise, a, b = random_case(rng, 5, (2, 7, 3), dtype)
    with runtime.cpu_kernels():
        np.testing.assert_allclose(fused_q_sample(x0, noise, a, b), q_sample_reference(x0, noise, a, b),
                                   **TOLERANCE[scalar_t])
        function = EpsilonMSE()
        function.needs_input_grad = (True, True)
        loss = function.forward(x0[:, :1], noise[:, :1])  # a channel slice: not contiguous
        assert function.use_kernels and loss.dtype == dtype
        np.testing.assert_allclose(loss, epsilon_mse_reference(x0[:, :1], noise[:, :1]), **TOLERANCE[scalar_t])
        g = rng.standard_normal(5).astype(dtype)
        grad_predicted, grad_target = function.backward(g)
    expected_grad = epsilon_mse_backward_reference(x0[:, :1], noise[:, :1], g)
    np.testing.assert_allclose(grad_predicted, expected_grad, **TOLERANCE[scalar_t])
    np.testing.assert_array_equal(grad_target, -grad_predicted)


class _CountingNumpy:
    """NumPy as the "device" array module, counting host-to-device copies of step indices and of whole
    schedules (arrays of num_timesteps entries) made by ``asarray``."""

    def __init__(self, num_timesteps):
        self.num_timesteps, self.step_copies, self.schedule_copies = num_timesteps, 0, 0

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, array, *args, **kwargs):
        if isinstance(array, np.ndarray) and array.dtype.kind in "iu":
            self.step_copies += 1
        elif isinstance(array, np.ndarray) and array.shape == (self.num_timesteps,):
            self.schedule_copies += 1
        return np.asarray(array, *args, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@needs_compiler
def test_device_branch_of_training_and_sampling(monkeypatch, dtype):
    """The whole device branch of training_losses and p_mean_variance (schedules kept on the device,
    t copied once per step, the ε-MSE kernels) gives the NumPy branch's results; a training step
    copies only its t, and the schedules only once per dtype."""
    from minisdit import functional as F
    from minisdit.diffusion import fused_ops, gaussian

    def model(x, t, y):  # a fixed map with the [ε, v] layout
        return F.concat([0.7 * x + 0.05, 0.3 - 0.2 * x], axis=1)

    rng = np.random.default_rng(3)
    x0 = (rng.integers(0, 256, (5, 2, 3, 7)) / 127.5 - 1).astype(dtype)
    noise = rng.standard_normal(x0.shape).astype(dtype)
    steps = [np.array([0, 1, 500, 998, 999]), np.array([3, 3, 0, 17, 250])]
    cpu = [GaussianDiffusion().training_losses(model, Tensor(x0), t, noise=noise) for t in steps]
    cpu_sampling = GaussianDiffusion().p_mean_variance(model, x0, steps[0])

    counting = _CountingNumpy(1000)
    fake_backend = _CpuPretendingToBeGpu()
    fake_backend.array_module_of = lambda array: counting
    monkeypatch.setattr(gaussian, "backend", fake_backend)
    monkeypatch.setattr(fused_ops, "backend", fake_backend)
    diffusion = GaussianDiffusion()
    with runtime.cpu_kernels():  # the ε-MSE and q_sample kernels, as on a GPU
        tolerance = TOLERANCE["float" if dtype == np.float32 else "double"]
        for index, (t, expected) in enumerate(zip(steps, cpu)):
            before = (counting.step_copies, counting.schedule_copies)
            got = diffusion.training_losses(model, Tensor(x0), t, noise=noise)
            assert counting.step_copies - before[0] == 1
            if index > 0:
                assert counting.schedule_copies == before[1]  # kept from the first step
            for name in ("mse", "vb"):
                assert got[name].dtype == dtype
                np.testing.assert_allclose(got[name], expected[name], **tolerance)
            np.testing.assert_allclose(got["loss"].item(), expected["loss"].item(), **tolerance)
        assert counting.schedule_copies > 0
        sampling = diffusion.p_mean_variance(model, x0, steps[0])
        for name in ("mean", "log_variance", "pred_x0"):
            np.testing.assert_allclose(sampling[name].numpy(), cpu_sampling[name].numpy(), **tolerance)


# ---------------------------------------------------------------------------------------------
# on a GPU: the CuPy paths of fused_q_sample and EpsilonMSE
# ---------------------------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.gpu
@FAST
@given(batch=st.integers(1, 9), channels=st.integers(1, 3), height=st.integers(1, 30), width=st.integers(1, 30),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_gpu_paths_match_numpy(batch, channels, height, width, dtype, seed):
    tolerance = TOLERANCE["float" if dtype == np.float32 else "double"]
    rng = np.random.default_rng(seed)
    x0, noise, a, b = random_case(rng, batch, (channels, height, width), dtype)
    on_gpu = [backend.to_device(v, "gpu") for v in (x0, noise, a, b)]
    np.testing.assert_allclose(backend.to_numpy(fused_q_sample(*on_gpu)), q_sample_reference(x0, noise, a, b),
                               **tolerance)

    predicted = Tensor(backend.to_device(x0, "gpu"), requires_grad=True)
    loss = EpsilonMSE.apply(predicted, Tensor(on_gpu[1]))
    g = rng.standard_normal(batch).astype(dtype)
    loss.backward(backend.to_device(g, "gpu"))
    # CuPy's reduction and NumPy's pairwise sum round differently: compare both with the float64 sum
    expected = epsilon_mse_reference(x0.astype(np.float64), noise.astype(np.float64)).astype(dtype)
    np.testing.assert_allclose(loss.numpy(), expected, **tolerance)
    np.testing.assert_allclose(backend.to_numpy(predicted.grad), epsilon_mse_backward_reference(x0, noise, g),
                               **tolerance)


@needs_gpu
@pytest.mark.gpu
def test_gpu_training_loss_equals_cpu():
    from minisdit import functional as F

    def model(x, t, y):  # a fixed linear map with the [ε, v] layout
        return F.concat([0.7 * x, 0.1 * x], axis=1)

    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (6, 1, 9, 9))
    noise = rng.standard_normal(x0.shape)
    t = np.array([0, 1, 5, 500, 998, 999])
    diffusion = GaussianDiffusion()
    cpu = diffusion.training_losses(model, Tensor(x0), t, noise=noise)
    gpu = diffusion.training_losses(model, Tensor(backend.to_device(x0, "gpu")), t,
                                    noise=backend.to_device(noise, "gpu"))
    np.testing.assert_allclose(gpu["loss"].item(), cpu["loss"].item(), rtol=1e-12)
    assert backend.is_gpu_array(gpu["mse"]) and backend.is_gpu_array(gpu["vb"])  # left on the device
    np.testing.assert_allclose(backend.to_numpy(gpu["mse"]), cpu["mse"], rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(gpu["vb"]), cpu["vb"], rtol=1e-10)
