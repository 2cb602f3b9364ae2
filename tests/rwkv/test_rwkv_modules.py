"""TimeMix and ChannelMix: names, initialisation (docs/DESIGN.md §3), forward equations, gradients."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import Tensor
from minisdit.rwkv import ChannelMix, TimeMix, wkv_quadratic_numpy
from minisdit.autograd import gradcheck as testing

TIME_MIX_NAMES = ["time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r",
                  "key.weight", "value.weight", "receptance.weight", "output.weight"]
CHANNEL_MIX_NAMES = ["time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight"]


# ---------------------------------------------------------------------------------------------
# names and shapes
# ---------------------------------------------------------------------------------------------
def test_parameter_names_and_shapes():
    dim = 6
    time_mix = TimeMix(dim, layer_id=1, depth=4, rng=0)
    channel_mix = ChannelMix(dim, layer_id=1, depth=4, rng=0)
    assert list(time_mix.state_dict()) == TIME_MIX_NAMES
    assert list(channel_mix.state_dict()) == CHANNEL_MIX_NAMES
    for name, value in time_mix.state_dict().items():
        assert value.shape == ((dim,) if name.startswith("time_") else (dim, dim)), name
    shapes = {name: value.shape for name, value in channel_mix.state_dict().items()}
    assert shapes == {"time_mix_k": (dim,), "time_mix_r": (dim,), "key.weight": (4 * dim, dim),
                      "receptance.weight": (dim, dim), "value.weight": (dim, 4 * dim)}
    for module in (time_mix, channel_mix):
        assert all(p.dtype == np.float32 for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------
def design_vectors(dim, layer_id, depth):
    """docs/DESIGN.md §3, one channel at a time."""
    rho0 = layer_id / (depth - 1)
    rho1 = 1 - layer_id / depth
    decay, first, mix_k, mix_v, mix_r = [], [], [], [], []
    for h in range(dim):
        decay.append(-5 + 8 * (h / (dim - 1)) ** (0.7 + 1.3 * rho0))
        first.append(math.log(0.3) + 0.5 * (((h + 1) % 3) - 1))
        mix_k.append((h / dim) ** rho1)
        mix_v.append((h / dim) ** rho1 + 0.3 * rho0)
        mix_r.append((h / dim) ** (0.5 * rho1))
    return dict(time_decay=decay, time_first=first, time_mix_k=mix_k, time_mix_v=mix_v, time_mix_r=mix_r)


@pytest.mark.parametrize("dim,layer_id,depth", [(8, 0, 2), (8, 1, 2), (7, 0, 4), (7, 1, 4), (7, 2, 4), (12, 3, 8)])
def test_rwkv_vectors_follow_the_design(dim, layer_id, depth):
    expected = design_vectors(dim, layer_id, depth)
    time_mix = TimeMix(dim, layer_id, depth, rng=0).state_dict()
    for name, values in expected.items():
        np.testing.assert_allclose(time_mix[name], values, rtol=1e-6, atol=1e-7, err_msg=name)
    channel_mix = ChannelMix(dim, layer_id, depth, rng=0).state_dict()
    rho1 = 1 - layer_id / depth
    shared = [(h / dim) ** rho1 for h in range(dim)]
    np.testing.assert_allclose(channel_mix["time_mix_k"], shared, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(channel_mix["time_mix_r"], shared, rtol=1e-6, atol=1e-7)


def test_decay_spans_minus_five_to_three_and_first_zigzags():
    vectors = TimeMix(10, layer_id=1, depth=4, rng=0).state_dict()
    assert vectors["time_decay"][0] == pytest.approx(-5.0) and vectors["time_decay"][-1] == pytest.approx(3.0)
    assert np.all(np.diff(vectors["time_decay"]) > 0)
    # ((h+1) mod 3) - 1 cycles 0, 1, -1
    np.testing.assert_allclose(vectors["time_first"][:3] - math.log(0.3), [0.0, 0.5, -0.5], atol=1e-6)


@pytest.mark.parametrize("init,bound", [("torch", lambda fan_in, fan_out: 1 / math.sqrt(fan_in)),
                                        ("xavier", lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out)))])
def test_projection_init(init, bound):
    dim = 32
    for module in (TimeMix(dim, 0, 4, rng=1, projection_init=init), ChannelMix(dim, 0, 4, rng=1, projection_init=init)):
        for name in ("key", "value", "receptance"):
            layer = getattr(module, name)
            assert layer.bias is None
            limit = bound(layer.in_features, layer.out_features)
            weight = layer.weight.numpy()
            # uniform on (-limit, limit): inside the bounds, and reaching close to them
            assert np.abs(weight).max() <= limit and np.abs(weight).max() > 0.9 * limit, (name, init)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="depth >= 2"):
        TimeMix(8, 0, 1)
    with pytest.raises(ValueError, match="layer_id"):
        ChannelMix(8, 4, 4)
    with pytest.raises(ValueError, match="projection_init"):
        TimeMix(8, 0, 2, projection_init="kaiming")
    with pytest.raises(ValueError, match=r"\(N, L, 8\)"):
        TimeMix(8, 0, 2)(Tensor(np.zeros((2, 3, 7), np.float32)))


# ---------------------------------------------------------------------------------------------
# forward: the equations of docs/DESIGN.md §3 in plain NumPy
# ---------------------------------------------------------------------------------------------
def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def shifted_tokens(z):
    """z_{n-1}, with z_{-1} = 0."""
    previous = np.zeros_like(z)
    previous[:, 1:] = z[:, :-1]
    return previous


def time_mix_reference(p, z):
    previous = shifted_tokens(z)
    x_k = p["time_mix_k"] * z + (1 - p["time_mix_k"]) * previous
    x_v = p["time_mix_v"] * z + (1 - p["time_mix_v"]) * previous
    x_r = p["time_mix_r"] * z + (1 - p["time_mix_r"]) * previous
    k, v, r = x_k @ p["key.weight"].T, x_v @ p["value.weight"].T, x_r @ p["receptance.weight"].T
    return (sigmoid(r) * wkv_quadratic_numpy(p["time_decay"], p["time_first"], k, v)) @ p["output.weight"].T


def channel_mix_reference(p, z):
    previous = shifted_tokens(z)
    x_k = p["time_mix_k"] * z + (1 - p["time_mix_k"]) * previous
    x_r = p["time_mix_r"] * z + (1 - p["time_mix_r"]) * previous
    hidden = np.maximum(x_k @ p["key.weight"].T, 0) ** 2
    return sigmoid(x_r @ p["receptance.weight"].T) * (hidden @ p["value.weight"].T)


def randomised(module, rng):
    """Move the vectors off their init so that every term matters (init has time_mix_k[0] = 0 etc.)."""
    module.to(dtype=np.float64)
    for name, parameter in module.named_parameters():
        if name.startswith("time_"):
            parameter.data = parameter.data + rng.uniform(-0.3, 0.3, parameter.shape)
    return module


@pytest.mark.parametrize("module_class,reference", [(TimeMix, time_mix_reference), (ChannelMix, channel_mix_reference)])
def test_forward_follows_the_equations(module_class, reference):
    rng = np.random.default_rng(2)
    module = randomised(module_class(6, layer_id=1, depth=4, rng=3), rng)
    z = rng.standard_normal((2, 9, 6))
    output = module(Tensor(z))
    assert output.shape == (2, 9, 6)
    np.testing.assert_allclose(output.numpy(), reference(module.state_dict(), z), rtol=1e-10, atol=1e-12)


def test_token_shift_is_causal():
    """Changing token n changes no output before n (both WKV and the shift look only backwards)."""
    rng = np.random.default_rng(4)
    for module in (TimeMix(5, 0, 2, rng=0), ChannelMix(5, 0, 2, rng=0)):
        module.to(dtype=np.float64)
        z = rng.standard_normal((1, 8, 5))
        changed = z.copy()
        changed[0, 5] += 1.0
        before, after = module(Tensor(z)).numpy(), module(Tensor(changed)).numpy()
        np.testing.assert_array_equal(before[0, :5], after[0, :5])
        assert np.abs(before[0, 5:] - after[0, 5:]).max() > 0


# ---------------------------------------------------------------------------------------------
# gradients, input and every parameter
# ---------------------------------------------------------------------------------------------
def gradcheck_module(module, x, **options):
    return testing.gradcheck_module(module, [x], **options)


@settings(max_examples=settings().max_examples * 2 // 5, deadline=None)
@given(batch=st.integers(1, 2), length=st.integers(1, 6), dim=st.integers(2, 4), layer_id=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("module_class", [TimeMix, ChannelMix])
def test_module_gradients(module_class, batch, length, dim, layer_id, seed):
    rng = np.random.default_rng(seed)
    module = randomised(module_class(dim, layer_id, depth=4, rng=rng), rng)
    report = gradcheck_module(module, rng.standard_normal((batch, length, dim)))
    # every input and every parameter has at most 64 entries, so each entry was checked
    assert report.checks == batch * length * dim + module.num_parameters()
