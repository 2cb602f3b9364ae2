"""python -m minisdit.ablate: every variant in the table and the JSON, the same seed and options for
all, a killed ablation resumes (finished variants are not retrained, the half-trained one resumes
exactly, finished evaluations are reused), a --minutes budget, and one-line errors.

Tiny preset on 12 fake 28x28 images (minisdit.data.load_dataset replaced, as in
tests/training/test_train.py), batch 4, one process, 2 steps, N = 10 samples of 2 DDPM steps.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minisdit import data
from minisdit.cli import ablate
from minisdit.training import ablation
from minisdit.training.config import CPU_RECIPE
from minisdit.training.trainer import Trainer
from tests.helpers import assert_one_line_error, run_main
from tests.training.test_train import assert_bitwise_equal_checkpoints, fake_dataset

EXISTING = ["default", "no-reconstruction", "no-spiking", "T1", "T8"]  # the variants today's SDiT can build
FAST = ["--steps", "2", "--batch-size", "4", "--workers", "1", "--lr", "1e-3", "--seed", "5", "--num-samples", "10",
        "--sample-steps", "2", "--sample-num", "2", "--log-every", "1", "--no-progress"]


def run_cli(*argv):
    return run_main(ablate.main, *argv)


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    monkeypatch.setattr(data, "load_dataset", fake_dataset)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted ablation of the variants that exist: (its folder, stdout)."""
    out = tmp_path_factory.mktemp("ablation") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_dataset", fake_dataset)
        code, stdout, stderr = run_cli(*FAST, "--variants", ",".join(EXISTING), "--out", out)
    assert code == 0, stderr
    return out, stdout


def table_rows(markdown: str) -> dict:
    """{variant: {heading: cell}} of the table in ablation.md."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    headings = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(headings, row)) for row in rows}


def test_the_table_and_the_json_hold_every_variant(finished):
    out, _ = finished
    markdown = (out / "ablation.md").read_text()
    rows = table_rows(markdown)
    assert list(rows) == EXISTING
    for row in rows.values():
        assert row["steps"] == "2"
        for heading in ("FID_LeNet", "IS (LeNet)", "LeNet reads the class", "train img/s", "SNN energy (µJ)"):
            assert row[heading] != "n/a", heading
    assert rows["no-spiking"]["mean firing rate"] == "n/a"  # no spiking layer to count
    assert rows["no-reconstruction"]["minisdit.train flags"] == "--no-reconstruction"
    assert rows["T8"]["minisdit.train flags"] == "--time-steps 8"
    assert rows["default"]["what it changes"] == "the paper's model"
    assert rows["no-spiking"]["what it changes"] == "every SN is the identity (an ANN)"
    # what was compared and how is stated
    assert "N = 10 samples" in markdown and "sampler ddpm, 2 steps" in markdown and "guidance (cfg) 5.0" in markdown
    assert "guidance (cfg) 5.0 at t >= 200, posterior variance" in markdown  # the CPU recipe's sampler options
    assert "seed 5" in markdown and "budget 2 steps" in markdown
    report = json.loads((out / "ablation.json").read_text())
    assert [row["name"] for row in report["variants"]] == EXISTING
    assert report["settings"]["num_samples"] == 10 and report["settings"]["sampler"] == "ddpm"
    assert report["settings"]["guidance_min_t"] == 200 and report["settings"]["sample_variance"] == "posterior"
    for row in report["variants"]:
        assert np.isfinite(row["fid_lenet"]) and 0 <= row["label_accuracy"] <= 1 and row["images_per_second"] > 0
        evaluation = json.loads((out / row["name"] / "eval.json").read_text())
        assert evaluation["fid_lenet"] == row["fid_lenet"] and evaluation["settings"]["step"] == 2
        with np.load(out / row["name"] / "samples.npz") as saved:
            assert saved["images"].shape == (10, 1, 28, 28)
            assert np.array_equal(saved["labels"], np.arange(10) % 10)
    # the reconstruction module's parameters are gone in its variant, T is recorded
    by_name = {row["name"]: row for row in report["variants"]}
    assert by_name["no-reconstruction"]["parameters"] < by_name["default"]["parameters"]
    for name in ("samples.png", "losses.png"):
        with Image.open(out / name) as picture:
            picture.load()
            assert picture.width > picture.height > 0  # the grids side by side


def test_every_variant_trains_with_the_same_options_and_its_own_fields(finished):
    out, _ = finished
    configs = {name: json.loads((out / name / "config.json").read_text()) for name in EXISTING}
    expected = {"default": {}, "no-reconstruction": {"reconstruction": False}, "no-spiking": {"spiking": False},
                "T1": {"time_steps": 1}, "T8": {"time_steps": 8}}
    for name, config in configs.items():
        variant = {key: config[key] for key in ("reconstruction", "spiking", "time_steps", "attention",
                                                "spiking_embedding")}
        assert variant == {**dict(reconstruction=True, spiking=True, time_steps=4, attention="rwkv",
                                  spiking_embedding=False), **expected[name]}
        rest = {key: value for key, value in config.items() if key not in variant}
        first = {key: value for key, value in configs["default"].items() if key not in variant}
        assert rest == first  # seed, data, budget and every training option: the same for all
    assert configs["T1"]["seed"] == 5 and configs["T1"]["lr"] == 1e-3 and configs["T1"]["batch_size"] == 4
    assert configs["T1"]["mse_weighting"] == CPU_RECIPE.mse_weighting  # the rest: the CPU recipe


def snapshot(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in ("checkpoint.safetensors", "log.jsonl", "eval.json",
                                                             "samples.npz", "done.json")}


def test_a_longer_list_trains_only_the_new_variant(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    before = {name: snapshot(out / name) for name in EXISTING}
    code, stdout, stderr = run_cli(*FAST, "--variants", ",".join(EXISTING + ["T2"]), "--out", out)
    assert code == 0, stderr
    for name in EXISTING:
        assert f"{name}: training done already" in stdout and f"{name}: evaluation reused" in stdout
        assert snapshot(out / name) == before[name], name
    assert "T2: training trained" in stdout and "T2: evaluation done" in stdout
    assert list(table_rows((out / "ablation.md").read_text())) == EXISTING + ["T2"]


def test_a_killed_ablation_resumes_the_half_trained_variant_exactly(finished, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    original = Trainer.forward_backward

    def interrupt_the_second_variants_second_step(trainer, *args, **kwargs):
        calls.append(trainer.out.name)
        if calls.count("no-reconstruction") == 2:
            raise KeyboardInterrupt
        return original(trainer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "forward_backward", interrupt_the_second_variants_second_step)
    variants = "default,no-reconstruction,T1"
    code, stdout, _ = run_cli(*FAST, "--variants", variants, "--out", out)
    assert code == 130 and "ablation stopped while training no-reconstruction" in stdout
    assert json.loads((out / "no-reconstruction" / "train_time.json").read_text())["step"] == 1
    assert not (out / "no-reconstruction" / "done.json").exists() and not (out / "T1").exists()
    first = snapshot(out / "default")
    monkeypatch.setattr(Trainer, "forward_backward", original)
    code, stdout, stderr = run_cli(*FAST, "--variants", variants, "--out", out)
    assert code == 0, stderr
    assert "default: training done already" in stdout and "default: evaluation reused" in stdout
    assert snapshot(out / "default") == first
    assert "no-reconstruction: training resumed" in stdout and "T1: training trained" in stdout
    for name in variants.split(","):  # as if never stopped
        assert_bitwise_equal_checkpoints(out / name / "checkpoint.safetensors",
                                         finished[0] / name / "checkpoint.safetensors")
        assert json.loads((out / name / "eval.json").read_text())["fid_lenet"] == \
            json.loads((finished[0] / name / "eval.json").read_text())["fid_lenet"]


def test_a_larger_budget_trains_the_finished_variants_further(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0] / "T1", out / "T1")
    code, stdout, stderr = run_cli("--steps", 3, *FAST[2:], "--variants", "T1", "--out", out)
    assert code == 0, stderr
    assert "T1: training resumed" in stdout and "T1: evaluation done" in stdout
    assert json.loads((out / "T1" / "done.json").read_text())["step"] == 3


def test_a_minutes_budget_counts_the_seconds_trained_across_sessions(tmp_path):
    """A clock that advances one second per reading: the budget ends after a fixed number of steps,
    and a resumed session goes on from the seconds the first one recorded."""
    ticks = iter(range(10 ** 6))
    images, labels = fake_dataset()
    config = dataclasses.replace(CPU_RECIPE, batch_size=4, workers=1, steps=1000, sample_every=10 ** 9, sample_steps=2,
                                 sample_num=2, log_every=1)
    out = tmp_path / "T1"
    code, what = ablation.train_variant(config, images, labels, out, budget=ablation.budget_of(None, 0.1),
                                        clock=lambda: float(next(ticks)))
    done = json.loads((out / "done.json").read_text())
    assert (code, what) == (0, "trained") and 1 <= done["step"] < 1000 and done["seconds"] >= 6
    code, what = ablation.train_variant(config, images, labels, out, budget=ablation.budget_of(None, 0.1))
    assert (code, what) == (0, "done already")
    code, what = ablation.train_variant(config, images, labels, out, budget=ablation.budget_of(None, 0.2),
                                        clock=lambda: float(next(ticks)))
    more = json.loads((out / "done.json").read_text())
    assert (code, what) == (0, "resumed") and done["step"] < more["step"] < 1000 and more["seconds"] >= 12


def test_the_rate_stays_constant_unless_a_decay_is_asked_for(finished, tmp_path):
    """The CPU recipe decays the rate over its last 30 % of steps, which would move with the budget; an
    ablation trains at a constant rate (a larger --steps then extends a finished variant exactly, and a
    --minutes budget has no last steps), and decays only with --lr-decay-fraction."""
    assert CPU_RECIPE.lr_decay_fraction == 0.3
    assert json.loads((finished[0] / "default" / "config.json").read_text())["lr_decay_fraction"] == 0.0
    out = tmp_path / "minutes"
    code, _, stderr = run_cli(*FAST[2:], "--minutes", "0.0001", "--variants", "default", "--out", out)  # no --steps
    assert code == 0, stderr
    config = json.loads((out / "default" / "config.json").read_text())
    assert config["lr_decay_fraction"] == 0.0 and config["steps"] == ablate.MINUTES_STEP_CAP
    out = tmp_path / "decay"
    code, _, stderr = run_cli(*FAST, "--lr-decay-fraction", "0.5", "--variants", "default", "--out", out)
    assert code == 0, stderr
    assert json.loads((out / "default" / "config.json").read_text())["lr_decay_fraction"] == 0.5


def test_options_that_change_a_finished_variant_are_one_line(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0] / "T1", out / "T1")
    options = [a if a != "1e-3" else "2e-3" for a in FAST]
    code, _, stderr = run_cli(*options, "--variants", "T1", "--out", out)
    assert_one_line_error(code, stderr, "holds a run trained with lr 0.001, not 0.002", "choose another --out")


@pytest.mark.parametrize("argv, fragments", [
    (["--variants", "default,attention-free"], ["unknown variant 'attention-free'", "no-reconstruction", "T<K>"]),
    (["--variants", "T0"], ["unknown variant 'T0'"]),
    (["--variants", "T1,T1"], ["--variants names T1 more than once"]),
    (["--variants", "T1+T8"], ["sets time_steps twice"]),
    (["--variants", ","], ["--variants is empty"]),
])
def test_bad_variant_names_are_one_line(tmp_path, argv, fragments):
    code, _, stderr = run_cli(*FAST, *argv, "--out", tmp_path / "out")
    assert_one_line_error(code, stderr, *fragments, exit_code=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, fragments", [
    ([], ["give the budget of every variant: --steps N or --minutes M"]),
    (["--minutes", "0"], ["--minutes must be positive"]),
    (["--minutes", "1", "--lr-decay-fraction", "0.2"], ["--lr-decay-fraction needs the run's length in steps"]),
    (["--steps", "2", "--num-samples", "0"], ["--num-samples must be a positive integer"]),
    (["--steps", "2", "--preset", "huge"], ["unknown preset 'huge'"]),
])
def test_bad_budgets_and_options_are_one_line(tmp_path, argv, fragments):
    code, _, stderr = run_cli(*FAST[2:], *argv, "--out", tmp_path / "out")
    assert_one_line_error(code, stderr, *fragments, exit_code=1)


@pytest.mark.parametrize("name, keyword", [("softmax", "attention"), ("spiking-embedding", "spiking_embedding")])
def test_the_new_variants_train_and_evaluate(tmp_path, name, keyword):
    out = tmp_path / "out"
    code, _, stderr = run_cli(*FAST, "--variants", f"default,{name}", "--out", out)
    assert code == 0, stderr
    assert list(table_rows((out / "ablation.md").read_text())) == ["default", name]
    assert json.loads((out / name / "config.json").read_text())[keyword] == ablation.VARIANTS[name][keyword]


@pytest.mark.gpu
def test_an_ablation_on_the_gpu(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(*FAST, "--device", "gpu", "--variants", "default,no-reconstruction", "--out", out)
    assert code == 0, stderr
    assert stdout.splitlines()[0].startswith("device: gpu (")
    report = json.loads((out / "ablation.json").read_text())
    assert report["settings"]["device"] == "gpu" and report["settings"]["cfg_scale"] == ablate.GPU_CFG_SCALE
    assert report["settings"]["guidance_min_t"] == 0 and report["settings"]["sample_variance"] == "learned"
    assert all(np.isfinite(row["fid_lenet"]) for row in report["variants"])
