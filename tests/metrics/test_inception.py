"""FID Inception: the restricted TorchScript reader, the input pipeline, the layers, and the network
against the real archive (names, shapes, strides, paddings, pool kinds) and against PyTorch.

Tests that need the real weights skip unless ``python scripts/fetch_inception.py --keep-archive``
has filled the cache (``.ci/run`` does).  The oracle test compares our forward pass with features
that the TorchScript model itself computed once (``tests/metrics/data/inception_oracle.npz``, made
by ``scripts/make_inception_oracle.py``; provenance in ``inception_oracle.json`` beside it), so CI
checks the numbers without torch.  The live comparison with PyTorch also needs torch (never
installed by CI).
"""
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minisdit import Tensor
from minisdit import functional as F
from minisdit.metrics import inception
from minisdit.metrics.torch_archive import (ArchivedModule, UnsafeArchiveError, load_archive, loads_restricted,
                                            named_arrays, named_modules)

ARCHIVE = inception.cache_dir() / "inception_fid_default_1.pt"
WEIGHTS = inception.default_weights_path()
ORACLE = Path(__file__).parent / "data" / "inception_oracle.npz"
needs_archive = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not cached; run: python scripts/fetch_inception.py --keep-archive")
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} not cached; run: python scripts/fetch_inception.py")


# --------------------------------------------------------------------------------------------
# a hand-assembled TorchScript-style pickle (protocol 2 opcodes), so no torch is needed
# --------------------------------------------------------------------------------------------
def op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(value):
    return b"J" + struct.pack("<i", value)


def op_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def op_tensor(key, numel, offset, size, stride):
    """torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())."""
    storage = op_tuple(op_str("storage"), op_global("torch", "FloatStorage"), op_str(key), op_str("cpu"), op_int(numel)) + b"Q"
    arguments = op_tuple(storage, op_int(offset), op_tuple(*map(op_int, size)), op_tuple(*map(op_int, stride)),
                         b"\x89", op_global("collections", "OrderedDict") + b")R")
    return op_global("torch._utils", "_rebuild_tensor_v2") + arguments + b"R"


def op_module(qualified, attributes):
    """NEWOBJ of a __torch__ class, then BUILD with a dict of attributes."""
    module, name = qualified.rsplit(".", 1)
    items = b"".join(op_str(key) + value for key, value in attributes)
    return op_global(module, name) + b")\x81" + b"}(" + items + b"u" + b"b"


def make_archive(path, pickle_bytes, storages):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", pickle_bytes)
        archive.writestr("model/version", "3\n")
        for key, array in storages.items():
            archive.writestr(f"model/data/{key}", np.asarray(array, dtype="<f4").tobytes())


def test_reads_a_synthetic_archive_with_strides_and_offsets(tmp_path):
    storage = np.arange(12, dtype=np.float32)
    child = op_module("__torch__.net.Conv", [
        ("weight", op_tensor("0", 12, 1, (3, 2), (1, 3))),     # a transposed view starting at element 1
        ("padding", op_global("torch.jit._pickle", "build_intlist") + op_tuple(op_tuple(op_int(0), op_int(3))) + b"R"),
        ("stride", op_int(2)),
    ])
    root = op_module("__torch__.net.Net", [("conv", child), ("scale", op_tensor("0", 12, 11, (), ()))])
    make_archive(tmp_path / "model.pt", b"\x80\x02" + root + b".", {"0": storage})

    loaded = load_archive(tmp_path / "model.pt")
    arrays = named_arrays(loaded)
    assert list(arrays) == ["conv.weight", "scale"]
    np.testing.assert_array_equal(arrays["conv.weight"], storage[1:].copy()[np.arange(3)[:, None] + 3 * np.arange(2)])
    assert arrays["scale"] == 11.0
    modules = dict(named_modules(loaded))
    assert modules["conv"].qualified_name == "__torch__.net.Conv"
    assert modules["conv"].attributes["padding"] == [0, 3] and modules["conv"].attributes["stride"] == 2


def test_rejects_a_tensor_that_runs_outside_its_storage(tmp_path):
    root = op_module("__torch__.net.Net", [("weight", op_tensor("0", 4, 2, (2, 2), (2, 1)))])
    make_archive(tmp_path / "bad.pt", b"\x80\x02" + root + b".", {"0": np.zeros(4)})
    with pytest.raises(UnsafeArchiveError, match="outside its storage"):
        load_archive(tmp_path / "bad.pt")


class RunsCommand:
    """Unpickling this calls os.system(command): what a malicious archive would do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_refuses_any_other_global_and_never_runs_it(tmp_path, protocol):
    marker = tmp_path / "was_run"
    payload = pickle.dumps(RunsCommand(f"touch {marker}"), protocol=protocol)
    with pytest.raises(UnsafeArchiveError, match="refusing to load global (posix|os|nt).system"):
        loads_restricted(payload)
    # inside an archive, nested in an otherwise valid module record, too
    nested = op_module("__torch__.net.Net", [("hook", op_global("os", "system") + op_tuple(op_str(f"touch {marker}")) + b"R")])
    make_archive(tmp_path / "evil.pt", b"\x80\x02" + nested + b".", {})
    with pytest.raises(UnsafeArchiveError, match="refusing to load global os.system"):
        load_archive(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_parameter"),
                                          ("subprocess", "Popen"), ("collections", "defaultdict")])
def test_refuses_near_miss_names(module, name):
    with pytest.raises(UnsafeArchiveError, match=f"refusing to load global {module}.{name}"):
        loads_restricted(b"\x80\x02" + op_global(module, name) + b".")


def test_module_records_are_inert():
    record = loads_restricted(b"\x80\x02" + op_module("__torch__.x.Evil", [("__class__", op_int(1)), ("forward", op_int(2))]) + b".")
    assert isinstance(record, ArchivedModule) and type(record).__name__ == "Evil"
    assert record.attributes == {"__class__": 1, "forward": 2}


# --------------------------------------------------------------------------------------------
# layers and input pipeline
# --------------------------------------------------------------------------------------------
def naive_conv(x, weight, bias, stride, padding):
    x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("ncab,ocab->no", patch, weight) + bias
    return y


@pytest.mark.parametrize("kernel, padding, stride", [((1, 7), (0, 3), 1), ((7, 1), (3, 0), 1), ((3, 3), (1, 1), 2), ((1, 3), (0, 1), 1)])
def test_conv_relu_with_per_axis_padding(kernel, padding, stride):
    rng = np.random.default_rng(0)
    layer = inception.ConvReLU(3, 4, kernel, stride=stride, padding=padding).to(dtype=np.float64)
    layer.weight.data = rng.standard_normal(layer.weight.shape)
    layer.bias.data = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 9, 8))
    expected = np.maximum(naive_conv(x, layer.weight.data, layer.bias.data, stride, padding), 0)
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fold_batch_norm_equals_conv_then_batch_norm():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    beta, mean = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    var = rng.uniform(0.01, 2.0, 5).astype(np.float32)
    x = rng.standard_normal((2, 3, 6, 6))
    conv = F.conv2d(Tensor(x), Tensor(weight.astype(np.float64))).numpy()
    expected = (conv - mean[:, None, None]) / np.sqrt(var[:, None, None].astype(np.float64) + 1e-3) + beta[:, None, None]
    folded_weight, folded_bias = inception.fold_batch_norm(weight, beta, mean, var)
    folded = F.conv2d(Tensor(x), Tensor(folded_weight.astype(np.float64)), Tensor(folded_bias.astype(np.float64))).numpy()
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)  # the folded weights are stored in float32


def test_bilinear_matrix_hand_example_and_identity():
    # 2 -> 4 pixels, half-pixel centres: sources −0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the last)
    expected = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    np.testing.assert_allclose(inception.bilinear_matrix(2, 4), expected, atol=1e-15)
    np.testing.assert_allclose(inception.bilinear_matrix(5, 5), np.eye(5), atol=1e-15)
    np.testing.assert_allclose(inception.bilinear_matrix(28, 299).sum(axis=1), 1.0, rtol=1e-14)


def test_preprocess_range_channels_and_float_samples():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    x = inception.preprocess(grey)
    assert x.shape == (2, 3, 299, 299) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    assert x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[0, 0, 0, 0], grey[0, 0, 0, 0] / 127.5 - 1, rtol=1e-6)  # corner pixel kept
    samples = grey.astype(np.float64) / 127.5 - 1.0   # float samples are made uint8 first
    np.testing.assert_array_equal(inception.preprocess(samples), x)
    tf_range = inception.preprocess(np.full((1, 3, 4, 4), 255, np.uint8), input_range=inception.INPUT_RANGE_TF)
    np.testing.assert_allclose(tf_range, 127 / 128, rtol=1e-6)
    with pytest.raises(ValueError, match="1 or 3"):
        inception.preprocess(np.zeros((1, 2, 8, 8), np.uint8))


def test_forward_rejects_unresized_input():
    with pytest.raises(ValueError, match="inception_features"):
        inception.InceptionV3()(Tensor(np.zeros((1, 3, 28, 28), np.float32)))


# --------------------------------------------------------------------------------------------
# the real archive and weights
# --------------------------------------------------------------------------------------------
@needs_archive
def test_architecture_matches_the_archive_layer_by_layer():
    model = inception.InceptionV3()
    ours = dict(model.named_modules())
    archive_modules = list(named_modules(load_archive(ARCHIVE)))
    conv_names, pool_names = [], []
    for name, record in archive_modules:
        kind = record.qualified_name.rsplit(".", 1)[-1]
        if not name.startswith("net.layers"):
            continue
        local = name[len("net."):]
        if kind == "Conv2dLayer":
            conv_names.append(local)
            layer = ours[local]
            assert isinstance(layer, inception.ConvReLU), local
            values = record.attributes
            assert set(k for k, v in values.items() if isinstance(v, np.ndarray)) == {"weight", "beta", "mean", "var"}
            assert layer.weight.shape == values["weight"].shape, local
            assert layer.stride == values["stride"], local
            padding = values["padding"]
            assert layer.padding == (tuple(padding) if isinstance(padding, list) else (padding, padding)), local
        elif kind in ("MaxPool2d", "AvgPool2d"):
            pool_names.append(local)
            expected = inception.MaxPool if kind == "MaxPool2d" else inception.AvgPool
            assert isinstance(ours[local], expected), f"{local}: archive has {kind}"
    assert sorted(conv_names) == sorted(n for n, m in ours.items() if isinstance(m, inception.ConvReLU))
    assert sorted(pool_names) == sorted(n for n, m in ours.items() if isinstance(m, (inception.MaxPool, inception.AvgPool)))
    assert len(conv_names) == 94
    assert isinstance(ours["layers.mixed_10.tower_2_pool"], inception.MaxPool)  # the TF graph's quirk
    assert isinstance(ours["layers.mixed_9.tower_2_pool"], inception.AvgPool)


@needs_archive
def test_cached_weights_are_the_folded_archive():
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not cached; run: python scripts/fetch_inception.py")
    from safetensors.numpy import load_file

    cached, converted = load_file(str(WEIGHTS)), inception.state_dict_from_archive(ARCHIVE)
    assert set(cached) == set(converted) == set(name for name, _ in inception.InceptionV3().named_parameters())
    for name in converted:
        np.testing.assert_array_equal(cached[name], converted[name])


@needs_weights
@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_features_equal_the_torchscript_oracle(kind):
    """Our NumPy forward pass against pool3 features that the TorchScript model computed (float32
    both).  Measured: max |ours − torch| 2e-5 for features up to 9.6, ‖ours − torch‖/‖torch‖ below
    1e-5 per image (summation order over 94 float32 convolutions); the tolerance leaves 5× room.
    Measured mistakes move them far more: the TF input range 3e-2, an average pool in mixed_10
    1.4, one convolution's bias 1 % off 2e-2."""
    oracle = np.load(ORACLE)
    images, expected = oracle[kind], oracle[f"{kind}_features"]
    # the resize alone first (every 13th row and column kept), so a failure names its stage
    np.testing.assert_allclose(inception.preprocess(images)[:, :, ::13, ::13], oracle[f"{kind}_input"], atol=1e-5)
    ours = inception.inception_features(images, inception.load_inception())
    assert ours.shape == expected.shape == (len(images), inception.FEATURE_DIM)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    relative = np.linalg.norm(ours - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert relative.max() < 5e-5, relative


def test_oracle_file_is_small_and_says_where_it_came_from():
    provenance = json.loads(ORACLE.with_suffix(".json").read_text())
    assert provenance["archive_sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # scripts/fetch_inception.py's
    assert provenance["torch"].startswith("2.") and "make_inception_oracle.py" in provenance["command"]
    assert ORACLE.stat().st_size < 256 * 1024


@needs_archive
def test_features_equal_the_torchscript_model():
    torch = pytest.importorskip("torch", reason="torch is not installed (the comparison with PyTorch is optional)")
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not cached; run: python scripts/fetch_inception.py")
    images = np.random.default_rng(4).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    x = inception.preprocess(images)
    unit = torch.from_numpy(images.astype(np.float32) / 255)
    resized = torch.nn.functional.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(x, (resized * 2 - 1).repeat(1, 3, 1, 1).numpy(), atol=1e-5)
    network = torch.jit.load(str(ARCHIVE), map_location="cpu").eval()
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    ours = inception.inception_features(images, inception.load_inception())
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
