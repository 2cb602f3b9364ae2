"""Surrogate gradients: formulas, defaults, and derivative = d(primitive)/dx."""
import math

import numpy as np
import pytest

import minisdit
from minisdit.snn import surrogate
from minisdit.snn.surrogate import ATan, Erf, PiecewiseQuadratic, Sigmoid, SoftSign
from minisdit.autograd.gradcheck import gradcheck

ALL = [ATan, Sigmoid, PiecewiseQuadratic, SoftSign, Erf]


def test_defaults_ids_and_names_follow_spikingjelly():
    assert [cls().alpha for cls in ALL] == [2.0, 4.0, 1.0, 2.0, 2.0]
    assert [cls().id for cls in ALL] == [0, 1, 2, 3, 4]
    assert [cls().name for cls in ALL] == ["ATan", "Sigmoid", "PiecewiseQuadratic", "SoftSign", "Erf"]
    assert surrogate.SURROGATES == tuple(ALL)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("alpha_scale", [0.5, 1.0, 3.0])
def test_derivative_is_the_numerical_derivative_of_the_primitive(cls, alpha_scale):
    g = cls(alpha=cls().alpha * alpha_scale)
    # a dense grid that does not land on PiecewiseQuadratic's kinks (x = 0, +-1/alpha) within eps
    x = np.linspace(-3.0, 3.0, 6001) + 1e-4 / 3
    eps = 1e-6
    numerical = (g.primitive(x + eps) - g.primitive(x - eps)) / (2 * eps)
    np.testing.assert_allclose(g.derivative(x), numerical, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls", ALL)
def test_primitive_is_a_smooth_step(cls):
    g = cls()
    assert g.primitive(np.array([0.0]))[0] == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_allclose(g.primitive(np.array([-1e6, 1e6])), [0.0, 1.0], atol=1e-6)
    x = np.linspace(-5, 5, 1001)
    assert np.all(np.diff(g.primitive(x)) >= 0)


def test_derivative_at_zero_matches_the_formulas():
    # g'(0) read off each docstring formula: ATan alpha/2, Sigmoid alpha/4, PiecewiseQuadratic alpha,
    # SoftSign alpha/2, Erf alpha/sqrt(pi)
    zero = np.zeros(1)
    assert ATan(alpha=3.0).derivative(zero)[0] == pytest.approx(1.5)
    assert Sigmoid(alpha=3.0).derivative(zero)[0] == pytest.approx(0.75)
    assert PiecewiseQuadratic(alpha=3.0).derivative(zero)[0] == pytest.approx(3.0)
    assert SoftSign(alpha=3.0).derivative(zero)[0] == pytest.approx(1.5)
    assert Erf(alpha=3.0).derivative(zero)[0] == pytest.approx(3.0 / math.sqrt(math.pi))
    # and away from zero, e.g. ATan(2) at x = 1/pi: (2/2) / (1 + 1) = 0.5; PiecewiseQuadratic(2) is 0 beyond 1/2
    assert ATan().derivative(np.array([1 / math.pi]))[0] == pytest.approx(0.5)
    assert PiecewiseQuadratic(alpha=2.0).derivative(np.array([0.6]))[0] == 0.0


@pytest.mark.parametrize("cls", ALL)
def test_float32_stays_float32(cls):
    x = np.linspace(-2, 2, 7, dtype=np.float32)
    assert cls().primitive(x).dtype == np.float32
    assert cls().derivative(x).dtype == np.float32


@pytest.mark.parametrize("cls", ALL)
def test_spike_node_is_heaviside_forward_and_surrogate_backward(cls):
    g = cls()
    data = np.array([-1.0, -1e-12, 0.0, 1e-12, 0.7])
    x = minisdit.Tensor(data, requires_grad=True)
    spikes = g(x)
    np.testing.assert_array_equal(spikes.numpy(), [0, 0, 1, 1, 1])  # Theta(0) = 1
    upstream = np.array([0.3, -1.0, 2.0, 0.5, 1.5])
    spikes.backward(upstream)
    np.testing.assert_allclose(x.grad, upstream * g.derivative(data), rtol=1e-15)


@pytest.mark.parametrize("cls", ALL)
def test_smooth_spike_node_passes_gradcheck(cls):
    rng = np.random.default_rng(cls().id)
    gradcheck(lambda x: cls()(x, spiking=False), [rng.normal(size=(3, 5)) * 0.7])


def test_bad_surrogates_raise_clear_errors():
    with pytest.raises(ValueError, match="alpha > 0"):
        ATan(alpha=0.0)
    with pytest.raises(TypeError, match="instance"):
        surrogate.check_surrogate(ATan)
    with pytest.raises(TypeError, match="ATan"):
        surrogate.check_surrogate("atan")
    with pytest.raises(AttributeError, match="immutable"):
        ATan().alpha = 3.0


def test_equality_and_hash_are_by_type_and_alpha():
    assert ATan() == ATan(alpha=2.0) and hash(ATan()) == hash(ATan(2.0))
    assert ATan() != ATan(alpha=3.0)
    assert ATan(alpha=2.0) != SoftSign(alpha=2.0)
    assert repr(Sigmoid()) == "Sigmoid(alpha=4.0)"
