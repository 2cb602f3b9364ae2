"""The SDiT model: parameter counts, names, layout, gradients, and that it can learn."""
import dataclasses

import numpy as np
import pytest

from minisdit import Tensor
from minisdit import functional as F
from minisdit.models import PRESETS, SDiT, sdit_from_preset
from minisdit.models.sdit import ReconstructionModule, unpatchify
from minisdit.optim import AdamW
from minisdit.snn import SpikeRate
from minisdit.testing import gradcheck_module

# DESIGN.md section 2; the C = 3 counts of `paper` and `paper-cifar` are the authors' models exactly
PARAMETER_COUNTS = {
    ("tiny", 1): 226_204, ("tiny", 3): 232_704,
    ("small", 1): 3_248_903, ("small", 3): 3_253_819,
    ("paper", 1): 11_657_735, ("paper", 3): 11_667_259,
    ("paper-cifar", 1): 36_039_451, ("paper-cifar", 3): 36_052_047,
}


@pytest.mark.parametrize("preset,channels", sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_design(preset, channels):
    assert sdit_from_preset(preset, in_channels=channels).num_parameters() == PARAMETER_COUNTS[(preset, channels)]


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="tiny, small, paper, paper-cifar"):
        sdit_from_preset("huge")


def test_state_dict_names_and_shapes_follow_design():
    model = sdit_from_preset("tiny")
    state = model.state_dict()
    d, m = 64, 50
    expected = {
        "x_embedder.proj.weight": (d, 1, 4, 4), "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (11, d), "pos_embed": (1, m, d),
        "out_blocks.0.skip_linear.weight": (d, 2 * d), "out_blocks.0.skip_linear.bias": (d,),
        "final_layer.linear.weight": (4 * 4 * 2, d), "final_layer.linear.bias": (32,),
        "final_layer.conv.weight": (2, 2, 3, 3), "final_layer.conv.bias": (2,),
    }
    for block in ("in_blocks.0", "mid_block", "out_blocks.0"):
        expected[f"{block}.recon_token"] = (m, d)
        for name in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"):
            expected[f"{block}.att.{name}"] = (d,)
        for name in ("key", "value", "receptance", "output"):
            expected[f"{block}.att.{name}.weight"] = (d, d)
        expected[f"{block}.ffn.time_mix_k"] = expected[f"{block}.ffn.time_mix_r"] = (d,)
        expected[f"{block}.ffn.key.weight"] = (4 * d, d)
        expected[f"{block}.ffn.value.weight"] = (d, 4 * d)
        expected[f"{block}.ffn.receptance.weight"] = (d, d)
        expected[f"{block}.recon.fc_a.weight"], expected[f"{block}.recon.fc_a.bias"] = (m, d), (m,)
        expected[f"{block}.recon.fc_b.weight"], expected[f"{block}.recon.fc_b.bias"] = (d, m), (d,)
    assert {name: value.shape for name, value in state.items()} == expected


def test_initialisation_rules():
    model = sdit_from_preset("tiny", in_channels=1, seed=3)
    assert np.all(model.pos_embed.numpy() == 0)
    assert np.all(model.mid_block.recon_token.numpy() == 1)
    assert np.all(model.final_layer.linear.weight.numpy() == 0)
    bound = 1 / np.sqrt(18)
    conv = model.final_layer.conv
    assert np.abs(conv.weight.numpy()).max() <= bound and np.abs(conv.bias.numpy()).max() <= bound
    table = model.y_embedder.embedding_table.weight.numpy()
    assert abs(table.std() - 0.02) < 0.005
    # the RWKV projections keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    key = model.in_blocks[0].att.key.weight.numpy()
    assert np.abs(key).max() <= 1 / np.sqrt(64) and np.abs(key).max() > 0.9 / np.sqrt(64)
    # at initialisation the output is the final conv's bias everywhere (zero final Linear)
    model.eval()
    out = model(Tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)),
                np.array([1, 999]), np.array([0, 9])).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(conv.bias.numpy()[None, :, None, None], out.shape), atol=1e-6)


def test_depth_must_be_even():
    with pytest.raises(ValueError, match="even"):
        SDiT(depth=3)


def test_unpatchify_puts_each_feature_at_its_pixel():
    p, channels, h, w = 2, 3, 2, 3
    x = np.random.default_rng(0).standard_normal((1, h * w, p * p * channels))
    image = unpatchify(Tensor(x), (h, w), p, channels).numpy()
    for r in range(h):
        for c in range(w):
            for a in range(p):
                for b in range(p):
                    for ch in range(channels):
                        assert image[0, ch, r * p + a, c * p + b] == x[0, r * w + c, (a * p + b) * channels + ch]


def test_patch_tokens_are_in_raster_order():
    model = sdit_from_preset("tiny")
    image = np.zeros((1, 1, 28, 28), np.float32)
    image[0, 0, 4:8, 8:12] = 1.0  # patch row 1, column 2 -> token 1 * 7 + 2 (before the condition token)
    tokens = model.x_embedder(Tensor(image)).numpy()
    bias = model.x_embedder.proj.bias.numpy()
    changed = np.flatnonzero(np.abs(tokens[0] - bias).sum(axis=1) > 0)
    assert changed.tolist() == [1 * 7 + 2]


def test_eval_is_deterministic_and_training_drops_labels():
    model = sdit_from_preset("tiny", seed=1)
    model.final_layer.linear.weight.data[:] = 0.01  # make the output depend on the tokens
    x = Tensor(np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32))
    t, y = np.full(32, 500), np.arange(32) % 10
    model.eval()
    first, second = model(x, t, y).numpy(), model(x, t, y).numpy()
    assert np.array_equal(first, second)
    # label dropout: in training about 10% of the labels become "no class" (row num_classes)
    embedder = model.y_embedder
    labels = np.arange(1000) % 10
    kept = embedder(labels, np.random.default_rng(0)).numpy()  # eval: nothing dropped
    np.testing.assert_array_equal(kept, embedder.embedding_table.weight.numpy()[labels])
    model.train()
    dropped_rows = embedder(labels, np.random.default_rng(0)).numpy()
    is_null = np.all(dropped_rows == embedder.embedding_table.weight.numpy()[10], axis=1)
    assert 60 < is_null.sum() < 140


def _smooth(model):
    """Replace every spiking neuron's step by its surrogate primitive so finite differences apply."""
    for module in model.modules():
        if isinstance(module, SpikeRate):
            module.options = dataclasses.replace(module.options, spiking=False)
    return model


def _tiny_float64_model(**options):
    model = SDiT(input_size=8, patch_size=4, in_channels=1, hidden_size=8, depth=2, num_classes=3, seed=0, **options)
    model = _smooth(model).to(dtype=np.float64).eval()
    rng = np.random.default_rng(1)
    for parameter in model.parameters():  # move off the special initial values (zeros, ones)
        parameter.data = parameter.data + 0.1 * rng.standard_normal(parameter.shape)
    return model


def test_whole_model_gradient_every_parameter_group():
    model = _tiny_float64_model()
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8))
    t, y = np.array([3, 700]), np.array([0, 2])
    # the image entry by entry, every parameter group along two random directions
    report = gradcheck_module(model, [x], forward=lambda image: model(image, t, y), max_dense=8, num_directions=2)
    assert report.checks == 2 + sum(p.size if p.size <= 8 else 2 for p in model.parameters())


def test_whole_model_gradient_without_reconstruction():
    model = _tiny_float64_model(reconstruction=False)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8))
    gradcheck_module(model, [x], forward=lambda image: model(image, np.array([5, 50]), np.array([1, 1])),
                     max_dense=8, num_directions=2)


def test_reconstruction_module_gradient_alone():
    rng = np.random.default_rng(4)
    module = ReconstructionModule(hidden_size=5, num_tokens=4, rng=rng).to(dtype=np.float64)
    for parameter in module.parameters():
        parameter.data = rng.standard_normal(parameter.shape)
    report = gradcheck_module(module, [rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))], max_dense=64)
    assert report.checks == 2 * 60 + module.num_parameters()  # every entry checked


def test_reconstruction_module_matches_its_formula():
    rng = np.random.default_rng(5)
    module = ReconstructionModule(hidden_size=5, num_tokens=4, rng=rng)
    x_hat, r_hat = rng.standard_normal((2, 4, 5)).astype(np.float32), rng.standard_normal((2, 4, 5)).astype(np.float32)
    w_a, b_a = module.fc_a.weight.numpy(), module.fc_a.bias.numpy()
    w_b, b_b = module.fc_b.weight.numpy(), module.fc_b.bias.numpy()
    a = r_hat @ w_a.T + b_a
    g = np.swapaxes(a, 1, 2) @ w_b.T + b_b
    np.testing.assert_allclose(module(Tensor(x_hat), Tensor(r_hat)).numpy(), x_hat * (1 + g), rtol=1e-5, atol=1e-6)


def test_spiking_branches_output_spike_rates():
    model = sdit_from_preset("tiny")
    block = model.mid_block
    values = block.att_neuron(Tensor(np.linspace(-3, 6, 1000).astype(np.float32))).numpy()
    assert set(np.unique(values * 4).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_tiny_model_overfits_sixteen_images():
    """Fixed images, steps and noise: the loss must fall far below its starting value."""
    from minisdit.diffusion import GaussianDiffusion

    rng = np.random.default_rng(0)
    images = np.zeros((16, 1, 28, 28), np.float32) - 1
    for i in range(16):  # simple distinct shapes: bars at different places
        images[i, 0, 2 + i:6 + i, 4:24] = 1.0
    t = rng.integers(0, 1000, 16)
    noise = rng.standard_normal(images.shape).astype(np.float32)
    labels = np.arange(16) % 10
    model = sdit_from_preset("tiny", seed=0)
    diffusion = GaussianDiffusion()
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        model.label_dropout_rng = np.random.default_rng(1)
        loss = diffusion.training_losses(model, Tensor(images), t, noise=noise, y=labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    print("overfit losses every 10 steps:", np.round(losses[::10], 3), "last 5 mean:", np.mean(losses[-5:]))
    # measured: 1.03 at the start, 0.47 after 20 steps, 0.12 (mean of the last 5) after 60 steps
    assert losses[0] > 0.8
    assert np.mean(losses[-5:]) < 0.35 * losses[0], losses[::10]
