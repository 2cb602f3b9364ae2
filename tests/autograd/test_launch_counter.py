"""The launch counter (minisdit/kernel_checks/launches.py): what it counts, and that Linear and
Conv2d are one GEMM per product, forward and backward."""
import numpy as np

from minisdit import Tensor, backend
from minisdit.autograd import nn
from minisdit.kernel_checks.launches import PHASES, DeviceArray, LaunchCounter, count_training_step


def device_tensor(rng, shape, requires_grad=False):
    return Tensor(rng.standard_normal(shape).astype(np.float32).view(DeviceArray), requires_grad=requires_grad)


def test_each_array_operation_is_one_launch_and_views_are_none():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32).view(DeviceArray)
    counter = LaunchCounter()
    with counter.counting():
        xp = backend.array_module_of(a)
        a + a
        a.mean(axis=0)
        a.T
        a.reshape(4, 3)  # contiguous: a view
        a.T.reshape(-1)  # a transposed view flattened: a copy
        a @ a.T
        xp.zeros((2, 2))
        xp.empty((2, 2))
        a[np.array([0, 2])]
    assert counter.by_kind() == {"copy": 1, "elementwise": 1, "fill": 1, "gather": 1, "gemm": 1, "reduction": 1}
    assert counter.launches() == 6


def test_counting_leaves_the_library_as_it_was():
    module_of = backend.array_module_of
    with LaunchCounter().counting():
        pass
    assert backend.array_module_of is module_of
    assert backend.array_module_of(np.zeros(2).view(DeviceArray)) is np


def test_linear_is_one_gemm_forward_and_two_backward():
    """On (N, L, D) rows: one 2-D product (not a batched one) and the bias added in place; backward
    the input and weight gradients as one product each and the bias gradient as one reduction."""
    rng = np.random.default_rng(0)
    layer = nn.Linear(6, 5, rng=0)
    for parameter in layer.parameters():
        parameter.data = parameter.data.view(DeviceArray)
    x = device_tensor(rng, (4, 3, 6), requires_grad=True)
    counter = LaunchCounter()
    with counter.counting():
        y = layer(x)
        with counter.phase("backward"):
            y.backward(Tensor(np.ones(y.shape, np.float32).view(DeviceArray)))
    assert counter.by_kind("forward") == {"elementwise": 1, "gemm": 1}
    assert counter.by_kind("backward") == {"gemm": 2, "reduction": 1}
    np.testing.assert_allclose(layer.weight.grad, np.ones((4 * 3, 5), np.float32).T @ x.data.reshape(-1, 6), rtol=1e-6)


def test_conv2d_is_one_gemm_for_the_whole_batch():
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(2, 3, 3, padding=1, rng=0)
    for parameter in layer.parameters():
        parameter.data = parameter.data.view(DeviceArray)
    counter = LaunchCounter()
    with counter.counting():
        layer(device_tensor(rng, (4, 2, 5, 5)))
    assert counter.by_kind("forward")["gemm"] == 1


def test_a_training_step_is_counted_by_phase():
    counter = count_training_step("tiny", batch_size=2)
    assert all(counter.launches(phase) > 0 for phase in PHASES)
    assert counter.by_kind("forward")["raw kernel"] > 0  # the LIF, WKV and loss kernels, run as on a GPU
    assert counter.launches() == sum(counter.launches(phase) for phase in PHASES)
