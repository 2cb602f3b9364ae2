"""SelfAttention, the `attention="softmax"` layer: names, heads, initialisation, its formula written
out in NumPy, bidirectionality, and its gradient with respect to the input and every projection."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor
from minisdit.autograd.gradcheck import gradcheck_module
from minisdit.models.attention import SelfAttention, default_num_heads


@pytest.mark.parametrize("dim,heads", [(3, 1), (64, 1), (127, 1), (128, 2), (192, 3), (384, 6), (512, 8)])
def test_heads_are_width_64_and_at_least_one(dim, heads):
    assert default_num_heads(dim) == heads


def test_names_shapes_and_torch_default_initialisation():
    d = 192
    layer = SelfAttention(d, rng=0)
    assert layer.num_heads == 3
    assert {name: p.shape for name, p in layer.named_parameters()} == {
        name: (d, d) for name in ("query.weight", "key.weight", "value.weight", "output.weight")}
    for name, p in layer.named_parameters():
        # U(-1/sqrt(D), 1/sqrt(D)): nothing beyond the bound and, with D^2 = 36864 draws, the largest
        # |w| within 1% of it (P(all below 0.99 bound) = 0.99^36864 < 1e-160)
        largest = np.abs(p.numpy()).max()
        assert 0.99 / np.sqrt(d) < largest <= 1 / np.sqrt(d), name


def test_width_must_split_into_the_heads():
    with pytest.raises(ValueError, match="divisible by its number of heads; got D=10 with 3 heads"):
        SelfAttention(10, num_heads=3)
    with pytest.raises(ValueError, match=r"tokens of shape \(N, L, 8\)"):
        SelfAttention(8)(Tensor(np.zeros((2, 3, 5))))


def numpy_self_attention(x, wq, wk, wv, wo, heads):
    """Each head h on features h d .. (h + 1) d - 1, softmax over all positions, heads side by side."""
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    d = x.shape[-1] // heads
    outputs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        logits = q[..., part] @ np.swapaxes(k[..., part], 1, 2) / np.sqrt(d)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        outputs.append(weights / weights.sum(axis=-1, keepdims=True) @ v[..., part])
    return np.concatenate(outputs, axis=-1) @ wo.T


@pytest.mark.parametrize("dim,heads", [(6, 1), (6, 2), (6, 3), (128, None)])
def test_matches_the_formula_per_head(dim, heads):
    rng = np.random.default_rng(0)
    layer = SelfAttention(dim, num_heads=heads, rng=rng).to(dtype=np.float64)
    x = rng.standard_normal((2, 7, dim))
    weights = [getattr(layer, name).weight.numpy() for name in ("query", "key", "value", "output")]
    expected = numpy_self_attention(x, *weights, layer.num_heads)
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_every_token_sees_every_other():
    """No causal mask: changing the last token changes the output at the first (unlike TimeMix's scan)."""
    rng = np.random.default_rng(1)
    layer = SelfAttention(8, rng=rng).to(dtype=np.float64)
    x = rng.standard_normal((1, 5, 8))
    changed = x.copy()
    changed[0, -1] += 1.0
    difference = np.abs(layer(Tensor(changed)).numpy() - layer(Tensor(x)).numpy())
    assert np.all(difference.sum(axis=-1) > 1e-6)


@settings(max_examples=settings().max_examples // 3, deadline=None)
@given(batch=st.integers(1, 2), length=st.integers(1, 5), head_width=st.integers(1, 3), heads=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_gradient_input_and_every_projection(batch, length, head_width, heads, seed):
    rng = np.random.default_rng(seed)
    dim = head_width * heads
    layer = SelfAttention(dim, num_heads=heads, rng=rng).to(dtype=np.float64)
    for parameter in layer.parameters():  # larger than the init so the softmax is not nearly uniform
        parameter.data = rng.standard_normal(parameter.shape)
    x = rng.standard_normal((batch, length, dim))
    report = gradcheck_module(layer, [x], max_dense=100)
    assert report.checks == x.size + layer.num_parameters()  # every entry of the input and the weights
