"""The softmax attention core softmax(Q K^T / sqrt(d)) V: forward against NumPy, backward against
central differences in float64 (on every device), and both stable for logits whose exp overflows."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minisdit import Tensor, backend
from minisdit.autograd.gradcheck import gradcheck
from minisdit.autograd.nn_ops import scaled_dot_product_attention

seeds = st.integers(0, 2**32 - 1)
shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 5), st.integers(1, 4))  # N, heads, L, d


def plain_attention(q, k, v):
    """The textbook formula, exp without any shift: right wherever exp(logits) does not overflow."""
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True) @ v


def log_sum_exp_attention(q, k, v):
    """The same softmax through NumPy's log-sum-exp (logaddexp), independent of the op's row-max shift."""
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    return np.exp(logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)) @ v


def qkv(seed, shape, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(dtype) if i == 0 else rng.standard_normal(shape).astype(dtype)
            for i in range(3)]


@given(shape=shapes, seed=seeds)
def test_forward_matches_the_plain_formula(device, shape, seed):
    q, k, v = qkv(seed, shape)
    out = scaled_dot_product_attention(*(Tensor(backend.to_device(a, device)) for a in (q, k, v)))
    assert out.shape == shape and out.dtype == np.float64 and out.device == device
    np.testing.assert_allclose(out.numpy(), plain_attention(q, k, v), rtol=1e-12, atol=1e-12)


@given(shape=shapes, seed=seeds, scale=st.sampled_from([0.1, 1.0, 4.0]))
def test_gradient_matches_central_differences(device, shape, seed, scale):
    """dL/dQ, dL/dK, dL/dV in float64, random-projection loss; ``scale`` spreads the logits from a
    nearly uniform softmax (0.1) to a peaked one (4)."""
    gradcheck(scaled_dot_product_attention, [Tensor(backend.to_device(a, device)) for a in qkv(seed, shape, scale)])


def test_large_logits_forward_is_finite_and_right():
    """Logits of about +-1000: exp overflows in float64 (and beyond 88 in float32); the row-max shift does not."""
    q, k, v = qkv(1, (2, 3, 6, 4), scale=500.0)
    logits = q @ np.swapaxes(k, -1, -2) / 2.0
    assert np.abs(logits).max() > 710  # past float64's exp overflow: the plain formula cannot do this case
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(plain_attention(q, k, v)))
    expected = log_sum_exp_attention(q, k, v)
    np.testing.assert_allclose(scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).numpy(), expected,
                               rtol=1e-12, atol=1e-12)
    # float32 logits of ~100 (float32's exp overflows at 88.7): the float32 op agrees with float64
    q32, k32, v32 = qkv(2, (2, 3, 6, 4), scale=50.0, dtype=np.float32)
    assert np.abs(q32 @ np.swapaxes(k32, -1, -2)).max() / 2 > 89
    out32 = scaled_dot_product_attention(Tensor(q32), Tensor(k32), Tensor(v32)).numpy()
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, log_sum_exp_attention(*(a.astype(np.float64) for a in (q32, k32, v32))),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [50.0, 500.0])
def test_large_logits_backward_is_finite_and_right(scale):
    """The backward at saturated rows: float64 passes gradcheck (no inf - inf), and float32 matches it."""
    arrays = qkv(3, (1, 2, 5, 3), scale)
    gradcheck(scaled_dot_product_attention, arrays)
    upstream = np.random.default_rng(4).standard_normal((1, 2, 5, 3))

    def gradients(dtype):
        leaves = [Tensor(a.astype(dtype), requires_grad=True) for a in arrays]
        (scaled_dot_product_attention(*leaves) * Tensor(upstream.astype(dtype))).sum().backward()
        return [leaf.grad for leaf in leaves]

    for grad32, grad64 in zip(gradients(np.float32), gradients(np.float64)):
        assert grad32.dtype == np.float32 and np.all(np.isfinite(grad32))
        np.testing.assert_allclose(grad32, grad64, rtol=1e-3, atol=1e-3 * np.abs(grad64).max() + 1e-6)


def test_rows_of_weights_sum_to_one_so_constant_values_pass_through():
    q, k, _ = qkv(5, (1, 2, 4, 3), scale=30.0)
    v = np.broadcast_to(np.arange(3.0), (1, 2, 4, 3)).copy()  # the same value vector at every position
    np.testing.assert_allclose(scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).numpy(), v, atol=1e-12)


def test_shapes_must_agree():
    x = Tensor(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"q, k, v of one shape \(N, heads, L, d\)"):
        scaled_dot_product_attention(x, x, Tensor(np.zeros((1, 2, 3, 5))))
    with pytest.raises(ValueError, match=r"\(N, heads, L, d\)"):
        scaled_dot_product_attention(*[Tensor(np.zeros((2, 3, 4)))] * 3)
