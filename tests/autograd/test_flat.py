"""minisdit/autograd/flat.py: parameters and gradients as views of flat buffers, and AdamW, EMA and
clipping over them giving bit for bit what the same updates give parameter by parameter."""
import numpy as np
import pytest

from minisdit import Tensor, nn
from minisdit.autograd.flat import ALIGNMENT, FlatParameters
from minisdit.autograd.optim import EMA, AdamW, adamw_step_reference, clip_grad_norm, ema_update_reference


def small_model(dtype=np.float32):
    return nn.Sequential(nn.Linear(5, 7, rng=1), nn.Linear(7, 3, rng=2)).to(dtype=dtype)


def loss_of(model, seed):
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((4, 5)).astype(np.float32))
    projection = Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    return (model(x) * projection).sum()


def test_parameters_and_gradients_are_views_at_aligned_offsets():
    model = small_model()
    before = [p.numpy().copy() for p in model.parameters()]
    flat = FlatParameters(model.parameters())
    for p, value, offset in zip(model.parameters(), before, flat.offsets):
        np.testing.assert_array_equal(p.data, value)
        assert p.data.base is flat.data and (offset * flat.dtype.itemsize) % ALIGNMENT == 0
    flat.zero_grad()
    loss_of(model, 0).backward()
    views = [p.grad for p in model.parameters()]
    assert all(g.base is flat.grad for g in views)
    loss_of(model, 1).backward()  # accumulates into the same arrays
    assert all(p.grad is g for p, g in zip(model.parameters(), views))


def test_gradients_accumulate_as_without_flat_buffers():
    plain, flat_model = small_model(), small_model()
    FlatParameters(flat_model.parameters()).zero_grad()
    for model in (plain, flat_model):
        loss_of(model, 0).backward()
        loss_of(model, 1).backward()
    for a, b in zip(plain.parameters(), flat_model.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)


def test_zero_grad_is_one_fill_and_leaves_every_grad_none():
    model = small_model()
    flat = FlatParameters(model.parameters())
    loss_of(model, 0).backward()
    flat.zero_grad()
    assert all(p.grad is None for p in model.parameters()) and not flat.grad.any()


def _per_parameter_run(model, steps, lr, wd, decay):
    """AdamW and EMA parameter by parameter, each on its own arrays (the layout before flat buffers)."""
    params = [p.numpy().copy() for p in model.parameters()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    shadow = [p.copy() for p in params]
    for step, grads in enumerate(steps, start=1):
        for i, g in enumerate(grads):
            adamw_step_reference(params[i], g, m[i], v[i], lr, 0.9, 0.999, 1e-8, wd, step)
            ema_update_reference(shadow[i], params[i], decay)
    return params, m, v, shadow


def test_adamw_and_ema_over_the_flat_buffers_change_no_bit():
    model = small_model()
    rng = np.random.default_rng(4)
    steps = [[(rng.standard_normal(p.shape) * 10.0 ** rng.integers(-4, 2)).astype(np.float32) for p in model.parameters()]
             for _ in range(5)]
    expected = _per_parameter_run(model, steps, 1e-2, 0.05, 0.9)
    optimizer = AdamW(model, lr=1e-2, weight_decay=0.05)
    ema = EMA(model, decay=0.9)
    assert ema.flat is optimizer.flat  # one layout: the EMA update reads the optimizer's buffer
    for grads in steps:
        optimizer.zero_grad()
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        optimizer.step()
        ema.update()
    for i, p in enumerate(model.parameters()):
        np.testing.assert_array_equal(p.data, expected[0][i])
        np.testing.assert_array_equal(optimizer.exp_avg[i], expected[1][i])
        np.testing.assert_array_equal(optimizer.exp_avg_sq[i], expected[2][i])
        np.testing.assert_array_equal(ema.shadow[i], expected[3][i])
    # the padding between the views is zero in every buffer, and stays so
    used = np.zeros(optimizer.flat.numel, dtype=bool)
    for offset, size in zip(optimizer.flat.offsets, optimizer.flat.sizes):
        used[offset:offset + size] = True
    for buffer in (optimizer.flat.data, optimizer.exp_avg_buffer, optimizer.exp_avg_sq_buffer, ema.shadow_buffer):
        assert not buffer[~used].any()
    assert (~used).any()  # the layout does have padding here (sizes 35, 7, 21, 3)


def test_a_loaded_state_dict_is_copied_back_into_the_buffer():
    model, source = small_model(), small_model()
    for p in source.parameters():
        p.data = p.data + 1.0
    optimizer = AdamW(model, lr=1e-2)
    model.load_state_dict(source.state_dict())  # assigns new arrays
    optimizer.zero_grad()
    loss_of(model, 0).backward()
    optimizer.step()
    for p, q in zip(model.parameters(), source.parameters()):
        assert p.data.base is optimizer.flat.data
        assert not np.array_equal(p.data, q.data)  # moved by the step, from the loaded values:
    expected = [q.numpy().copy() for q in source.parameters()]
    plain = small_model()
    plain.load_state_dict(source.state_dict())
    loss_of(plain, 0).backward()
    for value, p in zip(expected, plain.parameters()):
        adamw_step_reference(value, p.grad, np.zeros_like(value), np.zeros_like(value), 1e-2, 0.9, 0.999, 1e-8, 1e-2, 1)
    for value, p in zip(expected, model.parameters()):
        np.testing.assert_array_equal(p.data, value)


def test_clipping_the_flat_buffer_is_clipping_the_gradients():
    model, plain = small_model(), small_model()
    flat = FlatParameters(model.parameters())
    for m in (model, plain):
        loss_of(m, 0).backward()
    norm_flat = clip_grad_norm(flat, max_norm=0.5)
    norm_plain = clip_grad_norm(plain, max_norm=0.5)
    # a float64 sum whose order within a parameter follows the gradient's memory layout (a
    # transposed gradient is summed in another order than its C-ordered view): a few ulps apart
    assert norm_flat == pytest.approx(norm_plain, rel=1e-14) and norm_flat > 0.5
    for a, b in zip(model.parameters(), plain.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)
    assert clip_grad_norm(flat, max_norm=0.5) == pytest.approx(0.5, rel=1e-6)


def test_one_dtype_per_buffer_is_asked_for_in_one_line():
    params = [nn.Parameter(np.zeros(3, dtype=np.float32)), nn.Parameter(np.zeros(2, dtype=np.float64))]
    with pytest.raises(ValueError, match=r"flat buffers hold one dtype on one device.*cast the model") as error:
        FlatParameters(params)
    assert "\n" not in str(error.value)


def test_the_cpu_blocks_change_no_bit():
    from minisdit.autograd.optim import CPU_BLOCK, adamw_step_blocked, ema_update_blocked
    rng = np.random.default_rng(5)
    n = 3 * CPU_BLOCK + 5  # several blocks and a short last one
    whole = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    whole[3] = np.abs(whole[3])
    blocked = [a.copy() for a in whole]
    for step in (1, 2, 3):
        adamw_step_reference(*whole, 1e-3, 0.9, 0.999, 1e-8, 0.01, step)
        adamw_step_blocked(*blocked, 1e-3, 0.9, 0.999, 1e-8, 0.01, step)
        ema_update_reference(whole[2], whole[0], 0.99)
        ema_update_blocked(blocked[2], blocked[0], 0.99)
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)
