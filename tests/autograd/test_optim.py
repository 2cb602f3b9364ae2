"""AdamW, EMA and gradient clipping against their update equations written out in NumPy."""
import io
import inspect

import numpy as np
import pytest
from safetensors.numpy import load as safetensors_load, save as safetensors_save

from minisdit import backend, nn
from minisdit.autograd.optim import EMA, AdamW, clip_grad_norm, ema_decay_at
from minisdit.autograd.tensor import Tensor


def parameters(device="cpu", dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (4,), (2, 1, 3)]
    return [nn.Parameter(backend.to_device(rng.standard_normal(s).astype(dtype), device)) for s in shapes]


def gradients(step, seed=100):
    """Different gradients at every step (some tiny, some large), the same for every caller."""
    rng = np.random.default_rng(seed + step)
    return [rng.standard_normal(s) * scale for s, scale in zip([(3, 4), (4,), (2, 1, 3)], [1.0, 1e-3, 30.0])]


def set_gradients(params, grads, device="cpu"):
    for p, g in zip(params, grads):
        p.grad = backend.to_device(g.astype(p.dtype), device)


def adamw_reference(theta, grads_per_step, lr, beta1, beta2, eps, weight_decay):
    """AdamW in the textbook form of Loshchilov & Hutter with PyTorch's placement of eps."""
    theta = theta.copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads_per_step, start=1):
        theta = theta * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta, m, v


def test_defaults_are_pytorchs():
    defaults = {name: p.default for name, p in inspect.signature(AdamW).parameters.items() if name not in ("params", "fused")}
    assert defaults == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}


@pytest.mark.parametrize("hyper", [dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
                                   dict(lr=3e-3, betas=(0.5, 0.8), eps=1e-3, weight_decay=0.0),
                                   dict(lr=1e-1, betas=(0.0, 0.99), eps=1e-8, weight_decay=1.0)])
def test_adamw_matches_its_equations(device, hyper):
    params = parameters(device)
    start = [p.numpy().copy() for p in params]
    optimizer = AdamW(params, **hyper)
    steps = 6
    for step in range(steps):
        set_gradients(params, gradients(step), device)
        optimizer.step()
    for i, p in enumerate(params):
        expected, m, v = adamw_reference(start[i], [gradients(s)[i] for s in range(steps)], hyper["lr"],
                                         *hyper["betas"], hyper["eps"], hyper["weight_decay"])
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backend.to_numpy(optimizer.exp_avg[i]), m, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(backend.to_numpy(optimizer.exp_avg_sq[i]), v, rtol=1e-12, atol=1e-300)
        assert optimizer.steps[i] == steps


def test_first_adam_step_moves_each_weight_by_lr_against_its_gradient_sign():
    # at t = 1, m_hat / sqrt(v_hat) = g / |g| exactly, whatever the gradient's size
    params = parameters()
    start = [p.numpy().copy() for p in params]
    set_gradients(params, gradients(0))
    AdamW(params, lr=0.01, eps=0.0, weight_decay=0.0).step()
    for p, p0, g in zip(params, start, gradients(0)):
        np.testing.assert_allclose(p.numpy(), p0 - 0.01 * np.sign(g), rtol=1e-13, atol=1e-15)


def test_float32_parameters_stay_float32(device):
    params = parameters(device, dtype=np.float32)
    optimizer = AdamW(params, lr=1e-2)
    set_gradients(params, gradients(0), device)
    optimizer.step()
    assert all(p.dtype == np.float32 and p.device == device for p in params)
    assert all(m.dtype == np.float32 for m in optimizer.exp_avg)


def test_parameters_without_gradient_are_left_alone():
    params = parameters()
    before = params[1].numpy().copy()
    optimizer = AdamW(params, lr=0.1, weight_decay=0.5)
    set_gradients(params, gradients(0))
    params[1].grad = None
    optimizer.step()
    np.testing.assert_array_equal(params[1].numpy(), before)  # no decay either, as in PyTorch
    assert optimizer.steps == [1, 0, 1]
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def _savez_round_trip(state):
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


@pytest.mark.parametrize("round_trip", [_savez_round_trip, lambda state: safetensors_load(safetensors_save(state))],
                         ids=["npz", "safetensors"])
def test_state_dict_round_trip_continues_identically(round_trip):
    params = parameters(dtype=np.float32)
    optimizer = AdamW(params, lr=1e-2, betas=(0.8, 0.9), weight_decay=0.05)
    for step in range(3):
        set_gradients(params, gradients(step))
        optimizer.step()
    state = optimizer.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    assert int(state["state.0.step"]) == 3 and state["state.0.exp_avg"].dtype == np.float32

    resumed_params = [nn.Parameter(p.numpy().copy()) for p in params]
    resumed = AdamW(resumed_params)  # default hyperparameters: the checkpoint brings its own
    resumed.load_state_dict(round_trip(state))
    assert resumed.lr == 1e-2 and resumed.betas == (0.8, 0.9) and resumed.weight_decay == 0.05
    for step in range(3, 6):
        set_gradients(params, gradients(step))
        set_gradients(resumed_params, gradients(step))
        optimizer.step()
        resumed.step()
    for p, q in zip(params, resumed_params):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_load_state_dict_refuses_a_different_model():
    params = parameters()
    optimizer = AdamW(params)
    set_gradients(params, gradients(0))
    optimizer.step()
    with pytest.raises(ValueError, match="for 3 parameters but this optimizer has 2"):
        AdamW(parameters()[:2]).load_state_dict(optimizer.state_dict())
    with pytest.raises(KeyError, match="not an AdamW state dict"):
        AdamW(params).load_state_dict({"lr": np.array(0.1)})
    other = [nn.Parameter(np.zeros((4, 3))), nn.Parameter(np.zeros(4)), nn.Parameter(np.zeros((2, 1, 3)))]
    with pytest.raises(ValueError, match=r"shape mismatch for state.0.exp_avg: checkpoint has \(3, 4\)"):
        AdamW(other).load_state_dict(optimizer.state_dict())


def test_bad_hyperparameters_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(ValueError, match="lr >= 0"):
        AdamW(parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="betas in"):
        AdamW(parameters(), betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="takes Tensors"):
        AdamW([np.zeros(3)])


def test_adamw_accepts_a_module():
    layer = nn.Linear(2, 1, rng=0).to(dtype=np.float64)
    optimizer = AdamW(layer, lr=0.05, weight_decay=0.0)
    assert optimizer.params == layer.parameters()


def test_ema_follows_its_formula(device):
    params = parameters(device)
    start = [p.numpy().copy() for p in params]
    ema = EMA(params, decay=0.9)
    shadow = [s.copy() for s in start]
    rng = np.random.default_rng(7)
    for _ in range(4):
        for p in params:
            p.data = p.data + backend.to_device(rng.standard_normal(p.shape), device)
        ema.update()
        shadow = [0.9 * s + 0.1 * p.numpy() for s, p in zip(shadow, params)]
    for s, e in zip(shadow, ema.state_dict().values()):
        np.testing.assert_allclose(e, s, rtol=1e-14)
    ema.copy_to(params)
    for p, s in zip(params, shadow):
        np.testing.assert_allclose(p.numpy(), s, rtol=1e-14)
        assert p.device == device


def test_ema_warmup_decay_grows_to_the_set_decay():
    assert ema_decay_at(0.999, 0, warmup=True) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90, warmup=True) == pytest.approx(0.91)
    decays = [ema_decay_at(0.999, n, warmup=True) for n in range(20000)]
    assert np.all(np.diff(decays) >= 0) and decays[-1] == 0.999
    assert int(np.argmax(np.array(decays) == 0.999)) == 8990  # (10·0.999 − 1)/(1 − 0.999) = 8990 steps
    assert ema_decay_at(0.999, 0, warmup=False) == 0.999


def test_ema_update_with_a_given_decay():
    params = [Tensor(np.zeros(3))]
    ema = EMA(params, decay=0.9)
    params[0].data = np.ones(3)
    ema.update(decay=0.25)  # θ̄ = 0.25·0 + 0.75·1
    np.testing.assert_allclose(ema.shadow[0], 0.75, rtol=1e-15)


def test_ema_of_a_model_uses_its_names_and_round_trips():
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Linear(4, 2, rng=1))
    ema = EMA(model, decay=0.5)
    before = model.state_dict()
    for p in model.parameters():
        p.data = p.data + 1.0
    ema.update()
    state = ema.state_dict()
    assert list(state) == list(before)
    for name in before:
        np.testing.assert_allclose(state[name], before[name] + 0.5, rtol=1e-6)

    copy = nn.Sequential(nn.Linear(3, 4, rng=5), nn.Linear(4, 2, rng=6))
    copy.load_state_dict(state)  # an EMA state dict is a model state dict
    restored = EMA(copy, decay=0.5).load_state_dict(safetensors_load(safetensors_save(state)))
    fresh = nn.Sequential(nn.Linear(3, 4, rng=8), nn.Linear(4, 2, rng=9))
    restored.copy_to(fresh)
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, state[name])
    with pytest.raises(KeyError, match="missing"):
        ema.load_state_dict({"0.weight": state["0.weight"]})
    with pytest.raises(ValueError, match="EMA holds 4 parameters but the target has 2"):
        ema.copy_to(nn.Linear(3, 4))


def test_clip_grad_norm_scales_all_gradients_together(device):
    params = parameters(device)
    grads = gradients(0)
    set_gradients(params, grads, device)
    total = np.sqrt(sum((g ** 2).sum() for g in grads))
    assert clip_grad_norm(params, max_norm=1e9) == pytest.approx(total, rel=1e-12)
    for p, g in zip(params, grads):  # under the limit: untouched
        np.testing.assert_array_equal(backend.to_numpy(p.grad), g)
    assert clip_grad_norm(params, max_norm=2.0) == pytest.approx(total, rel=1e-12)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(backend.to_numpy(p.grad), g * 2.0 / (total + 1e-6), rtol=1e-12)
    assert clip_grad_norm(params, max_norm=2.0) == pytest.approx(2.0, rel=1e-6)


def test_clip_grad_norm_scales_a_shared_gradient_array_once():
    # the backward of a + b hands the very same array to both leaves
    a, b = nn.Parameter(np.ones(4)), nn.Parameter(np.ones(4))
    (a + b).backward(grad=np.full(4, 3.0))
    assert a.grad is b.grad
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert norm == pytest.approx(np.sqrt(2 * 4 * 9.0))
    np.testing.assert_allclose(a.grad, np.full(4, 3.0 / (norm + 1e-6)))
    np.testing.assert_allclose(b.grad, np.full(4, 3.0 / (norm + 1e-6)))
