"""gradcheck itself: it must reject wrong backwards and accept right ones, in both of its modes.

Dense mode checks every entry of an input with at most ``max_dense`` entries; larger inputs are
checked along ``num_directions`` random unit directions.  Each wrong backward below is a mistake
that is easy to make by hand: a missing factor 2, summing a broadcast gradient over the wrong axes
(or averaging it), a transposed matrix.
"""
import numpy as np
import pytest

from minisdit import Function, Tensor
from minisdit import functional as F
from minisdit.autograd.gradcheck import GradcheckError, gradcheck


class SquareRight(Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return 2 * g * self.x


class SquareMissingFactor2(SquareRight):
    def backward(self, g):
        return g * self.x


class BroadcastAddRight(Function):
    """a (n, m) + b (m,): b's gradient is g summed over the rows."""

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g.sum(axis=0)


class BroadcastAddAveraged(BroadcastAddRight):
    def backward(self, g):
        return g, g.mean(axis=0)


class BroadcastAddWrongAxis(Function):
    """a (n, n) + b (n, 1) broadcasts b along columns; summing over rows instead is wrong."""

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g.sum(axis=0)[:, None]


class MatMulRight(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        return g @ self.b.T, self.a.T @ g


class MatMulTransposedGrad(MatMulRight):
    """Square matrices make the shapes agree, so only the values can reveal the mistake."""

    def backward(self, g):
        return g @ self.b, self.a.T @ g


class ScaleOneEntryWrong(Function):
    """y = 3x, with the gradient of a single entry off by 1e-3: found only by looking closely."""

    def forward(self, x):
        return 3 * x

    def backward(self, g):
        grad = 3 * g
        grad.reshape(-1)[-1] += 1e-3
        return grad


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_missing_factor_2_fails_dense():
    x = random((3, 4))
    with pytest.raises(GradcheckError, match="entry"):
        gradcheck(SquareMissingFactor2.apply, [x])
    report = gradcheck(SquareRight.apply, [x])
    assert report.checks == 12  # one per entry
    assert report.abs_error < 1e-8


def test_missing_factor_2_fails_along_random_directions():
    x = random((20, 10))  # 200 entries > max_dense: random-direction mode
    with pytest.raises(GradcheckError, match="random direction"):
        gradcheck(SquareMissingFactor2.apply, [x])
    report = gradcheck(SquareRight.apply, [x], num_directions=5)
    assert report.checks == 5
    assert report.worst_entry.startswith("random direction")


@pytest.mark.parametrize("wrong", [BroadcastAddAveraged, BroadcastAddWrongAxis])
@pytest.mark.parametrize("size", [3, 12], ids=["dense", "random-directions"])
def test_wrong_broadcast_reduction_fails(wrong, size):
    a = random((size, size), seed=1)
    b = random((size,) if wrong is BroadcastAddAveraged else (size, 1), seed=2)
    with pytest.raises(GradcheckError):
        gradcheck(wrong.apply, [a, b], max_dense=64)
    right = BroadcastAddRight.apply if wrong is BroadcastAddAveraged else F.add
    gradcheck(right, [a, b], max_dense=64)


@pytest.mark.parametrize("size", [4, 10], ids=["dense", "random-directions"])
def test_transposed_matmul_gradient_fails(size):
    a, b = random((size, size), seed=3), random((size, size), seed=4)
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(MatMulTransposedGrad.apply, [a, b])
    gradcheck(MatMulRight.apply, [a, b])


def test_an_error_in_one_entry_of_a_large_input_is_found():
    x = random((15, 15))  # 225 entries: random directions still see the one wrong entry
    with pytest.raises(GradcheckError):
        gradcheck(ScaleOneEntryWrong.apply, [x])
    with pytest.raises(GradcheckError, match=r"entry \(2, 2\)"):
        gradcheck(ScaleOneEntryWrong.apply, [random((3, 3))])


def test_report_without_raising_and_checking_a_subset():
    a, b = random((3, 3), seed=5), random((3,), seed=6)
    report = gradcheck(BroadcastAddAveraged.apply, [a, b], raise_on_failure=False)
    assert report.worst_input == 1
    assert report.abs_error > 1e-3
    assert "analytic" in str(report) and "numerical" in str(report)
    # the mistake is in b's gradient only, so checking a alone passes
    report = gradcheck(BroadcastAddAveraged.apply, [a, b], check=(0,))
    assert report.worst_input == 0
    assert report.checks == 9


def test_a_missing_gradient_counts_as_zero_and_fails():
    class ForgetsB(Function):
        def forward(self, a, b):
            self.b = b
            return a * b

        def backward(self, g):
            return g * self.b, None

    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(ForgetsB.apply, [random((2, 2)), random((2, 2), seed=1) + 3])


def test_inputs_become_float64_leaves():
    seen = []

    def spy(x):
        seen.append(x.dtype)
        return x * x

    gradcheck(spy, [np.ones((2, 2), dtype=np.float32)])
    gradcheck(spy, [Tensor(np.ones(3, dtype=np.float32))])
    assert set(seen) == {np.dtype(np.float64)}


# ---------------------------------------------------------------------------------------------
# reference=: the numerical gradient of another function with the same output
# ---------------------------------------------------------------------------------------------
class SquareForwardZeros(Function):
    """A forward that is not x^2 with the backward of x^2: only a reference can vouch for it."""

    def forward(self, x):
        self.x = x
        return np.zeros_like(x)

    def backward(self, g):
        return 2 * g * self.x


def square_reference(x):
    """x^2 on NumPy arrays, written independently of any Function."""
    return x ** 2


@pytest.mark.parametrize("shape", [(3, 4), (20, 10)], ids=["dense", "random-directions"])
def test_reference_supplies_the_numerical_gradient(shape):
    x = random(shape)
    # fn's own forward is constant, so differences of fn would say the gradient is 0
    with pytest.raises(GradcheckError):
        gradcheck(SquareForwardZeros.apply, [x])
    report = gradcheck(SquareForwardZeros.apply, [x], reference=square_reference)
    assert report.abs_error < 1e-8
    # and the reference must agree with the analytic gradient: x^3 does not
    with pytest.raises(GradcheckError):
        gradcheck(SquareRight.apply, [x], reference=lambda x: x ** 3)


@pytest.mark.parametrize("shape", [(3, 4), (20, 10)], ids=["dense", "random-directions"])
def test_reference_catches_a_wrong_gradient(shape):
    x = random(shape)
    with pytest.raises(GradcheckError):
        gradcheck(SquareMissingFactor2.apply, [x], reference=square_reference)
    a, b = random((4, 4), seed=3), random((4, 4), seed=4)
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(MatMulTransposedGrad.apply, [a, b], reference=lambda a, b: a @ b)
    gradcheck(MatMulRight.apply, [a, b], reference=lambda a, b: a @ b)


def test_reference_gets_float64_arrays_and_may_return_a_tensor():
    seen = []

    def reference(x):
        seen.append((type(x), x.dtype))
        return Tensor(x ** 2)

    gradcheck(SquareRight.apply, [np.ones((2, 2), dtype=np.float32)], reference=reference)
    assert set(seen) == {(np.ndarray, np.dtype(np.float64))}


def test_reference_of_another_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"reference returned shape \(3,\) but fn returned \(3, 1\)"):
        gradcheck(lambda x: F.reshape(x, (3, 1)), [random((3,))], reference=lambda x: x)


def test_a_nan_gradient_fails():
    class NanGradient(SquareRight):
        def backward(self, g):
            return np.full_like(g, np.nan)

    with pytest.raises(GradcheckError, match="nan"):
        gradcheck(NanGradient.apply, [random((2, 3))])
    with pytest.raises(GradcheckError):
        gradcheck(NanGradient.apply, [random((9, 9))])
