"""Every op in minisdit.functional: forward against NumPy, backward against central differences.

Hypothesis picks the shapes (size-1 axes, odd sizes, broadcasting) and a seed for the values; the
values are kept away from the points where an op is not differentiable (|x| and relu near 0, ties
of max/maximum, log/sqrt of non-positive numbers).  Gradients are checked in float64 with
``minisdit.autograd.gradcheck.gradcheck`` (random-projection loss, default tolerances) on every device.
"""
import numpy as np
import pytest
import hypothesis.extra.numpy as hnp
from hypothesis import given, strategies as st

from minisdit import Tensor, backend
from minisdit import functional as F
from minisdit.autograd.gradcheck import gradcheck
from minisdit.autograd import nn_ops
from minisdit.autograd.nn_ops import linear  # the fused op behind nn.Linear

seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)
pairs_of_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def on(device, *arrays):
    """Constant float64 Tensors on ``device``."""
    return [Tensor(backend.to_device(np.asarray(a, dtype=np.float64), device)) for a in arrays]


def check_op(device, fn, arrays, expected):
    """``fn`` on ``arrays`` equals NumPy's ``expected`` (forward), and its gradient passes gradcheck."""
    tensors = on(device, *arrays)
    out = fn(*tensors)
    assert out.device == device
    assert out.dtype == np.float64
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    gradcheck(fn, tensors)


def normal(rng, shape):
    return rng.standard_normal(shape)


def away_from_zero(rng, shape, low=0.2, high=2.0):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


def positive(rng, shape, low=0.5, high=2.0):
    return rng.uniform(low, high, size=shape)


def distinct(rng, shape):
    """Entries at least 0.15 apart, so that a maximum is never a tie."""
    size = int(np.prod(shape, dtype=int))
    values = rng.permutation(size) * 0.25 + rng.uniform(-0.05, 0.05, size=size) - size * 0.125
    return values.reshape(shape)


# --------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------
BINARY = {
    "add": (F.add, np.add, normal),
    "sub": (F.sub, np.subtract, normal),
    "mul": (F.mul, np.multiply, normal),
    "div": (F.div, np.divide, away_from_zero),
    "mse": (F.mse, lambda a, b: np.mean((a - b) ** 2), normal),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shapes=pairs_of_shapes, seed=seeds)
def test_binary_ops(device, name, shapes, seed):
    op, reference, make_b = BINARY[name]
    rng = np.random.default_rng(seed)
    a, b = normal(rng, shapes.input_shapes[0]), make_b(rng, shapes.input_shapes[1])
    check_op(device, op, [a, b], reference(a, b))


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
@given(shape=shapes, seed=seeds, constant=st.floats(0.5, 3.0), constant_first=st.booleans())
def test_binary_ops_with_python_numbers(device, name, shape, seed, constant, constant_first):
    op, reference, _ = BINARY[name]
    a = away_from_zero(np.random.default_rng(seed), shape)
    if constant_first:
        check_op(device, lambda x: op(constant, x), [a], reference(constant, a))
    else:
        check_op(device, lambda x: op(x, constant), [a], reference(a, constant))


@given(shapes=pairs_of_shapes, seed=seeds)
def test_maximum(device, shapes, seed):
    rng = np.random.default_rng(seed)
    shape_a, shape_b = shapes.input_shapes
    # a on the grid 0.25 + k/2 and b on the grid k/2, each jittered by < 0.05: never closer than 0.15
    a = 0.25 + 0.5 * rng.integers(-4, 5, size=shape_a) + rng.uniform(-0.05, 0.05, size=shape_a)
    b = 0.5 * rng.integers(-4, 5, size=shape_b) + rng.uniform(-0.05, 0.05, size=shape_b)
    check_op(device, F.maximum, [a, b], np.maximum(a, b))


def test_maximum_splits_the_gradient_of_a_tie(device):
    a, b = on(device, [1.0, 2.0, 3.0], [1.0, 5.0, 0.0])
    a.requires_grad = b.requires_grad = True
    F.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(a.grad), [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(backend.to_numpy(b.grad), [0.5, 1.0, 0.0])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    "neg": (F.neg, np.negative, normal),
    "exp": (F.exp, np.exp, lambda rng, shape: rng.uniform(-2, 2, size=shape)),
    "log": (F.log, np.log, positive),
    "sqrt": (F.sqrt, np.sqrt, positive),
    "abs": (F.abs, np.abs, away_from_zero),
    "relu": (F.relu, lambda x: np.maximum(x, 0.0), away_from_zero),
    "sigmoid": (F.sigmoid, _sigmoid, lambda rng, shape: rng.uniform(-6, 6, size=shape)),
    "tanh": (F.tanh, np.tanh, lambda rng, shape: rng.uniform(-3, 3, size=shape)),
    "silu": (F.silu, lambda x: x * _sigmoid(x), lambda rng, shape: rng.uniform(-6, 6, size=shape)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(shape=shapes, seed=seeds)
def test_unary_ops(device, name, shape, seed):
    op, reference, make = UNARY[name]
    x = make(np.random.default_rng(seed), shape)
    check_op(device, op, [x], reference(x))


def test_sigmoid_and_silu_do_not_overflow_far_from_zero(device):
    (x,) = on(device, [-800.0, -40.0, 0.0, 40.0, 800.0])
    with np.errstate(over="raise"):
        s = F.sigmoid(x).numpy()
        y = F.silu(x).numpy()
    np.testing.assert_allclose(s, [0.0, _sigmoid(-40.0), 0.5, 1.0, 1.0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(y, [-0.0, -40.0 * _sigmoid(-40.0), 0.0, 40.0, 800.0], rtol=1e-12, atol=0)


@given(shape=shapes, seed=seeds, exponent=st.sampled_from([-2.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.0]))
def test_pow(device, shape, seed, exponent):
    x = positive(np.random.default_rng(seed), shape)
    check_op(device, lambda t: F.pow(t, exponent), [x], x ** exponent)


@given(shape=shapes, seed=seeds, exponent=st.sampled_from([2, 3]))
def test_pow_integer_exponent_of_negative_numbers(device, shape, seed, exponent):
    x = normal(np.random.default_rng(seed), shape)
    check_op(device, lambda t: t ** exponent, [x], x ** exponent)


def test_pow_refuses_a_tensor_exponent():
    with pytest.raises(TypeError, match="constant exponent"):
        F.pow(Tensor([2.0]), Tensor([3.0]))


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=4),
       seed=seeds)
def test_where(device, shapes, seed):
    rng = np.random.default_rng(seed)
    shape_condition, shape_a, shape_b = shapes.input_shapes
    condition = rng.random(shape_condition) < 0.5
    a, b = normal(rng, shape_a), normal(rng, shape_b)
    condition_on_device = backend.to_device(condition, device)
    check_op(device, lambda x, y: F.where(condition_on_device, x, y), [a, b], np.where(condition, a, b))


# --------------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------------
@st.composite
def matmul_shapes(draw):
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    kind = draw(st.sampled_from(["batched", "vector @ matrix", "matrix @ vector", "vector @ vector"]))
    batches = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, min_side=1, max_side=3))
    batch_a, batch_b = batches.input_shapes
    if kind == "batched":
        return batch_a + (n, k), batch_b + (k, m)
    if kind == "vector @ matrix":
        return (k,), batch_b + (k, m)
    if kind == "matrix @ vector":
        return batch_a + (n, k), (k,)
    return (k,), (k,)


@given(shapes=matmul_shapes(), seed=seeds)
def test_matmul(device, shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = normal(rng, shapes[0]), normal(rng, shapes[1])
    check_op(device, F.matmul, [a, b], np.matmul(a, b))


# --------------------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------------------
@st.composite
def shape_and_axis(draw):
    shape = draw(nonempty_shapes)
    ndim = len(shape)
    axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1), hnp.valid_tuple_axes(ndim, min_size=1)))
    return shape, axis


REDUCTIONS = {"sum": (F.sum, np.sum), "mean": (F.mean, np.mean), "max": (F.max, np.max)}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@given(shape_axis=shape_and_axis(), keepdims=st.booleans(), seed=seeds)
def test_reductions(device, name, shape_axis, keepdims, seed):
    op, reference = REDUCTIONS[name]
    shape, axis = shape_axis
    x = distinct(np.random.default_rng(seed), shape)
    check_op(device, lambda t: op(t, axis=axis, keepdims=keepdims), [x], reference(x, axis=axis, keepdims=keepdims))


def test_max_shares_the_gradient_of_a_tie(device):
    (x,) = on(device, [[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])
    x.requires_grad = True
    F.max(x, axis=1).sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


# --------------------------------------------------------------------------------------------
# shape ops
# --------------------------------------------------------------------------------------------
@st.composite
def reshape_targets(draw):
    shape = draw(shapes)
    size = int(np.prod(shape, dtype=int))
    candidates = [(size,), (1, size), (-1,), tuple(reversed(shape)), (1,) + shape + (1,)]
    if len(shape) >= 2:
        candidates.append((-1, shape[-1]))
        candidates.append(shape[:-2] + (shape[-2] * shape[-1],))
    return shape, draw(st.sampled_from(candidates))


@given(shapes=reshape_targets(), seed=seeds)
def test_reshape(device, shapes, seed):
    shape, target = shapes
    x = normal(np.random.default_rng(seed), shape)
    check_op(device, lambda t: F.reshape(t, target), [x], x.reshape(target))
    check_op(device, lambda t: t.reshape(*target), [x], x.reshape(target))


@st.composite
def shape_and_permutation(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    permutation = draw(st.permutations(range(len(shape))))
    # write some axes as negative numbers, as users do
    permutation = tuple(axis - len(shape) if draw(st.booleans()) else axis for axis in permutation)
    return shape, permutation


@given(shape_axes=shape_and_permutation(), seed=seeds)
def test_transpose_and_permute(device, shape_axes, seed):
    shape, axes = shape_axes
    x = normal(np.random.default_rng(seed), shape)
    expected = np.transpose(x, axes)
    check_op(device, lambda t: F.transpose(t, axes), [x], expected)
    check_op(device, lambda t: F.permute(t, axes), [x], expected)
    check_op(device, lambda t: t.permute(*axes), [x], expected)
    check_op(device, lambda t: t.T, [x], x.T)


@st.composite
def basic_index(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    index = draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True))
    return shape, index


@given(shape_index=basic_index(), seed=seeds)
def test_getitem_basic_slicing(device, shape_index, seed):
    shape, index = shape_index
    x = normal(np.random.default_rng(seed), shape)
    check_op(device, lambda t: t[index], [x], x[index])


@st.composite
def integer_array_index(draw):
    """Integer arrays with repeats and negative entries: on one axis, on every axis, or mixed with an int."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    rng = np.random.default_rng(draw(seeds))
    kind = draw(st.sampled_from(["one axis", "every axis", "int and array", "boolean mask"]))
    index_shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))

    def indices_for(axis):
        return rng.integers(-shape[axis], shape[axis], size=index_shape)

    if kind == "one axis":
        axis = draw(st.integers(0, len(shape) - 1))
        return shape, (slice(None),) * axis + (indices_for(axis),)
    if kind == "every axis":
        return shape, tuple(indices_for(axis) for axis in range(len(shape)))
    if kind == "int and array" and len(shape) >= 2:
        return shape, (int(rng.integers(0, shape[0])), indices_for(1))
    return shape, rng.random(shape[:1]) < 0.5


@given(shape_index=integer_array_index(), seed=seeds)
def test_getitem_integer_arrays(device, shape_index, seed):
    shape, index = shape_index
    x = normal(np.random.default_rng(seed), shape)
    moved = tuple(backend.to_device(i, device) if isinstance(i, np.ndarray) else i for i in index) \
        if isinstance(index, tuple) else backend.to_device(index, device)
    check_op(device, lambda t: t[moved], [x], x[index])


@st.composite
def concat_inputs(draw):
    shape = draw(nonempty_shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    return [shape[:axis % len(shape)] + (size,) + shape[axis % len(shape) + 1:] for size in sizes], axis


@given(shapes_axis=concat_inputs(), seed=seeds)
def test_concat(device, shapes_axis, seed):
    input_shapes, axis = shapes_axis
    rng = np.random.default_rng(seed)
    arrays = [normal(rng, s) for s in input_shapes]
    check_op(device, lambda *ts: F.concat(ts, axis=axis), arrays, np.concatenate(arrays, axis=axis))


@st.composite
def split_inputs(draw):
    shape = draw(nonempty_shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    length = shape[axis]
    if draw(st.booleans()):
        divisors = [d for d in range(1, length + 1) if length % d == 0]
        return shape, axis, draw(st.sampled_from(divisors))
    cuts = sorted(draw(st.sets(st.integers(1, length - 1), max_size=3))) if length > 1 else []
    bounds = [0] + cuts + [length]
    return shape, axis, [hi - lo for lo, hi in zip(bounds, bounds[1:])]


@given(inputs=split_inputs(), seed=seeds)
def test_split(device, inputs, seed):
    shape, axis, sections = inputs
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    pieces = F.split(on(device, x)[0], sections, axis=axis)
    cuts = np.cumsum(sections)[:-1] if isinstance(sections, list) else sections
    expected = np.split(x, cuts, axis=axis)
    assert len(pieces) == len(expected)
    for piece, want in zip(pieces, expected):
        np.testing.assert_array_equal(piece.numpy(), want)
    # weight every piece differently so that a gradient sent to the wrong piece shows
    weights = on(device, *[normal(rng, w.shape) for w in expected])

    def weighted_total(t):
        total = None
        for piece, weight in zip(F.split(t, sections, axis=axis), weights):
            term = F.sum(piece * weight)
            total = term if total is None else total + term
        return total

    gradcheck(weighted_total, on(device, x))


def test_split_errors_say_what_is_wrong():
    x = Tensor(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="length 5 into 2 equal parts"):
        F.split(x, 2)
    with pytest.raises(ValueError, match="do not add up"):
        F.split(x, [2, 2])


@given(shape=shapes, count=st.integers(1, 4), data=st.data(), seed=seeds)
def test_stack(device, shape, count, data, seed):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    rng = np.random.default_rng(seed)
    arrays = [normal(rng, shape) for _ in range(count)]
    check_op(device, lambda *ts: F.stack(ts, axis=axis), arrays, np.stack(arrays, axis=axis))


@given(shape=nonempty_shapes, data=st.data(), before=st.integers(0, 3), after=st.integers(0, 3), seed=seeds)
def test_pad(device, shape, data, before, after, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = normal(np.random.default_rng(seed), shape)
    widths = [(0, 0)] * len(shape)
    widths[axis] = (before, after)
    check_op(device, lambda t: F.pad(t, axis, before=before, after=after), [x], np.pad(x, widths))


# --------------------------------------------------------------------------------------------
# fused ops
# --------------------------------------------------------------------------------------------
@given(batch=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4), features=st.integers(1, 7),
       affine=st.sampled_from(["none", "weight", "weight and bias"]), eps=st.sampled_from([1e-5, 1e-6]),
       seed=seeds)
def test_layer_norm(device, batch, features, affine, eps, seed):
    rng = np.random.default_rng(seed)
    # a shifted, scaled input: the op has to remove both
    x = rng.standard_normal(batch + (features,)) * rng.uniform(0.5, 3.0) + rng.uniform(-2.0, 2.0)
    weight, bias = rng.standard_normal(features), rng.standard_normal(features)
    x_hat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    if affine == "none":
        check_op(device, lambda t: F.layer_norm(t, eps=eps), [x], x_hat)
    elif affine == "weight":
        check_op(device, lambda t, w: F.layer_norm(t, w, eps=eps), [x, weight], x_hat * weight)
    else:
        check_op(device, lambda t, w, b: F.layer_norm(t, w, b, eps=eps), [x, weight, bias], x_hat * weight + bias)


def test_layer_norm_bias_needs_a_weight():
    with pytest.raises(ValueError, match="needs a weight"):
        F.layer_norm(Tensor(np.zeros((2, 3))), None, Tensor(np.zeros(3)))


def conv2d_per_pixel(x, weight, bias, stride, padding):
    """Cross-correlation written per output pixel: y[n, o, i, j] = sum over (c, a, b) of the patch times w."""
    n, _, h, w = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (h + 2 * padding - kernel_h) // stride + 1
    out_w = (w + 2 * padding - kernel_w) // stride + 1
    y = np.zeros((n, out_channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[:, :, i * stride:i * stride + kernel_h, j * stride:j * stride + kernel_w]
            y[:, :, i, j] = np.einsum("ncab,ocab->no", patch, weight)
    return y if bias is None else y + bias[None, :, None, None]


@st.composite
def conv_settings(draw):
    kernel_h, kernel_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    # the padded image must hold at least one kernel
    h = draw(st.integers(max(1, kernel_h - 2 * padding), 7))
    w = draw(st.integers(max(1, kernel_w - 2 * padding), 7))
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (n, c, h, w), (o, c, kernel_h, kernel_w), stride, padding


@given(settings=conv_settings(), with_bias=st.booleans(), seed=seeds)
def test_conv2d(device, settings, with_bias, seed):
    x_shape, w_shape, stride, padding = settings
    rng = np.random.default_rng(seed)
    x, weight, bias = normal(rng, x_shape), normal(rng, w_shape), normal(rng, w_shape[:1])
    if with_bias:
        check_op(device, lambda t, w, b: F.conv2d(t, w, b, stride=stride, padding=padding), [x, weight, bias],
                 conv2d_per_pixel(x, weight, bias, stride, padding))
    else:
        check_op(device, lambda t, w: F.conv2d(t, w, stride=stride, padding=padding), [x, weight],
                 conv2d_per_pixel(x, weight, None, stride, padding))


@given(batch=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4), features=st.integers(1, 5),
       out_features=st.integers(1, 5), with_bias=st.booleans(), seed=seeds)
def test_linear(device, batch, features, out_features, with_bias, seed):
    """The fused Linear (one 2-D GEMM over the flattened rows) against x W^T + b, for any leading axes."""
    rng = np.random.default_rng(seed)
    x, weight, bias = normal(rng, batch + (features,)), normal(rng, (out_features, features)), normal(rng, out_features)
    if with_bias:
        check_op(device, linear, [x, weight, bias], np.einsum("...i,oi->...o", x, weight) + bias)
    else:
        check_op(device, linear, [x, weight], np.einsum("...i,oi->...o", x, weight))


@given(batch=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3), seed=seeds)
def test_linear_as_the_gpu_runs_it(device, batch, seed):
    """The flattened one-GEMM products that a GPU takes, run on NumPy arrays: the same values and gradients."""
    rng = np.random.default_rng(seed)
    x, weight, bias = normal(rng, batch + (3,)), normal(rng, (2, 3)), normal(rng, 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn_ops, "ONE_GEMM_ON_CPU", True)
        check_op(device, linear, [x, weight, bias], np.einsum("...i,oi->...o", x, weight) + bias)


def test_linear_of_a_transposed_input(device):
    """A non-contiguous input (a transposed view) is flattened by a copy, not misread."""
    rng = np.random.default_rng(0)
    x, weight, bias = normal(rng, (3, 4, 2)), normal(rng, (5, 3)), normal(rng, 5)
    check_op(device, lambda t, w, b: linear(F.permute(t, (2, 1, 0)), w, b), [x, weight, bias],
             np.einsum("cli,oi->clo", x.transpose(2, 1, 0), weight) + bias)


def test_linear_says_which_sizes_do_not_fit():
    with pytest.raises(ValueError, match="input has 4 features but the weight .* takes 3"):
        linear(Tensor(np.zeros((2, 4))), Tensor(np.zeros((5, 3))))


@given(rows=st.integers(1, 6), dim=st.integers(1, 5),
       index_shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=5), seed=seeds)
def test_embedding(device, rows, dim, index_shape, seed):
    rng = np.random.default_rng(seed)
    table = normal(rng, (rows, dim))
    indices = rng.integers(0, rows, size=index_shape)  # repeats are likely: their gradients must add up
    indices_on_device = backend.to_device(indices, device)
    check_op(device, lambda t: F.embedding(indices_on_device, t), [table], table[indices])


@st.composite
def broadcast_shapes(draw):
    """An input shape and a target it broadcasts to: new leading axes and stretched size-1 axes."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))
    leading = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    stretched = tuple(draw(st.integers(1, 4)) if size == 1 else size for size in shape)
    return shape, leading + stretched


@given(shapes=broadcast_shapes(), seed=seeds)
def test_broadcast_to(device, shapes, seed):
    shape, target = shapes
    x = normal(np.random.default_rng(seed), shape)
    # the backward sums the gradient over every repeated copy: gradcheck compares it with differences
    check_op(device, lambda t: F.broadcast_to(t, target), [x], np.broadcast_to(x, target))


def test_broadcast_to_says_which_shapes_do_not_fit():
    with pytest.raises(ValueError, match=r"cannot broadcast shape \(2, 3\) to \(2, 4\)"):
        F.broadcast_to(Tensor(np.zeros((2, 3))), (2, 4))
    with pytest.raises(ValueError, match=r"cannot broadcast shape \(2, 3\) to \(3,\)"):
        F.broadcast_to(Tensor(np.zeros((2, 3))), (3,))
