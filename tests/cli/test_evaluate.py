"""The evaluation command line: the table and JSON name metric, N, sampler, steps and split, the
numbers are the library's metrics of the same images, a samples file is evaluated without a
checkpoint and its own settings are recorded, the MAC count is the model's own, and bad input gets
one line."""
import json
from pathlib import Path

import numpy as np
import pytest

from minisdit.cli import evaluate, sample
from minisdit.training.checkpoint import save_checkpoint
from minisdit.metrics import conv2d_macs, inception_score, lenet_outputs, linear_macs, load_lenet, reference_statistics
from minisdit.metrics.fid import FeatureStatistics
from minisdit.models import PRESETS, sdit_from_preset
from minisdit.models.sdit import SDiTBlock
from minisdit.training.config import TrainConfig
from tests.helpers import assert_one_line_error as one_line_error, run_main


def run_cli(*argv, cli=evaluate):
    return run_main(cli.main, *argv)


def assert_one_line_error(code, stderr, *fragments):
    return one_line_error(code, stderr, *fragments, exit_code=1)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    state = {name: (value + 0.05 * rng.standard_normal(value.shape)).astype(value.dtype)
             for name, value in sdit_from_preset("tiny", seed=0).state_dict().items()}
    config = TrainConfig(preset="tiny", device="cpu").to_dict()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    save_checkpoint(path, model_state=state, step=7, config=config, rng_states={})
    return path


def test_lenet_metrics_of_a_samples_file_match_the_library(checkpoint_path, tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 1, 28, 28)).astype(np.uint8)
    images[:15, :, 8:20, 12:16] = 255  # not all noise, so the two halves differ
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=images, labels=np.arange(30) % 10)
    out = tmp_path / "eval.json"
    code, stdout, stderr = run_cli("--ckpt", checkpoint_path, "--samples", samples, "--num-samples", 30,
                                   "--metric", "fid-lenet,is-lenet", "--json", out)
    assert code == 0, stderr
    results = json.loads(out.read_text())
    lenet = load_lenet("mnist")
    features, probabilities = lenet_outputs(images, lenet)
    expected_fid = FeatureStatistics.from_features(features).frechet_distance(reference_statistics("mnist"))
    assert results["metrics"]["fid-lenet"] == pytest.approx(expected_fid, rel=1e-9)
    assert results["metrics"]["is-lenet"] == pytest.approx(inception_score(probabilities)[0], rel=1e-9)
    assert (results["num_samples"], results["split"], results["dataset"], results["step"]) == (30, "test", "mnist", 7)
    table = [line for line in stdout.splitlines() if line.startswith(("fid-lenet", "is-lenet"))]
    assert len(table) == 2 and all(" 30 " in line and "test (mnist)" in line for line in table)


def test_class_lenet_is_the_share_read_as_the_requested_class(checkpoint_path, tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 1, 28, 28)).astype(np.uint8)
    labels = np.arange(40) % 10
    read = np.argmax(lenet_outputs(images, load_lenet("mnist"))[1], axis=1)
    labels[:12] = read[:12]  # some samples read as their label, so the share is neither 0 nor chance by accident
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=images, labels=labels)
    out = tmp_path / "eval.json"
    code, stdout, stderr = run_cli("--samples", samples, "--dataset", "mnist", "--metric", "class-lenet", "--json", out)
    assert code == 0, stderr
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["class-lenet"] == pytest.approx(np.mean(read == labels), rel=1e-12) and metrics["class-lenet"] >= 0.3
    for k, share in metrics["class-lenet per class"].items():
        assert share == pytest.approx(np.mean(read[labels == int(k)] == int(k)), rel=1e-12)
    assert "class-lenet per class: 0: " in stdout
    bare = tmp_path / "bare.npz"
    np.savez(bare, images=images)
    code, _, stderr = run_cli("--samples", bare, "--dataset", "mnist", "--metric", "class-lenet")
    assert_one_line_error(code, stderr, "class-lenet needs the labels")


def test_sampling_run_with_energy_reports_rates_and_settings(checkpoint_path, tmp_path):
    out = tmp_path / "eval.json"
    code, stdout, stderr = run_cli("--ckpt", checkpoint_path, "--num-samples", 4, "--sampler", "ddim", "--steps", 2,
                                   "--metric", "is-lenet", "--energy", "--json", out, "--device", "cpu")
    assert code == 0, stderr
    results = json.loads(out.read_text())
    assert (results["sampler"], results["steps"], results["num_samples"]) == ("ddim", 2, 4)
    assert 1.0 <= results["metrics"]["is-lenet"] <= 10.0
    energy = results["energy"]
    assert len(energy["firing_rates"]) == 6 and all(0.0 <= r <= 1.0 for r in energy["firing_rates"].values())
    assert energy["macs_per_forward"] > 0 and energy["snn_energy_uj"] <= energy["ann_energy_uj"]
    assert "ddim, 2 steps" in stdout


def test_unknown_metric_is_one_line(checkpoint_path):
    code, stdout, stderr = run_cli("--ckpt", checkpoint_path, "--metric", "fid-lenet,bogus")
    assert code == 1 and stderr.strip().count("\n") == 0
    assert "unknown metric 'bogus'" in stderr and "fid-inception" in stderr


def test_missing_checkpoint_is_one_line(tmp_path):
    code, _, stderr = run_cli("--ckpt", tmp_path / "nothing.safetensors")
    assert code == 1 and stderr.startswith("error: ") and stderr.strip().count("\n") == 0


def hand_made_samples(path: Path, **arrays) -> Path:
    images = np.random.default_rng(3).integers(0, 256, (12, 1, 28, 28)).astype(np.uint8)
    np.savez(path, **{"images": images, "labels": np.arange(12) % 10, **arrays})
    return path


def test_a_file_of_minisdit_sample_needs_no_checkpoint_and_its_settings_are_recorded(checkpoint_path, tmp_path):
    samples = tmp_path / "drawn.npz"
    code, _, stderr = run_cli("--ckpt", checkpoint_path, "--num", 6, "--sampler", "ddim", "--eta", 0.3, "--cfg-scale", 2,
                              "--guidance-min-t", 3, "--seed", 5, "--steps", 2, "--no-progress", "--out", samples,
                              cli=sample)
    assert code == 0, stderr
    code, stdout, stderr = run_cli("--samples", samples, "--metric", "is-lenet")
    assert code == 0, stderr
    results = json.loads(samples.with_suffix(".eval.json").read_text())  # the default place without --ckpt
    assert {name: results[name] for name in evaluate.SAMPLE_SETTINGS} == {
        "sampler": "ddim", "steps": 2, "cfg_scale": 2.0, "eta": 0.3, "clip_denoised": False,
        "variance": "learned", "guidance_min_t": 3, "seed": 5,
        "checkpoint_step": 7, "weights": "model"}
    assert (results["checkpoint"], results["step"], results["dataset"], results["samples"]) == (None, 7, "mnist",
                                                                                               str(samples))
    with np.load(samples) as drawn:
        expected = inception_score(lenet_outputs(drawn["images"], load_lenet("mnist"))[1], splits=1)[0]
    assert results["metrics"]["is-lenet"] == pytest.approx(expected, rel=1e-9)
    assert any(line.startswith("is-lenet") and "ddim, 2 steps, cfg 2.0" in line for line in stdout.splitlines())


def test_the_dataset_of_a_bare_samples_file_comes_from_the_option(tmp_path):
    samples = hand_made_samples(tmp_path / "bare.npz")
    code, _, stderr = run_cli("--samples", samples, "--metric", "is-lenet")
    assert_one_line_error(code, stderr, "no dataset to compare with", "--dataset")
    out = tmp_path / "bare.json"
    code, stdout, stderr = run_cli("--samples", samples, "--metric", "is-lenet", "--dataset", "mnist", "--json", out)
    assert code == 0, stderr
    results = json.loads(out.read_text())
    assert results["dataset"] == "mnist" and results["num_samples"] == 12 and results["sampling_seconds"] is None
    assert all(results[name] is None for name in evaluate.SAMPLE_SETTINGS)  # the file does not say
    assert f"from {samples}" in stdout
    labelled = hand_made_samples(tmp_path / "labelled.npz", dataset=np.array("mnist"))
    code, _, stderr = run_cli("--samples", labelled, "--metric", "is-lenet", "--dataset", "cifar10")
    assert_one_line_error(code, stderr, "the dataset sources disagree", "--dataset: cifar10",
                          "the samples file: mnist")


def test_bad_samples_files_and_missing_inputs_are_one_line(checkpoint_path, tmp_path):
    no_images = tmp_path / "no_images.npz"
    np.savez(no_images, pictures=np.zeros((2, 1, 28, 28), np.uint8))
    code, _, stderr = run_cli("--ckpt", checkpoint_path, "--samples", no_images)
    assert_one_line_error(code, stderr, "holds no 'images' array", "pictures", "python -m minisdit.sample")
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.zeros((2, 1, 28, 28)))
    code, _, stderr = run_cli("--samples", floats, "--dataset", "mnist")
    assert_one_line_error(code, stderr, "'images' must be uint8 (N, C, H, W)", "float64")
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    code, _, stderr = run_cli("--samples", text, "--dataset", "mnist")
    assert_one_line_error(code, stderr, "cannot read --samples", "not an .npz archive")
    code, _, stderr = run_cli("--samples", tmp_path / "absent.npz", "--dataset", "mnist")
    assert_one_line_error(code, stderr, "absent.npz does not exist")
    code, _, stderr = run_cli("--metric", "is-lenet")
    assert_one_line_error(code, stderr, "nothing to evaluate", "--ckpt", "--samples")
    code, _, stderr = run_cli("--samples", hand_made_samples(tmp_path / "s.npz"), "--dataset", "mnist", "--energy")
    assert_one_line_error(code, stderr, "--energy", "give --ckpt")


def test_steps_are_checked_against_the_checkpoints_diffusion(checkpoint_path):
    code, _, stderr = run_cli("--ckpt", checkpoint_path, "--num-samples", 2, "--steps", 1001, "--metric", "is-lenet")
    assert_one_line_error(code, stderr, "--steps must lie in 1..1000")
    code, _, stderr = run_cli("--ckpt", checkpoint_path, "--num-samples", 2, "--steps", 2, "--eta", 0.5)
    assert_one_line_error(code, stderr, "--eta 0.5 applies to the DDIM sampler only")


def formula_macs(model) -> int:
    """The MAC count that evaluate.count_macs computed from the model's shapes before it recorded them."""
    d, m = model.hidden_size, model.num_tokens
    z = 2 * m if model.reconstruction else m
    block = linear_macs(z, d, 4 * d) + linear_macs(z, d, 4 * d) + linear_macs(z, 4 * d, d) + linear_macs(z, d, d)
    if model.reconstruction:
        block += linear_macs(m, d, m) + linear_macs(m, m, d)
    blocks = sum(1 for module in model.modules() if isinstance(module, SDiTBlock))
    skips = len(model.out_blocks) * linear_macs(m, 2 * d, d)
    grid = model.grid_size[0] * model.grid_size[1]
    p, c = model.patch_size, model.in_channels
    embed = conv2d_macs(*model.grid_size, c, d, p, p) + linear_macs(1, 256, d) + linear_macs(1, d, d)
    head = linear_macs(grid, d, p * p * model.out_channels) + conv2d_macs(
        model.input_size, model.input_size, model.out_channels, model.out_channels, 3, 3)
    return int(blocks * block + skips + embed + head)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_count_macs_is_the_formula_of_the_model_shapes(preset, in_channels):
    """The recorded count equals the shape formula plus one term the formula left out: the head's
    Linear(D -> p² 2C) also runs on the condition token 0, which is dropped after it."""
    model = sdit_from_preset(preset, in_channels=in_channels)
    model.train()
    head_on_token_0 = linear_macs(1, model.hidden_size, model.patch_size ** 2 * model.out_channels)
    assert evaluate.count_macs(model) == formula_macs(model) + head_on_token_0
    assert model.training  # left as it was
