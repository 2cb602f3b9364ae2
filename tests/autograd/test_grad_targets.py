"""Gradients written straight into flat-buffer views (``Function.grad_target``, autograd/tensor.py):
the same gradients as without flat buffers (bitwise on the CPU's path, to float rounding on the
GPU's flattened products), no copy per parameter, and sums into ``out`` with a fresh result's bits."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisdit import Tensor, no_grad
from minisdit.autograd import functional as F
from minisdit.autograd import nn, nn_ops
from minisdit.autograd.flat import FlatParameters, stacked_grad_view
from minisdit.autograd.tensor import sum_into, unbroadcast
from minisdit.kernel_checks.launches import DeviceArray, LaunchCounter, flat_on_counting_device
from minisdit.rwkv import shift_mix
from minisdit.rwkv.wkv_operator import wkv


class Mixed(nn.Module):
    """A parameter of every kind SDiT has: Linear (weight, bias), Conv2d, an embedding table, a broadcast
    (1, L, D) and (L, D) parameter, WKV's vectors, token-shift mixes; one Linear used twice, one
    parameter used twice in one op (``square``).  Width 16: a mix of 16 floats is 64 bytes, so the
    mixes lie one after another in the flat buffer, as SDiT's do."""

    def __init__(self, length=5, width=16, square=True):
        super().__init__()
        self.square = square
        rng = np.random.default_rng(0)
        self.conv = nn.Conv2d(1, width, 2, stride=2, rng=1)
        self.table = nn.Parameter(rng.standard_normal((3, width)).astype(np.float32))
        self.pos = nn.Parameter(rng.standard_normal((1, length, width)).astype(np.float32))
        self.tokens = nn.Parameter(rng.standard_normal((length, width)).astype(np.float32))
        self.time_decay = nn.Parameter(rng.standard_normal(width).astype(np.float32) * 0.3)
        self.time_first = nn.Parameter(rng.standard_normal(width).astype(np.float32) * 0.3)
        self.mix_k = nn.Parameter(rng.random(width).astype(np.float32))
        self.mix_v = nn.Parameter(rng.random(width).astype(np.float32))
        self.linear = nn.Linear(width, width, rng=2)
        self.scale = nn.Parameter(rng.standard_normal(width).astype(np.float32))

    def forward(self, images, labels):
        n, width = images.shape[0], self.pos.shape[2]
        patches = self.conv(images).reshape(n, width, -1).transpose(0, 2, 1)  # (N, 4, D)
        label = F.embedding(labels, self.table).reshape(n, 1, width)
        z = F.concat([label, patches], axis=1) + self.pos + F.broadcast_to(self.tokens, (n,) + self.tokens.shape)
        k, v = shift_mix.token_shift_mix(z, self.mix_k, self.mix_v) if shift_mix.kernels_apply(z.data) else (z, z)
        y = wkv(self.time_decay, self.time_first, self.linear(k), v)
        return self.linear(y) * (self.scale * self.scale if self.square else self.scale)


def batch(rng, n=3):
    images = Tensor(rng.standard_normal((n, 1, 4, 4)).astype(np.float32))
    return images, rng.integers(0, 3, n), rng.standard_normal((n, 5, 16)).astype(np.float32)


def gradients(model, rng_seed, flat: bool, device: bool = False):
    rng = np.random.default_rng(rng_seed)
    images, labels, projection = batch(rng)
    if flat:
        buffers = FlatParameters(model.parameters())
        if device:
            flat_on_counting_device(buffers)
        buffers.zero_grad()
    counter = LaunchCounter()
    if device:
        images = Tensor(images.data.view(DeviceArray))
        projection = projection.view(DeviceArray)
        for p in model.parameters():
            if not isinstance(p.data, DeviceArray):
                p.data = p.data.view(DeviceArray)
        with counter.counting():
            (model(images, labels) * Tensor(projection)).sum().backward()
    else:
        (model(images, labels) * Tensor(projection)).sum().backward()
    return [np.array(p.grad) for p in model.parameters()], counter


def test_cpu_gradients_in_flat_views_are_bitwise_those_without():
    plain, _ = gradients(Mixed(), 0, flat=False)
    flat, _ = gradients(Mixed(), 0, flat=True)
    for a, b in zip(plain, flat):
        np.testing.assert_array_equal(a, b)


def test_second_backward_accumulates_as_without_flat_buffers():
    results = []
    for flat in (False, True):
        model = Mixed()
        if flat:
            FlatParameters(model.parameters()).zero_grad()
        for seed in (0, 1):
            images, labels, projection = batch(np.random.default_rng(seed))
            (model(images, labels) * Tensor(projection)).sum().backward()
        results.append([np.array(p.grad) for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_gpu_path_writes_every_gradient_into_its_view_with_no_extra_launch():
    """On the GPU's path (the launch counter's stand-in device, flattened products, the fused kernels)
    the gradients agree with those without flat buffers, and flat buffers add no launch to backward:
    no copy into a view is left.  (Not for ``square``: an elementwise op on inputs of the output's
    shape returns its gradient unreduced, and that one is still copied into the view.)"""
    counts = []
    grads = []
    for flat in (False, True):
        model = Mixed(square=False)
        with_counter = gradients(model, 0, flat=flat, device=True)
        grads.append(with_counter[0])
        counts.append(with_counter[1].by_kind())
        if flat:
            buffers = model.parameters()[0]._flat
            assert all(p.grad is view for p, view in zip(model.parameters(), buffers.grad_views))
    assert counts[0] == counts[1]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_token_shift_mixes_write_their_stacked_views():
    model = Mixed()
    buffers = FlatParameters(model.parameters())
    stacked = stacked_grad_view([model.mix_k, model.mix_v])
    assert stacked is not None and stacked.shape == (2, 16)
    stacked[...] = np.arange(32).reshape(2, 16)
    np.testing.assert_array_equal(buffers.grad_views[buffers.index[id(model.mix_v)]], np.arange(16, 32))
    assert stacked_grad_view([model.mix_v, model.mix_k]) is None  # not in the buffer's order
    assert stacked_grad_view([model.mix_k, model.linear.weight]) is None  # not one shape


@pytest.mark.parametrize("one_gemm", [False, True])
@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 6), tokens=st.integers(1, 4), fan_in=st.integers(1, 5), fan_out=st.integers(1, 5),
       bias=st.booleans())
def test_linear_float64_gradients_into_views_match_central_differences(one_gemm, rows, tokens, fan_in, fan_out, bias):
    """The weight gradient written into its view (G^T X on the GPU's path) is dL/dW: checked against
    central differences in float64."""
    rng = np.random.default_rng(rows * 100 + tokens * 10 + fan_in)
    layer = nn.Linear(fan_in, fan_out, bias=bias, rng=0).to(dtype=np.float64)
    x = rng.standard_normal((rows, tokens, fan_in))
    projection = rng.standard_normal((rows, tokens, fan_out))
    saved, nn_ops.ONE_GEMM_ON_CPU = nn_ops.ONE_GEMM_ON_CPU, one_gemm
    try:
        FlatParameters(layer.parameters()).zero_grad()
        (layer(Tensor(x)) * Tensor(projection)).sum().backward()
        assert layer.weight.grad is layer.weight._grad_view
        for p in layer.parameters():
            numeric = np.zeros(p.data.shape)
            for index in np.ndindex(p.data.shape):
                original = p.data[index]
                values = []
                for delta in (1e-6, -1e-6):
                    p.data[index] = original + delta
                    with no_grad():
                        values.append(float((layer(Tensor(x)).data * projection).sum()))
                p.data[index] = original
                numeric[index] = (values[0] - values[1]) / 2e-6
            np.testing.assert_allclose(p.grad, numeric, rtol=1e-6, atol=1e-7)
    finally:
        nn_ops.ONE_GEMM_ON_CPU = saved


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), data=st.data())
def test_sum_into_and_unbroadcast_give_a_fresh_results_bits(shape, data):
    rng = np.random.default_rng(len(shape))
    array = (rng.standard_normal(shape) * 100).astype(np.float32)
    if data.draw(st.booleans()):
        array = array.transpose(data.draw(st.permutations(range(len(shape)))))  # a strided array too
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, array.ndim - 1), min_size=1))))
    expected = array.sum(axis=axes)
    out = np.full(expected.shape, np.nan, np.float32)
    result = sum_into(array, axes, out)
    np.testing.assert_array_equal(result, expected)
    assert (result is out) == bool(array.flags.c_contiguous)
    target_shape = tuple(1 if i in axes else s for i, s in enumerate(array.shape))[data.draw(st.integers(0, 1)):]
    expected = unbroadcast(array, target_shape)
    out = np.full(target_shape, np.nan, np.float32)
    np.testing.assert_array_equal(unbroadcast(array, target_shape, out), expected)
