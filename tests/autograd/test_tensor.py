"""The autograd engine: accumulation, graph release, no_grad, broadcasting, Python numbers, dtypes."""
import gc
import weakref

import numpy as np
import pytest

import minisdit
from minisdit import Tensor, backend, no_grad
from minisdit import functional as F


def leaf(values, device="cpu", dtype=np.float64):
    return Tensor(backend.to_device(np.asarray(values, dtype=dtype), device), requires_grad=True)


def grad_of(tensor):
    return backend.to_numpy(tensor.grad)


def test_gradients_accumulate_over_two_backward_calls(device):
    x = leaf([1.0, -2.0, 3.0], device)
    (x * 3.0).sum().backward()          # d/dx sum(3x) = 3
    (x * x).sum().backward()            # d/dx sum(x^2) = 2x, a separate graph
    np.testing.assert_allclose(grad_of(x), 3.0 + 2.0 * np.array([1.0, -2.0, 3.0]))
    x.zero_grad()
    assert x.grad is None


def test_a_tensor_used_twice_in_one_graph_gets_both_contributions(device):
    x = leaf([2.0, 5.0], device)
    y = x * x + F.exp(x) * x            # dy/dx = 2x + e^x (1 + x)
    y.sum().backward()
    values = np.array([2.0, 5.0])
    np.testing.assert_allclose(grad_of(x), 2 * values + np.exp(values) * (1 + values), rtol=1e-14)


def test_graph_is_released_after_backward():
    x = leaf(np.linspace(-1.0, 1.0, 6))
    hidden = F.exp(x)                   # its array is saved by Exp and by the Mul below
    saved = weakref.ref(hidden.data)
    loss = (hidden * hidden).sum()
    creator = weakref.ref(loss.creator)
    del hidden
    gc.collect()
    assert saved() is not None, "the graph must keep what backward needs until backward runs"
    loss.backward()
    assert loss.creator is None
    assert creator() is None
    assert saved() is None, "backward must free the arrays saved for it"
    np.testing.assert_allclose(x.grad, 2 * np.exp(2 * np.linspace(-1.0, 1.0, 6)), rtol=1e-14)


def test_no_grad_records_nothing(device):
    x = leaf([1.0, 2.0], device)
    with no_grad():
        assert not minisdit.is_grad_enabled()
        y = F.exp(x * 2.0).sum()
    assert minisdit.is_grad_enabled()
    assert not y.requires_grad and y.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()

    @no_grad()
    def decorated(t):
        return t * t

    z = decorated(x)
    assert not z.requires_grad and z.creator is None
    assert minisdit.is_grad_enabled()


def test_no_grad_restores_the_previous_state_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert minisdit.is_grad_enabled()
    with no_grad():
        with no_grad():
            pass
        assert not minisdit.is_grad_enabled()
    assert minisdit.is_grad_enabled()


def test_no_grad_decorator_survives_recursion():
    @no_grad()
    def countdown(n):
        assert not minisdit.is_grad_enabled()
        return countdown(n - 1) if n else 0

    countdown(3)
    assert minisdit.is_grad_enabled()


def test_constants_get_no_gradient_and_no_graph(device):
    x = leaf([1.0, 2.0], device)
    constant = Tensor(backend.to_device(np.array([3.0, 4.0]), device))
    y = (x * constant).sum()
    y.backward()
    assert constant.grad is None
    assert (constant * constant).creator is None


@pytest.mark.parametrize("shape_a, shape_b", [((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                              ((1,), (5, 1)), ((), (2, 3))])
def test_broadcasting_is_reduced_back_to_each_input_shape(device, shape_a, shape_b):
    a, b = leaf(np.ones(shape_a), device), leaf(np.ones(shape_b), device)
    out = a * 2.0 + b
    out.sum().backward()
    assert a.grad.shape == shape_a and b.grad.shape == shape_b
    output_size = out.size
    # each entry of an input was used output_size / input_size times
    np.testing.assert_allclose(grad_of(a), np.full(shape_a, 2.0 * output_size / a.size))
    np.testing.assert_allclose(grad_of(b), np.full(shape_b, float(output_size / b.size)))


def test_scalar_ops_with_python_numbers(device):
    values = np.array([0.5, 2.0, -4.0])
    cases = {
        "x + 1.5": (lambda x: x + 1.5, values + 1.5, np.ones(3)),
        "1.5 + x": (lambda x: 1.5 + x, 1.5 + values, np.ones(3)),
        "x - 2": (lambda x: x - 2, values - 2, np.ones(3)),
        "2 - x": (lambda x: 2 - x, 2 - values, -np.ones(3)),
        "3 * x": (lambda x: 3 * x, 3 * values, 3 * np.ones(3)),
        "x * 3": (lambda x: x * 3, values * 3, 3 * np.ones(3)),
        "x / 4": (lambda x: x / 4, values / 4, np.full(3, 0.25)),
        "4 / x": (lambda x: 4 / x, 4 / values, -4 / values ** 2),
        "x ** 2": (lambda x: x ** 2, values ** 2, 2 * values),
        "-x": (lambda x: -x, -values, -np.ones(3)),
    }
    for name, (fn, value, gradient) in cases.items():
        x = leaf(values, device)
        y = fn(x)
        np.testing.assert_allclose(y.numpy(), value, rtol=1e-15, err_msg=name)
        y.sum().backward()
        np.testing.assert_allclose(grad_of(x), gradient, rtol=1e-15, err_msg=name)


def test_float32_stays_float32_through_ops_and_gradients(device):
    x = leaf([0.5, 1.5, 2.5], device, dtype=np.float32)
    w = leaf(np.ones((3, 2)), device, dtype=np.float32)
    y = F.silu(x * 2.0 + 1) / 3.0 - np.float64(0.5) * x          # Python and NumPy float64 scalars
    y = y + np.ones(3, dtype=np.float64)                            # a float64 array constant
    z = F.matmul(F.reshape(y, (1, 3)), w).mean()
    assert y.dtype == np.float32 and z.dtype == np.float32
    z.backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_full_reductions_give_0d_arrays():
    x = Tensor(np.arange(6.0).reshape(2, 3))
    for value in (x.sum(), x.mean(), x.max(), F.mse(x, x * 2.0)):
        assert isinstance(value.data, np.ndarray) and value.shape == ()


def test_backward_needs_a_gradient_for_a_non_scalar(device):
    x = leaf([1.0, 2.0], device)
    y = x * 3.0
    with pytest.raises(RuntimeError, match="pass grad="):
        y.backward()
    y.backward(grad=Tensor(backend.to_device(np.array([1.0, 10.0]), device)))
    np.testing.assert_allclose(grad_of(x), [3.0, 30.0])


def test_retain_grad_keeps_an_intermediate_gradient():
    x = leaf([1.0, 2.0])
    hidden = (x * 3.0).retain_grad()
    (hidden * hidden).sum().backward()
    np.testing.assert_allclose(hidden.grad, 2 * 3.0 * np.array([1.0, 2.0]))
    np.testing.assert_allclose(x.grad, 18.0 * np.array([1.0, 2.0]))


def test_detach_and_conversion():
    x = leaf([1.0, 2.0])
    d = x.detach()
    assert not d.requires_grad and d.creator is None
    assert x.to(dtype=np.float32).dtype == np.float32
    assert x.numpy().tolist() == [1.0, 2.0]
    assert Tensor(3).dtype == np.float32 and Tensor([1, 2]).dtype == np.float32
    assert Tensor([1.0, 2.0], device="cpu").dtype == np.float32  # the same default with a device
    assert Tensor([1.0, 2.0], dtype=np.float64, device="cpu").dtype == np.float64
    assert Tensor(2.0).item() == 2.0
    assert x.device == "cpu" and len(x) == 2 and "requires_grad=True" in repr(x)
