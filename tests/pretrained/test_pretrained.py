"""The shipped pretrained model: it loads through the checkpoint loader as the model its JSON
describes, its weights file stays under 1 MB, and scripts/export_pretrained.py writes exactly the
weights it says it keeps (the EMA copy when there is one, as float32, no optimizer state)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import minisdit
from minisdit.models import sdit_from_preset
from minisdit.pretrained import FOLDER, available, load_pretrained
from minisdit.training import load_checkpoint, load_model, save_checkpoint
from minisdit.training.config import CPU_RECIPE
from tests.helpers import assert_one_line_message

REPO = Path(__file__).resolve().parents[2]


def export_module():
    spec = importlib.util.spec_from_file_location("export_pretrained", REPO / "scripts" / "export_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mnist_tiny_is_shipped_and_under_one_megabyte():
    assert "mnist-tiny" in available()
    size = (FOLDER / "mnist-tiny.safetensors").stat().st_size
    assert size < 1_000_000, f"the shipped weights are {size:,} bytes"


def test_load_pretrained_gives_the_model_its_json_describes():
    model, diffusion, config, info = load_pretrained("mnist-tiny")
    assert config.preset == info["config"]["preset"] == "tiny"
    assert info["weights"] in ("ema", "model")
    assert isinstance(info["placeholder"], bool)
    checkpoint = load_checkpoint(FOLDER / "mnist-tiny.safetensors")
    assert checkpoint["optimizer"] is None and checkpoint["ema"] is None  # model weights only
    assert checkpoint["step"] == info["step"]
    assert all(value.dtype == np.float32 for value in checkpoint["model"].values())
    assert model.num_parameters() == info["parameters"]
    assert not model.training
    assert diffusion.num_timesteps == config.num_timesteps
    with minisdit.no_grad():
        out = model(minisdit.Tensor(np.zeros((2, 1, 28, 28), np.float32)), np.array([5, 500]), np.array([3, 7]))
    assert out.shape == (2, 2, 28, 28) and np.all(np.isfinite(out.numpy()))


def test_an_unknown_name_is_one_line_naming_the_shipped_ones():
    with pytest.raises(ValueError) as error:
        load_pretrained("mnist-huge")
    assert_one_line_message(error.value, "mnist-huge", "mnist-tiny")


@pytest.mark.parametrize("with_ema", [True, False])
def test_export_keeps_the_ema_weights_when_there_are_some(tmp_path, with_ema):
    config = CPU_RECIPE.to_dict()
    model = sdit_from_preset("tiny", seed=1)
    state = {name: np.asarray(value, np.float64) for name, value in model.state_dict().items()}  # float64 on purpose
    ema = {name: value + 1.0 for name, value in state.items()} if with_ema else None
    optimizer = {"step": np.array(3)}
    ckpt = save_checkpoint(tmp_path / "checkpoint.safetensors", model_state=state, optimizer_state=optimizer,
                           ema_state=ema, step=7, config=config, rng_states={"scheme": "test"})
    scores = tmp_path / "eval.json"
    scores.write_text(json.dumps({"metrics": {"fid-lenet": 12.5}, "num_samples": 10}))
    weights_file, info_file = export_module().export(ckpt, "unit", tmp_path / "out", recipe="a command",
                                                     eval_json=scores, placeholder=True)
    info = json.loads(info_file.read_text())
    expected = "ema" if with_ema else "model"
    assert info["weights"] == expected and info["placeholder"] is True and info["step"] == 7
    assert info["recipe"] == "a command" and info["scores"]["metrics"]["fid-lenet"] == 12.5
    exported = load_checkpoint(weights_file)
    assert exported["optimizer"] is None and exported["ema"] is None
    source = ema if with_ema else state
    for name, value in exported["model"].items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, source[name].astype(np.float32))
    loaded, _ = load_model(weights_file)
    assert loaded.num_parameters() == info["parameters"] == model.num_parameters()


def test_the_export_command_refuses_a_missing_eval_json_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_module().main(["--ckpt", str(tmp_path / "c.safetensors"), "--name", "x",
                              "--eval-json", str(tmp_path / "missing.json")])
    assert "run python -m minisdit.evaluate" in capsys.readouterr().err
