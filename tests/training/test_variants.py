"""Model variants from the command line (issue 15): each variant trains, samples and evaluates, its
config records it, --resume rebuilds it exactly, and a checkpoint of one variant asked for as
another gives one line.

Runs use the tiny preset on 12 fake 28x28 images (as tests/training/test_train.py), batch 4, one
process, 2 steps.
"""
import json

import numpy as np
import pytest

from minisdit import data
from minisdit.cli import evaluate, sample, train
from minisdit.models import sdit_from_preset
from minisdit.training.checkpoint import CheckpointError, load_checkpoint, load_model
from minisdit.training.config import CPU_RECIPE, VARIANT_FIELDS, TrainConfig, build_model
from tests.helpers import assert_one_line_error, assert_one_line_message, run_main
from tests.training.test_train import assert_bitwise_equal_checkpoints, fake_dataset

FAST = ["--batch-size", "4", "--workers", "1", "--seed", "5", "--sample-steps", "2", "--sample-num", "2",
        "--sample-every", "1000", "--ckpt-every", "1000", "--log-every", "1", "--no-progress"]


# (flags, the config fields they set, what the rebuilt model shows of it)
VARIANTS = [
    pytest.param(["--no-reconstruction"], {"reconstruction": False}, id="no-reconstruction"),
    pytest.param(["--no-spiking"], {"spiking": False}, id="no-spiking"),
    pytest.param(["--time-steps", "1"], {"time_steps": 1}, id="T1"),
    pytest.param(["--time-steps", "8"], {"time_steps": 8}, id="T8"),
    pytest.param(["--attention", "softmax"], {"attention": "softmax"}, id="softmax"),
    pytest.param(["--spiking-embedding"], {"spiking_embedding": True}, id="spiking-embedding"),
]


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    monkeypatch.setattr(data, "load_dataset", fake_dataset)


def train_cli(*argv):
    return run_main(train.main, *FAST, *argv)


def test_the_default_variant_builds_the_model_it_built_before():
    """No variant field changes the paper's model: same parameters, same initial weights."""
    built = build_model(CPU_RECIPE).state_dict()
    before = sdit_from_preset("tiny", seed=0).state_dict()
    assert set(built) == set(before)
    assert all(np.array_equal(built[name], before[name]) for name in before)
    assert {name: getattr(TrainConfig(), name) for name in VARIANT_FIELDS} == dict(
        reconstruction=True, spiking=True, time_steps=4, attention="rwkv", spiking_embedding=False)


@pytest.mark.parametrize("flags, fields", VARIANTS)
def test_each_variant_trains_samples_and_evaluates(tmp_path, flags, fields):
    out = tmp_path / "run"
    code, stdout, stderr = train_cli(*flags, "--steps", 2, "--out", out)
    assert code == 0, stderr
    assert f"model variant: {' '.join(flags)}" in stdout.splitlines()
    config = json.loads((out / "config.json").read_text())
    assert {name: config[name] for name in fields} == fields
    ckpt = out / "checkpoint.safetensors"
    assert load_checkpoint(ckpt)["config"] == config
    model, checkpoint = load_model(ckpt)
    expected = build_model(TrainConfig.from_dict(config))
    assert (model.reconstruction, model.spiking, model.T) == (expected.reconstruction, expected.spiking, expected.T)
    assert model.T == config["time_steps"] and model.reconstruction == config["reconstruction"]
    assert {name for name, _ in model.named_parameters()} == set(checkpoint["model"])
    # sample and evaluate rebuild the variant from the checkpoint alone
    npz = tmp_path / "samples.npz"
    code, _, stderr = run_main(sample.main, "--ckpt", ckpt, "--num", 3, "--steps", 2, "--no-progress", "--out", npz)
    assert code == 0, stderr
    with np.load(npz) as saved:
        assert saved["images"].shape == (3, 1, 28, 28) and saved["images"].dtype == np.uint8
    report = tmp_path / "eval.json"
    code, _, stderr = run_main(evaluate.main, "--ckpt", ckpt, "--num-samples", 4, "--steps", 2,
                               "--metric", "fid-lenet,is-lenet", "--json", report)
    assert code == 0, stderr
    metrics = json.loads(report.read_text())["metrics"]
    assert np.isfinite(metrics["fid-lenet"]) and metrics["is-lenet"] >= 1.0 - 1e-9


def test_reconstruction_off_drops_its_parameters(tmp_path):
    code, _, stderr = train_cli("--no-reconstruction", "--steps", 1, "--out", tmp_path / "run")
    assert code == 0, stderr
    names = set(load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["model"])
    default = {name for name, _ in sdit_from_preset("tiny").named_parameters()}
    assert names < default  # the Reconstruction Token and gate are gone, nothing else is new


def test_resume_of_a_variant_run_rebuilds_the_variant_exactly(tmp_path):
    flags = ["--no-reconstruction", "--time-steps", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, stderr = train_cli(*flags, "--steps", 3, "--out", straight)
    assert code == 0, stderr
    code, _, stderr = train_cli(*flags, "--steps", 1, "--out", resumed)
    assert code == 0, stderr
    # no variant flags on resume: the checkpoint's variant is rebuilt
    code, stdout, stderr = run_main(train.main, "--resume", "--out", resumed, "--steps", 3, "--no-progress")
    assert code == 0, stderr
    assert_bitwise_equal_checkpoints(resumed / "checkpoint.safetensors", straight / "checkpoint.safetensors")
    config = json.loads((resumed / "config.json").read_text())
    assert (config["reconstruction"], config["time_steps"]) == (False, 2)
    # the same flags again are accepted and change nothing
    code, _, stderr = run_main(train.main, "--resume", "--out", resumed, *flags, "--steps", 3, "--no-progress")
    assert code == 0, stderr


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_dataset", fake_dataset)
        code, _, stderr = train_cli("--steps", 1, "--out", out)
    assert code == 0, stderr
    return out


@pytest.mark.parametrize("flags, fragment", [
    (["--no-reconstruction"], "not of --no-reconstruction"),
    (["--no-spiking", "--time-steps", "8"], "not of --no-spiking --time-steps 8"),
    (["--time-steps", "1"], "not of --time-steps 1"),
])
def test_resume_as_another_variant_is_one_line(default_run, tmp_path, flags, fragment):
    before = (default_run / "checkpoint.safetensors").read_bytes()
    code, _, stderr = run_main(train.main, "--resume", default_run / "checkpoint.safetensors", *flags,
                               "--out", tmp_path / "other", "--steps", 2, "--no-progress")
    assert_one_line_error(code, stderr, "holds the model of the paper's model (no variant flags)", fragment,
                          "drop the variant flags")
    assert (default_run / "checkpoint.safetensors").read_bytes() == before


def test_load_model_refuses_a_checkpoint_of_another_variant(default_run):
    path = default_run / "checkpoint.safetensors"
    model, _ = load_model(path, variant={"reconstruction": True, "time_steps": 4})
    assert model.reconstruction and model.T == 4
    with pytest.raises(CheckpointError) as caught:
        load_model(path, variant={"reconstruction": False})
    assert_one_line_message(caught.value, "holds the model of the paper's model", "not of --no-reconstruction")


@pytest.mark.parametrize("argv, code, fragments", [
    (["--time-steps", "0"], 1, ["--time-steps must be a positive integer"]),
    (["--attention", "linear"], 2, ["invalid choice: 'linear'", "--help"]),
])
def test_bad_variant_flags_are_one_line(tmp_path, argv, code, fragments):
    returned, _, stderr = train_cli(*argv, "--out", tmp_path / "run")
    assert_one_line_error(returned, stderr, *fragments)
    assert returned == code and not (tmp_path / "run").exists()
