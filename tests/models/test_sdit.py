"""The SDiT model and its ablation variants: parameter counts, names, layout, gradients, and that it can learn."""
import dataclasses

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from minisdit import Tensor
from minisdit.models import SDiT, sdit_from_preset
from minisdit.models.attention import SelfAttention
from minisdit.models.sdit import ATTENTIONS, ReconstructionModule, unpatchify
from minisdit.rwkv import TimeMix
from minisdit.autograd.optim import AdamW
from minisdit.snn import SpikeRate
from minisdit.autograd.gradcheck import gradcheck_module
from tests.helpers import assert_one_line_message

# docs/DESIGN.md §2; the C = 3 counts of `paper` and `paper-cifar` are the authors' models exactly
PARAMETER_COUNTS = {
    ("tiny", 1): 226_204, ("tiny", 3): 232_704,
    ("small", 1): 3_248_903, ("small", 3): 3_253_819,
    ("paper", 1): 11_657_735, ("paper", 3): 11_667_259,
    ("paper-cifar", 1): 36_039_451, ("paper-cifar", 3): 36_052_047,
}


# attention="softmax" has TimeMix's four D x D projections but not its five (D,) vectors (time_decay,
# time_first, time_mix_k/v/r): 5 D fewer per block, depth + 1 blocks; spiking_embedding adds no parameter
SOFTMAX_PARAMETER_COUNTS = {
    ("tiny", 1): 225_244, ("tiny", 3): 231_744,
    ("small", 1): 3_244_103, ("small", 3): 3_249_019,
    ("paper", 1): 11_648_135, ("paper", 3): 11_657_659,
    ("paper-cifar", 1): 36_016_411, ("paper-cifar", 3): 36_029_007,
}
VARIANTS = {  # the ablations of issue 15 that this layer builds, and the counts they must have
    "default": ({}, PARAMETER_COUNTS),
    "softmax": (dict(attention="softmax"), SOFTMAX_PARAMETER_COUNTS),
    "spiking embedding": (dict(spiking_embedding=True), PARAMETER_COUNTS),
    "softmax + spiking embedding": (dict(attention="softmax", spiking_embedding=True), SOFTMAX_PARAMETER_COUNTS),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("preset,channels", sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_design(preset, channels, variant):
    options, counts = VARIANTS[variant]
    model = sdit_from_preset(preset, in_channels=channels, **options)
    assert model.num_parameters() == counts[(preset, channels)]


def test_softmax_counts_are_the_default_less_the_rwkv_vectors():
    from minisdit.models import PRESETS
    for (preset, channels), count in PARAMETER_COUNTS.items():
        d, depth = PRESETS[preset]["hidden_size"], PRESETS[preset]["depth"]
        assert SOFTMAX_PARAMETER_COUNTS[(preset, channels)] == count - 5 * d * (depth + 1)


@pytest.mark.parametrize("options,message", [
    (dict(attention="linear"), "unknown attention 'linear'; choose one of rwkv, softmax"),
    (dict(attention="RWKV"), "unknown attention 'RWKV'; choose one of rwkv, softmax"),
    (dict(spiking_embedding="yes"), "spiking_embedding must be True or False, got 'yes'"),
    (dict(reconstruction="False"), "reconstruction must be True or False, got 'False'"),
    (dict(spiking=None), "spiking must be True or False, got None"),
])
def test_bad_variant_values_name_the_choices(options, message):
    for build in (lambda: SDiT(**options), lambda: sdit_from_preset("tiny", **options)):
        with pytest.raises(ValueError) as error:
            build()
        assert_one_line_message(error.value, message)


def test_softmax_needs_a_width_that_splits_into_heads():
    with pytest.raises(ValueError, match="D=200 with 3 heads"):
        SDiT(hidden_size=200, depth=2, patch_size=4, attention="softmax")


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


def test_state_dict_of_the_variants():
    """softmax: att holds query, key, value, output (D x D) and nothing else; the rest is the default's.
    spiking_embedding: the default's state dict exactly (its SN has no parameters)."""
    default = {name: value.shape for name, value in sdit_from_preset("small").state_dict().items()}
    d = 192
    softmax = {name: value.shape for name, value in sdit_from_preset("small", attention="softmax").state_dict().items()}
    expected = {name: shape for name, shape in default.items() if ".att." not in name}
    for block in ("in_blocks.0", "in_blocks.1", "mid_block", "out_blocks.0", "out_blocks.1"):
        for name in ("query", "key", "value", "output"):
            expected[f"{block}.att.{name}.weight"] = (d, d)
    assert softmax == expected
    spiking_embedding = sdit_from_preset("small", spiking_embedding=True).state_dict()
    assert {name: value.shape for name, value in spiking_embedding.items()} == default


def test_variant_layers_and_their_options():
    neuron_options = dict(tau=3.0, v_threshold=0.5)
    model = sdit_from_preset("small", attention="softmax", spiking_embedding=True, T=6, neuron_options=neuron_options)
    assert (model.attention, model.spiking_embedding) == ("softmax", True)
    for block in (*model.in_blocks, model.mid_block, *model.out_blocks):
        assert isinstance(block.att, SelfAttention) and block.att.num_heads == 3
    # the embedding's SN is the blocks' SN: same T, same LIF options
    assert isinstance(model.x_neuron, SpikeRate)
    assert model.x_neuron.T == model.mid_block.att_neuron.T == 6
    assert model.x_neuron.options == model.mid_block.att_neuron.options
    assert model.x_neuron.options.tau == 3.0 and model.x_neuron.options.v_threshold == 0.5
    assert isinstance(sdit_from_preset("tiny").mid_block.att, TimeMix)
    assert not hasattr(sdit_from_preset("tiny"), "x_neuron")  # the default model's module tree is unchanged
    # spiking=False makes every SN the identity, the embedding's too
    not_spiking = sdit_from_preset("tiny", spiking=False, spiking_embedding=True)
    assert not any(isinstance(module, SpikeRate) for module in not_spiking.modules())


def test_default_is_bitwise_the_explicit_rwkv_model_without_spiking_embedding():
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    t, y = np.array([5, 900]), np.array([2, 10])
    outputs = []
    for options in ({}, dict(attention="rwkv", spiking_embedding=False)):
        model = sdit_from_preset("tiny", seed=4, **options)
        model.final_layer.linear.weight.data[:] = 0.01  # so the output depends on every block
        outputs.append((model.state_dict(), model.eval()(Tensor(x), t, y).numpy()))
    (state_a, out_a), (state_b, out_b) = outputs
    assert list(state_a) == list(state_b) and all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
    assert np.array_equal(out_a, out_b)


def test_spiking_embedding_gives_the_first_block_spike_rates():
    """Patch tokens are SN(patches) before the condition token is prepended and pos_embed is added: the first
    block's input, less pos_embed, has tokens 1.. in {0, 1/T, ..., 1}; without the option it does not."""
    seen = {}
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 1, 28, 28)).astype(np.float32) * 3
    pos_embed = (0.3 * rng.standard_normal((1, 50, 64))).astype(np.float32)  # nonzero, so the order shows
    for spiking_embedding in (False, True):
        model = sdit_from_preset("tiny", T=4, spiking_embedding=spiking_embedding, seed=2).eval()
        model.pos_embed.data = pos_embed.copy()
        block = model.in_blocks[0]
        original = block.forward
        object.__setattr__(block, "forward", lambda z, *rest: (seen.__setitem__(spiking_embedding, z.numpy()),
                                                              original(z, *rest))[1])
        model(Tensor(image), np.array([1, 2]), np.array([3, 4]))
    rates = (seen[True] - pos_embed)[:, 1:] * 4
    np.testing.assert_allclose(rates, np.round(rates), atol=1e-5)  # float32 rounding of (rate + p) - p
    assert np.round(rates).min() >= 0 and np.round(rates).max() <= 4
    assert len(np.unique(np.round(rates))) > 1  # some neurons fire and some do not: real spike rates
    analog = (seen[False] - pos_embed)[:, 1:] * 4
    assert np.abs(analog - np.round(analog)).max() > 0.1
    np.testing.assert_array_equal(seen[True][:, 0], seen[False][:, 0])  # the condition token is not spiked


def _assert_uniform(values, bound, what):
    """U(-bound, bound): nothing beyond the bound, and the largest |value| close to it.

    With n independent draws, P(max |w| < 0.9 bound) = 0.9^n; every array checked here has n >= 300,
    so that chance is below 1e-13 and a smaller bound would be caught.
    """
    largest = np.abs(values).max()
    assert values.size >= 300, what
    assert 0.9 * bound < largest <= bound, f"{what}: max |w| = {largest}, Xavier/uniform bound {bound}"


def _assert_normal(values, std, what):
    """N(0, std^2): sample mean and standard deviation within 5 standard errors (std/sqrt(n), std/sqrt(2n))."""
    n = values.size
    assert abs(values.mean()) < 5 * std / np.sqrt(n), f"{what}: mean {values.mean()}"
    assert abs(values.std() - std) < 5 * std / np.sqrt(2 * n), f"{what}: std {values.std()}, want {std}"


def _xavier_bound(fan_in, fan_out):
    return np.sqrt(6.0 / (fan_in + fan_out))


def test_initialisation_rules():
    """docs/DESIGN.md §3, Initialisation (the RWKV vectors and projections are checked in test_rwkv_modules)."""
    channels, d, p, m = 3, 64, 4, 50
    model = sdit_from_preset("tiny", in_channels=channels, seed=3)
    assert np.all(model.pos_embed.numpy() == 0)
    blocks = [*model.in_blocks, model.mid_block, *model.out_blocks]
    for block in blocks:
        assert np.all(block.recon_token.numpy() == 1)
        # Reconstruction Module: fc_a (D -> M) and fc_b (M -> D) Xavier-uniform, biases zero
        for layer, (fan_in, fan_out) in ((block.recon.fc_a, (d, m)), (block.recon.fc_b, (m, d))):
            _assert_uniform(layer.weight.numpy(), _xavier_bound(fan_in, fan_out), "recon Linear")
            assert np.all(layer.bias.numpy() == 0)
    for block in model.out_blocks:  # the long-skip Linear(2D -> D)
        _assert_uniform(block.skip_linear.weight.numpy(), _xavier_bound(2 * d, d), "skip_linear")
        assert np.all(block.skip_linear.bias.numpy() == 0)
    # patch conv: Xavier on the weight seen as a (D, C p^2) matrix, zero bias
    patch = model.x_embedder.proj
    assert patch.weight.shape == (d, channels, p, p)
    _assert_uniform(patch.weight.numpy(), _xavier_bound(channels * p * p, d), "patch conv")
    assert np.all(patch.bias.numpy() == 0)
    # timestep MLP weights N(0, 0.02^2), biases zero
    for layer in (model.t_embedder.mlp[0], model.t_embedder.mlp[2]):
        _assert_normal(layer.weight.numpy(), 0.02, "timestep MLP")
        assert np.all(layer.bias.numpy() == 0)
    # label table N(0, 0.02^2), the "no class" row (index num_classes) included
    table = model.y_embedder.embedding_table.weight.numpy()
    assert table.shape == (11, d)
    _assert_normal(table, 0.02, "label table")
    _assert_normal(table[10], 0.02, "label table null row")
    assert np.all(model.final_layer.linear.weight.numpy() == 0) and np.all(model.final_layer.linear.bias.numpy() == 0)
    # final 3x3 conv (2C -> 2C): PyTorch's default U(-1/sqrt(18 C), 1/sqrt(18 C)) for weight and bias
    bound = 1 / np.sqrt(18 * channels)
    conv = model.final_layer.conv
    _assert_uniform(conv.weight.numpy(), bound, "final conv")
    assert np.abs(conv.bias.numpy()).max() <= bound and np.all(conv.bias.numpy() != 0)
    # the RWKV projections keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    _assert_uniform(model.in_blocks[0].att.key.weight.numpy(), 1 / np.sqrt(d), "att.key")
    # at initialisation the output is the final conv's bias everywhere (zero final Linear)
    model.eval()
    out = model(Tensor(np.random.default_rng(0).standard_normal((2, channels, 28, 28)).astype(np.float32)),
                np.array([1, 999]), np.array([0, 9])).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(conv.bias.numpy()[None, :, None, None], out.shape), atol=1e-6)


def _small_model():
    return SDiT(input_size=8, patch_size=4, hidden_size=8, depth=2, num_classes=10, seed=0).eval()


@pytest.mark.parametrize("t,y,message", [
    ([1, 2, 3], [0, 1], r"t must be an integer array of shape \(2,\), one diffusion step per image; got int64 of shape \(3,\)"),
    ([1.0, 2.0], [0, 1], r"t must be an integer array of shape \(2,\).*got float64"),
    (5, [0, 1], r"t must be an integer array of shape \(2,\).*shape \(\)"),
    ([3, -1], [0, 1], r"t must hold diffusion steps >= 0, got -1"),
    ([1, 2], [0, 11], r"y must hold class labels in 0\.\.10 \(10 means 'no class'\), got values 0\.\.11"),
    ([1, 2], [-1, 4], r"y must hold class labels in 0\.\.10.*got values -1\.\.4"),
    ([1, 2], [0.0, 1.0], r"y must be an integer array of shape \(2,\), one class label per image.*got float64"),
    ([1, 2], [[0, 1]], r"y must be an integer array of shape \(2,\).*shape \(1, 2\)"),
    ([1, 2], None, r"y must be an integer array of shape \(2,\)"),
])
def test_forward_rejects_bad_steps_and_labels(t, y, message):
    x = Tensor(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=message):
        _small_model()(x, np.array(t) if t is not None else t, np.array(y) if y is not None else y)


def test_forward_accepts_the_no_class_label_and_any_nonnegative_step():
    model = _small_model()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    # y = num_classes is "no class" (classifier-free guidance); t is not limited to 0..999
    out = model(x, np.array([0, 4000]), np.array([10, 9], dtype=np.int32)).numpy()
    assert out.shape == (2, 2, 8, 8) and np.all(np.isfinite(out))


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


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("channels,learn_sigma", [(1, True), (3, False)])
def test_variant_forward_shapes_and_eval_determinism(variant, channels, learn_sigma):
    model = sdit_from_preset("tiny", in_channels=channels, learn_sigma=learn_sigma, seed=1, **VARIANTS[variant][0])
    model.final_layer.linear.weight.data[:] = 0.01  # make the output depend on the tokens
    model.eval()
    x = Tensor(np.random.default_rng(0).standard_normal((3, channels, 28, 28)).astype(np.float32))
    t, y = np.array([0, 500, 999]), np.array([1, 9, 10])
    first, second = model(x, t, y).numpy(), model(x, t, y).numpy()
    assert first.shape == (3, 2 * channels if learn_sigma else channels, 28, 28) and first.dtype == np.float32
    assert np.all(np.isfinite(first)) and np.array_equal(first, second)


def test_eval_is_deterministic_and_training_drops_labels():
    model = sdit_from_preset("tiny", seed=1)
    model.final_layer.linear.weight.data[:] = 0.01  # make the output depend on the tokens
    x = Tensor(np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32))
    t, y = np.full(32, 500), np.arange(32) % 10
    model.eval()
    first, second = model(x, t, y).numpy(), model(x, t, y).numpy()
    assert np.array_equal(first, second)
    # label dropout: about 10% of the labels become "no class" (num_classes), the same ones for the same rng
    labels = np.arange(1000) % 10
    dropped = model.drop_labels(labels, np.random.default_rng(0))
    assert np.array_equal(dropped, model.drop_labels(labels, np.random.default_rng(0)))
    is_null = dropped == 10
    assert 60 < is_null.sum() < 140
    assert np.array_equal(dropped[~is_null], labels[~is_null])  # the others are kept as they were
    # forward uses the labels as given, in training too: the no-class rows embed as the null row
    model.train()
    table = model.y_embedder.embedding_table.weight.numpy()
    np.testing.assert_array_equal(model.y_embedder(dropped).numpy(), table[dropped])
    np.testing.assert_array_equal(model.y_embedder(labels).numpy(), table[labels])
    # no dropout probability: nothing dropped, no draw needed
    model.class_dropout_prob = 0.0
    assert np.array_equal(model.drop_labels(labels, np.random.default_rng(0)), labels)


def _smooth(model):
    """Replace every spiking neuron's step by its surrogate primitive so finite differences apply."""
    for module in model.modules():
        if isinstance(module, SpikeRate):
            module.options = dataclasses.replace(module.options, spiking=False)
    return model


# (input size, patch size): L = 1, 4, 9 and 4 patches, odd patches, an odd image
IMAGE_AND_PATCH = [(4, 4), (4, 2), (6, 2), (6, 3), (8, 4)]


@settings(max_examples=settings().max_examples * 2 // 15, deadline=None)
@example(batch=2, channels=1, hidden=4, image_patch=(4, 2), depth=4, reconstruction=True, num_classes=3, seed=0,
         attention="rwkv", spiking_embedding=False)
@example(batch=2, channels=1, hidden=4, image_patch=(4, 2), depth=4, reconstruction=True, num_classes=3, seed=1,
         attention="softmax", spiking_embedding=False)
@example(batch=2, channels=1, hidden=4, image_patch=(6, 2), depth=2, reconstruction=True, num_classes=3, seed=2,
         attention="rwkv", spiking_embedding=True)
@example(batch=2, channels=2, hidden=3, image_patch=(8, 4), depth=2, reconstruction=False, num_classes=2, seed=3,
         attention="softmax", spiking_embedding=True)
@given(batch=st.integers(1, 3), channels=st.integers(1, 2), hidden=st.integers(3, 5),
       image_patch=st.sampled_from(IMAGE_AND_PATCH), depth=st.sampled_from([2, 4]), reconstruction=st.booleans(),
       num_classes=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), attention=st.sampled_from(ATTENTIONS),
       spiking_embedding=st.booleans())
def test_whole_model_gradient_every_parameter(batch, channels, hidden, image_patch, depth, reconstruction,
                                              num_classes, seed, attention, spiking_embedding):
    """d(output)/d(image) and d(output)/d(every parameter) against central differences, in float64,
    for the default model and the ablation variants (the @examples cover each variant on every run)."""
    input_size, patch_size = image_patch
    model = SDiT(input_size=input_size, patch_size=patch_size, in_channels=channels, hidden_size=hidden, depth=depth,
                 num_classes=num_classes, reconstruction=reconstruction, attention=attention,
                 spiking_embedding=spiking_embedding, seed=seed % 1000)
    model = _smooth(model).to(dtype=np.float64).eval()
    rng = np.random.default_rng(seed)
    for parameter in model.parameters():  # move off the special initial values (zeros, ones)
        parameter.data = parameter.data + 0.1 * rng.standard_normal(parameter.shape)
    x = rng.standard_normal((batch, channels, input_size, input_size))
    t, y = rng.integers(0, 1000, batch), rng.integers(0, num_classes + 1, batch)  # y may be "no class"
    # each forward costs ~10 ms of Python, so the image and every parameter array are checked along one
    # random direction (a wrong gradient shows along almost every direction); the directions change with seed
    report = gradcheck_module(model, [x], forward=lambda image: model(image, t, y), max_dense=1, num_directions=1,
                              seed=seed)
    assert report.checks == 1 + len(model.parameters())  # every parameter array was checked


@pytest.mark.parametrize("variant", ["default", "softmax", "spiking embedding"])
def test_tiny_preset_gradient_every_parameter_group(variant):
    """The real `tiny` preset (D = 64, 28 x 28, 3 blocks) in float64: every parameter array along two random
    directions, through its own forward, with the spiking step replaced by its surrogate primitive."""
    model = _smooth(sdit_from_preset("tiny", seed=5, **VARIANTS[variant][0])).to(dtype=np.float64).eval()
    rng = np.random.default_rng(5)
    for parameter in model.parameters():  # off the special initial values (zero head, ones tokens)
        parameter.data = parameter.data + 0.05 * rng.standard_normal(parameter.shape)
    x = rng.standard_normal((1, 1, 28, 28))
    t, y = np.array([417]), np.array([3])
    report = gradcheck_module(model, [x], forward=lambda image: model(image, t, y), max_dense=1, num_directions=2, seed=5)
    assert report.checks == 2 * (1 + len(model.parameters()))


@settings(max_examples=settings().max_examples // 5, deadline=None)
@given(batch=st.integers(1, 3), hidden=st.integers(1, 5), tokens=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_reconstruction_module_gradient_alone(batch, hidden, tokens, seed):
    rng = np.random.default_rng(seed)
    module = ReconstructionModule(hidden_size=hidden, num_tokens=tokens, rng=rng).to(dtype=np.float64)
    for parameter in module.parameters():
        parameter.data = rng.standard_normal(parameter.shape)
    x_hat, r_hat = rng.standard_normal((batch, tokens, hidden)), rng.standard_normal((batch, tokens, hidden))
    report = gradcheck_module(module, [x_hat, r_hat], max_dense=75)
    assert report.checks == 2 * x_hat.size + module.num_parameters()  # every entry checked


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
        y = model.drop_labels(labels, np.random.default_rng(1))
        loss = diffusion.training_losses(model, Tensor(images), t, noise=noise, y=y)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    print("overfit losses every 10 steps:", np.round(losses[::10], 3), "last 5 mean:", np.mean(losses[-5:]))
    # measured: 1.03 at the start, 0.47 after 20 steps, 0.12 (mean of the last 5) after 60 steps
    assert losses[0] > 0.8
    assert np.mean(losses[-5:]) < 0.35 * losses[0], losses[::10]
