"""The evaluation command line: the table and JSON name metric, N, sampler, steps and split, the
numbers are the library's metrics of the same images, and bad input gets one line."""
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from minisdit.cli import evaluate
from minisdit.training.checkpoint import save_checkpoint
from minisdit.metrics import inception_score, lenet_outputs, load_lenet, reference_statistics
from minisdit.metrics.fid import FeatureStatistics
from minisdit.models import sdit_from_preset


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    state = {name: (value + 0.05 * rng.standard_normal(value.shape)).astype(value.dtype)
             for name, value in sdit_from_preset("tiny", seed=0).state_dict().items()}
    config = {"preset": "tiny", "dataset": "mnist", "in_channels": 1, "input_size": 28, "seed": 0}
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    save_checkpoint(path, model_state=state, step=7, config=config, rng_states={})
    return path


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = evaluate.main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


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
