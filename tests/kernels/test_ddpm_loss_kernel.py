"""minisdit/kernels/ddpm_loss.cu (q_sample, the squared error of the ε-MSE and its backward) against the NumPy
references in minisdit.diffusion: the .cu source run on the CPU via cuda.cpu_kernels (odd sizes,
several blocks, a grid too small so that the grid-stride loop wraps), compiled with NVRTC, the
device branch of the diffusion run on the CPU build of the kernels, and on a GPU."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor, backend
from minisdit.kernels import runtime as cuda
from minisdit.diffusion import (EpsilonMSE, GaussianDiffusion, epsilon_mse_backward_reference,
                                epsilon_mse_reference, fused_q_sample, q_sample_reference, squared_error_reference)

FAST = settings(max_examples=settings().max_examples * 5 // 6, deadline=None)
SCALARS = {"float": np.float32, "double": np.float64}
TOLERANCE = {"float": dict(rtol=2e-6, atol=1e-6), "double": dict(rtol=1e-13, atol=1e-14)}
# (batch, per-sample shape): odd sizes, size-1 axes, and enough elements for several blocks
SHAPES = [(1, (1, 1, 1)), (3, (1, 5, 7)), (7, (3, 11, 13)), (5, (2, 1, 9)), (300, (1, 1, 1)), (2, (3, 28, 28))]
LAUNCHES = [(None, 64), (2, 32), (1, 256)]  # None: enough blocks for one thread per item
KERNELS = ("ddpm_q_sample", "ddpm_squared_error", "ddpm_epsilon_mse_backward")


def launch(items, blocks, threads):
    return ((items + threads - 1) // threads if blocks is None else blocks,), (threads,)


def random_case(rng, batch, sample_shape, dtype):
    shape = (batch,) + sample_shape
    alpha_bar = GaussianDiffusion().alphas_cumprod[rng.integers(0, 1000, batch)]
    return (rng.uniform(-1, 1, shape).astype(dtype), rng.standard_normal(shape).astype(dtype),
            np.sqrt(alpha_bar).astype(dtype), np.sqrt(1 - alpha_bar).astype(dtype))


@pytest.mark.parametrize("scalar_t", list(SCALARS))
@pytest.mark.parametrize("batch,sample_shape", SHAPES)
@pytest.mark.parametrize("blocks,threads", LAUNCHES)
def test_q_sample_kernel_on_cpu_matches_numpy(scalar_t, batch, sample_shape, blocks, threads):
    dtype = SCALARS[scalar_t]
    x0, noise, a, b = random_case(np.random.default_rng(batch), batch, sample_shape, dtype)
    x_t = np.full_like(x0, np.nan)
    kernel = cuda.cpu_kernels("ddpm_loss.cu", {"scalar_t": scalar_t})["ddpm_q_sample"]
    grid, block = launch(x0.size, blocks, threads)
    kernel(grid, block, (x0, noise, a, b, x_t, np.int32(batch), np.int32(x0[0].size)))
    np.testing.assert_allclose(x_t, q_sample_reference(x0, noise, a, b), **TOLERANCE[scalar_t])


@pytest.mark.parametrize("scalar_t", list(SCALARS))
@pytest.mark.parametrize("batch,sample_shape", SHAPES)
@pytest.mark.parametrize("blocks,threads", LAUNCHES)
def test_epsilon_mse_kernels_on_cpu_match_numpy(scalar_t, batch, sample_shape, blocks, threads):
    dtype = SCALARS[scalar_t]
    rng = np.random.default_rng(batch + 1)
    predicted, target = (rng.standard_normal((batch,) + sample_shape).astype(dtype) for _ in range(2))
    grad_loss = rng.standard_normal(batch).astype(dtype)
    kernels = cuda.cpu_kernels("ddpm_loss.cu", {"scalar_t": scalar_t})
    sizes = (np.int32(batch), np.int32(predicted[0].size))

    squared_error = np.full_like(predicted, np.nan)
    kernels["ddpm_squared_error"](*launch(predicted.size, blocks, threads),
                                  (predicted, target, squared_error, np.int64(predicted.size)))
    np.testing.assert_allclose(squared_error, squared_error_reference(predicted, target), **TOLERANCE[scalar_t])
    # the per-sample mean as EpsilonMSE takes it, with the array module's reduction
    np.testing.assert_allclose(squared_error.reshape(batch, -1).mean(axis=1), epsilon_mse_reference(predicted, target),
                               **TOLERANCE[scalar_t])

    grad = np.full_like(predicted, np.nan)
    kernels["ddpm_epsilon_mse_backward"](*launch(predicted.size, blocks, threads),
                                         (predicted, target, grad_loss, grad, *sizes))
    np.testing.assert_allclose(grad, epsilon_mse_backward_reference(predicted, target, grad_loss),
                               **TOLERANCE[scalar_t])


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


@pytest.mark.skipif(not cuda.nvrtc_available(), reason="libnvrtc not installed: pip install nvidia-cuda-nvrtc-cu12")
@pytest.mark.parametrize("scalar_t", list(SCALARS))
def test_kernels_compile_with_nvrtc(scalar_t):
    ptx = cuda.nvrtc_compile(cuda.kernel_source("ddpm_loss.cu"), {"scalar_t": scalar_t}, name="ddpm_loss.cu")
    for name in KERNELS:
        assert f".entry {name}(" in ptx
    if scalar_t == "float":
        # the float variant must not fall back to double arithmetic (10-60x slower on most GPUs)
        assert re.search(r"\.f64\b", ptx) is None


def test_every_kernel_is_tested():
    assert set(cuda.kernel_signatures(cuda.kernel_source("ddpm_loss.cu"))) == set(KERNELS)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_dispatch_launches_the_kernels_correctly(monkeypatch, dtype):
    """The CuPy branch of fused_q_sample and EpsilonMSE (argument order, sizes, launch shape), run with
    the CPU build of the same kernels in place of CuPy's, so that it is checked without a GPU."""
    from minisdit.diffusion import fused_ops as diffusion

    monkeypatch.setattr(diffusion, "backend", _CpuPretendingToBeGpu())
    monkeypatch.setattr(diffusion.cuda, "gpu_function",
                        lambda file, name, defines: cuda.cpu_kernels(file, defines)[name])
    scalar_t = "float" if dtype == np.float32 else "double"
    rng = np.random.default_rng(5)
    x0, noise, a, b = random_case(rng, 5, (2, 7, 3), dtype)
    np.testing.assert_allclose(fused_q_sample(x0, noise, a, b), q_sample_reference(x0, noise, a, b),
                               **TOLERANCE[scalar_t])
    function = EpsilonMSE()
    function.needs_input_grad = (True, True)
    loss = function.forward(x0[:, :1], noise[:, :1])  # a channel slice: not contiguous
    assert loss.dtype == dtype
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
    monkeypatch.setattr(fused_ops.cuda, "gpu_function",
                        lambda file, name, defines: cuda.cpu_kernels(file, defines)[name])
    diffusion = GaussianDiffusion()
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
