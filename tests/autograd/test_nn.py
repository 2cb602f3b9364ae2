"""Modules: layers against their definitions in NumPy, state dicts, dtype moves, train/eval."""
import math

import numpy as np
import pytest
from safetensors.numpy import load as safetensors_load, save as safetensors_save

from minisdit import Tensor, backend
from minisdit import nn


def as_input(array, device="cpu"):
    return Tensor(backend.to_device(np.asarray(array), device))


def test_linear_is_x_w_transpose_plus_b(device):
    rng = np.random.default_rng(0)
    layer = nn.Linear(5, 3, init="torch", rng=1).to(device=device)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    weight, bias = layer.weight.numpy(), layer.bias.numpy()
    assert weight.shape == (3, 5) and bias.shape == (3,)
    y = layer(as_input(x, device))
    assert y.dtype == np.float32 and y.shape == (2, 4, 3)
    np.testing.assert_allclose(y.numpy(), x @ weight.T + bias, rtol=1e-5, atol=1e-6)
    no_bias = nn.Linear(5, 3, bias=False, rng=1)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]
    np.testing.assert_allclose(no_bias(as_input(x)).numpy(), x @ no_bias.weight.numpy().T, rtol=1e-5, atol=1e-6)


def test_linear_initialisers():
    xavier = nn.Linear(40, 30, rng=0)
    bound = math.sqrt(6.0 / 70)
    assert np.abs(xavier.weight.numpy()).max() <= bound
    assert np.abs(xavier.weight.numpy()).max() > 0.9 * bound  # fills the range
    assert not xavier.bias.numpy().any()
    torch_like = nn.Linear(40, 30, init="torch", rng=0)
    assert np.abs(torch_like.weight.numpy()).max() <= 1 / math.sqrt(40)
    assert np.abs(torch_like.bias.numpy()).max() <= 1 / math.sqrt(40) and torch_like.bias.numpy().any()
    assert not nn.Linear(4, 3, init="zeros").weight.numpy().any()
    np.testing.assert_array_equal(nn.Linear(4, 3, rng=7).weight.numpy(), nn.Linear(4, 3, rng=7).weight.numpy())
    with pytest.raises(ValueError, match="unknown init 'kaiming'"):
        nn.Linear(4, 3, init="kaiming")


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_closed_form(device, affine):
    rng = np.random.default_rng(2)
    layer = nn.LayerNorm(6, eps=1e-6, elementwise_affine=affine)
    if affine:
        layer.weight.data = rng.standard_normal(6).astype(np.float32)
        layer.bias.data = rng.standard_normal(6).astype(np.float32)
    else:
        assert layer.parameters() == []
    layer.to(device=device)
    x = (rng.standard_normal((3, 4, 6)) * 5 + 2).astype(np.float32)
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased
    expected = (x - mean) / np.sqrt(variance + 1e-6)
    if affine:
        expected = expected * layer.weight.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(layer(as_input(x, device)).numpy(), expected, rtol=1e-4, atol=1e-5)


def conv2d_nested_loops(x, weight, bias, stride, padding):
    """y[n, o, i, j] = b[o] + sum_{c, a, b} w[o, c, a, b] x[n, c, i*stride + a - padding, j*stride + b - padding],
    with x = 0 outside the image: the definition, one multiply-add at a time."""
    n_images, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h = (height + 2 * padding - kernel_h) // stride + 1
    out_w = (width + 2 * padding - kernel_w) // stride + 1
    y = np.zeros((n_images, out_channels, out_h, out_w))
    for n in range(n_images):
        for o in range(out_channels):
            for i in range(out_h):
                for j in range(out_w):
                    total = bias[o]
                    for c in range(channels):
                        for a in range(kernel_h):
                            for b in range(kernel_w):
                                row, column = i * stride + a - padding, j * stride + b - padding
                                if 0 <= row < height and 0 <= column < width:
                                    total += weight[o, c, a, b] * x[n, c, row, column]
                    y[n, o, i, j] = total
    return y


@pytest.mark.parametrize("kernel, stride, padding, size", [(3, 1, 1, 5), (2, 2, 0, 6), (3, 2, 1, 7), (4, 4, 0, 8),
                                                           (1, 1, 0, 3), (3, 3, 2, 5)])
def test_conv2d_matches_the_nested_loop(device, kernel, stride, padding, size):
    rng = np.random.default_rng(3)
    layer = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, rng=4).to(device=device, dtype=np.float64)
    assert layer.weight.shape == (3, 2, kernel, kernel) and layer.bias.shape == (3,)
    bound = 1 / math.sqrt(2 * kernel * kernel)  # PyTorch's default init
    assert np.abs(layer.weight.numpy()).max() <= bound and np.abs(layer.bias.numpy()).max() <= bound
    x = rng.standard_normal((2, 2, size, size + 1))
    expected = conv2d_nested_loops(x, layer.weight.numpy(), layer.bias.numpy(), stride, padding)
    y = layer(as_input(x, device))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_conv2d_without_bias():
    layer = nn.Conv2d(1, 2, 3, padding=1, bias=False, rng=0).to(dtype=np.float64)
    assert layer.bias is None
    x = np.random.default_rng(5).standard_normal((1, 1, 4, 4))
    expected = conv2d_nested_loops(x, layer.weight.numpy(), np.zeros(2), 1, 1)
    np.testing.assert_allclose(layer(as_input(x)).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_embedding_looks_up_rows_and_scatters_gradients(device):
    table = nn.Embedding(5, 3, std=0.02, rng=0)
    assert abs(float(table.weight.numpy().std()) - 0.02) < 0.015
    table.to(device=device)
    indices = np.array([[4, 0], [4, 4]])
    rows = table(backend.to_device(indices, device))
    np.testing.assert_array_equal(rows.numpy(), table.weight.numpy()[indices])
    rows.sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(table.weight.grad)[:, 0], [1, 0, 0, 0, 3])


class Block(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.mlp = nn.Sequential(nn.Linear(4, 8, rng=rng), nn.SiLU(), nn.Linear(8, 4, rng=rng))
        self.scale = nn.Parameter(np.ones(4, np.float32))

    def forward(self, x):
        return x + self.mlp(self.norm(x)) * self.scale


class TinyNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = nn.Linear(3, 4, rng=rng)
        self.blocks = nn.ModuleList([Block(rng), Block(rng)])
        self.head = nn.Linear(4, 2, bias=False, rng=rng)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


EXPECTED_SHAPES = {
    "embed.weight": (4, 3), "embed.bias": (4,),
    **{f"blocks.{i}.{name}": shape for i in range(2) for name, shape in {
        "norm.weight": (4,), "norm.bias": (4,),
        "mlp.0.weight": (8, 4), "mlp.0.bias": (8,), "mlp.2.weight": (4, 8), "mlp.2.bias": (4,),
        "scale": (4,)}.items()},
    "head.weight": (2, 4),
}


def test_state_dict_names_and_shapes_follow_pytorch():
    net = TinyNet()
    state = net.state_dict()
    assert {name: value.shape for name, value in state.items()} == EXPECTED_SHAPES
    assert all(isinstance(value, np.ndarray) and value.dtype == np.float32 for value in state.values())
    assert net.num_parameters() == sum(int(np.prod(s)) for s in EXPECTED_SHAPES.values())
    state["head.weight"][...] = 99.0  # a copy, not a view of the parameter
    assert not (net.head.weight.numpy() == 99.0).any()


def test_load_state_dict_round_trip_through_safetensors():
    source, target = TinyNet(seed=0), TinyNet(seed=1)
    x = as_input(np.random.default_rng(6).standard_normal((5, 3)).astype(np.float32))
    assert not np.allclose(source(x).numpy(), target(x).numpy())
    target.load_state_dict(safetensors_load(safetensors_save(source.state_dict())))
    np.testing.assert_array_equal(source(x).numpy(), target(x).numpy())
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, source.state_dict()[name])


def test_load_state_dict_errors_name_the_problem():
    net = TinyNet()
    state = net.state_dict()
    missing = dict(state)
    del missing["blocks.1.scale"]
    with pytest.raises(KeyError, match=r"missing \['blocks.1.scale'\]"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        net.load_state_dict({**state, "extra": np.zeros(1)})
    wrong_shape = dict(state, **{"embed.weight": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"shape mismatch for embed.weight: checkpoint has \(3, 4\), model has \(4, 3\)"):
        net.load_state_dict(wrong_shape)
    # strict=False loads what is there and leaves the rest
    before = net.blocks[1].scale.numpy().copy()
    net.load_state_dict({"head.weight": np.full((2, 4), 0.5, np.float32)}, strict=False)
    np.testing.assert_array_equal(net.head.weight.numpy(), 0.5)
    np.testing.assert_array_equal(net.blocks[1].scale.numpy(), before)


def test_to_float64_casts_every_parameter_and_the_forward():
    net = TinyNet()
    reference = net(as_input(np.ones((2, 3), np.float32))).numpy()
    net.to(dtype=np.float64)
    assert net.dtype == np.float64
    assert all(p.dtype == np.float64 for p in net.parameters())
    out = net(as_input(np.ones((2, 3))))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), reference, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == np.float64 for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_train_and_eval_propagate_to_every_submodule():
    net = TinyNet()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    assert len(list(net.modules())) == 1 + 1 + 1 + 2 * (1 + 1 + 1 + 3) + 1


def test_module_list_indexing_and_parameters_are_the_tensors_used():
    net = TinyNet()
    assert net.blocks[-1] is net.blocks[1] and len(net.blocks) == 2
    assert net.parameters()[0] is net.embed.weight
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
