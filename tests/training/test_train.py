"""The training command line: outputs, exact resume, Ctrl-C / SIGTERM, and one-line errors.

Runs use the tiny preset on 12 fake 28x28 images (minisdit.data.load_dataset is replaced, so no
real data set is needed), batch 4 (3 batches per epoch, so 4 steps cross an epoch boundary),
sample grids of 2 images with 2 DDPM steps.  EMA, warm-up and gradient clipping are on in the
reference run so that resuming has to restore all of them.
"""
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minisdit import backend, data, diffusion
from minisdit.autograd import optim
from minisdit.cli import train
from minisdit.training.checkpoint import load_checkpoint, save_checkpoint
from minisdit.training.config import CPU_RECIPE
from tests.helpers import assert_one_line_error, run_main

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
COMMON = ["--batch-size", "4", "--lr", "1e-3", "--ema", "0.9", "--warmup-steps", "2", "--grad-clip", "1.0",
          "--seed", "3", "--sample-steps", "2", "--sample-num", "2", "--sample-every", "1000",
          "--ckpt-every", "1000", "--log-every", "1", "--no-progress"]


def run_cli(*argv):
    return run_main(train.main, *argv)


def fake_dataset(*args, **kwargs):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (12, 1, 28, 28), dtype=np.uint8)
    return images, np.arange(12, dtype=np.int64) % 10


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    monkeypatch.setattr(data, "load_dataset", fake_dataset)


def log_records(out: Path) -> list:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_bitwise_equal_checkpoints(a: Path, b: Path):
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"]
    for part in ("model", "optimizer", "ema"):
        assert (first[part] is None) == (second[part] is None), part
        if first[part] is None:
            continue
        assert set(first[part]) == set(second[part]), part
        for name in first[part]:
            assert np.array_equal(first[part][name], second[part][name]), f"{part}.{name} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of STEPS steps with a checkpoint every step, each one also copied to
    snapshots/step<N>.safetensors: (run folder, stdout, snapshot path of step N)."""
    from minisdit.training.trainer import Trainer

    root = tmp_path_factory.mktemp("reference")
    out, snapshots = root / "run", root / "snapshots"
    snapshots.mkdir()
    save = Trainer.save

    def save_and_keep_a_copy(trainer):
        path = save(trainer)
        shutil.copy(path, snapshots / f"step{trainer.step}.safetensors")
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_dataset", fake_dataset)
        patch.setattr(Trainer, "save", save_and_keep_a_copy)
        code, stdout, stderr = run_cli(*COMMON, "--steps", STEPS, "--ckpt-every", 1, "--sample-every", 2, "--out", out)
    assert code == 0, stderr
    return out, stdout, lambda step: snapshots / f"step{step}.safetensors"


# ----- outputs -----

def test_a_run_writes_config_log_checkpoint_and_pictures(reference):
    out, stdout, _ = reference
    lines = stdout.splitlines()
    if backend.gpu_available():
        assert lines[0].startswith("device: gpu (")
    else:  # the first line names the device and why: here, why the GPU could not be used
        assert lines[0].startswith("device: cpu (no usable GPU: ") and "cupy" in lines[0].lower()
    assert lines[-1].startswith(f"done: {STEPS} steps")
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "tiny" and config["batch_size"] == 4 and config["steps"] == STEPS
    assert config["workers"] == 2  # the CPU default: two processes share each batch
    assert config["mse_weighting"] == "truncated-snr" and config["max_mse_weight"] == 5.0 and config["cfg_scale"] == 5.0
    assert config["lr_decay_fraction"] == 0.3  # the CPU recipe's cooldown
    assert config["ema"] == 0.9 and config["seed"] == 3 and config["dataset"] == "mnist"
    assert config["guidance_min_t"] == 200 and config["sample_variance"] == "posterior"  # the CPU recipe's grids
    records = log_records(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert np.isfinite(r["loss"]) and r["loss"] > 0 and r["images_per_second"] > 0
        # the CPU default weights each ε-MSE by λ_t in [1, 30] (truncated SNR): mean(λ mse + vb)
        assert r["mse"] + r["vb"] - 1e-5 <= r["loss"] <= 30 * r["mse"] + r["vb"] + 1e-5
    assert [r["lr"] for r in records] == [5e-4, 1e-3, 1e-3, 1e-3]  # two warm-up steps
    for name in ("samples_final.png", "samples_step0000002.png", "loss.png"):
        with Image.open(out / name) as picture:
            picture.load()
            assert picture.width > 0 and picture.height > 0
    with Image.open(out / "samples_final.png") as picture:  # 2 images in one row, padding 2, scale 2
        assert picture.size == ((2 * 30 + 2) * 2, (30 + 2) * 2)
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    assert checkpoint["step"] == STEPS and checkpoint["ema"] is not None and checkpoint["optimizer"] is not None
    assert checkpoint["rng_states"]["seed"] == 3 and checkpoint["rng_states"]["next_step"] == STEPS
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors", "config.json", "log.jsonl", "loss.png", "samples_final.png",
        "samples_step0000002.png"]  # the last step's grid is samples_final.png alone
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[2](STEPS))


# ----- exact resume -----

def test_the_final_grid_is_drawn_with_the_configs_sampler_options(reference, tmp_path):
    """samples_final.png = generate() of the EMA weights with the config's steps, guidance, guidance cut
    and variance (and not the picture the defaults of generate would draw)."""
    from minisdit.data.images import save_grid, to_uint8
    from minisdit.training.checkpoint import load_model
    from minisdit.training.config import build_diffusion

    out = reference[0]
    model, checkpoint = load_model(out / "checkpoint.safetensors")
    config = checkpoint["train_config"]
    labels = np.arange(config.sample_num) % model.num_classes

    def grid(**options):
        images = diffusion.generate(build_diffusion(config), model, labels, sampler="ddpm", steps=config.sample_steps,
                                    seed=config.seed, cfg_scale=config.cfg_scale, **options)
        with Image.open(save_grid(to_uint8(images), tmp_path / "grid.png", columns=len(labels))) as picture:
            return np.asarray(picture)

    with Image.open(out / "samples_final.png") as picture:
        drawn = np.asarray(picture)
    assert np.array_equal(drawn, grid(guidance_min_t=config.guidance_min_t, variance=config.sample_variance))
    assert not np.array_equal(drawn, grid())


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    # how often samples and checkpoints are written must not change the weights
    code, _, stderr = run_cli(*COMMON, "--steps", STEPS // 2, "--out", out)
    assert code == 0, stderr
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[2](STEPS // 2))
    # a crash after the checkpoint may have logged later steps; the resumed run must replace them
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": STEPS // 2 + 1, "loss": 123.0}) + "\n")
    code, stdout, stderr = run_cli("--resume", "--out", out, "--steps", STEPS, "--no-progress")
    assert code == 0, stderr
    lines = [line for line in stdout.splitlines() if not line.startswith("LIF and WKV run as ")]
    assert lines[0].startswith("device: ")
    assert lines[1] == f"resuming from {out / 'checkpoint.safetensors'} at step {STEPS // 2}"
    assert lines[2] == "changed on resume: steps 2 -> 4"
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[0] / "checkpoint.safetensors")
    resumed = [(r["step"], r["loss"], r["lr"]) for r in log_records(out)]
    straight = [(r["step"], r["loss"], r["lr"]) for r in log_records(reference[0])]
    assert resumed == straight


def test_resume_is_exact_with_one_worker_too(tmp_path):
    # the reference run uses the CPU default (2 worker processes); one process alone must resume exactly too
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, stderr = run_cli(*COMMON, "--workers", 1, "--steps", STEPS, "--out", straight)
    assert code == 0, stderr
    assert json.loads((straight / "config.json").read_text())["workers"] == 1
    code, _, stderr = run_cli(*COMMON, "--workers", 1, "--steps", STEPS // 2, "--out", resumed)
    assert code == 0, stderr
    code, _, stderr = run_cli("--resume", "--out", resumed, "--steps", STEPS, "--no-progress")
    assert code == 0, stderr
    assert_bitwise_equal_checkpoints(resumed / "checkpoint.safetensors", straight / "checkpoint.safetensors")


def count_calls(monkeypatch, owner, name, action):
    """Wrap owner.name so that action(call_index, original, *args, **kwargs) runs instead."""
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(None)
        return action(len(calls) - 1, original, *args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_ctrl_c_saves_the_step_and_resume_continues_exactly(reference, tmp_path, monkeypatch):
    def interrupt_second_step(index, original, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the second forward pass
        return original(*args, **kwargs)

    count_calls(monkeypatch, diffusion.GaussianDiffusion, "training_losses", interrupt_second_step)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(*COMMON, "--steps", STEPS, "--out", out)
    assert code == 130, stderr
    assert f"interrupted (KeyboardInterrupt): saved step 1 to {out / 'checkpoint.safetensors'}" in stdout
    assert f"continue with: python -m minisdit.train --resume --out {out}" in stdout
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[2](1))
    assert [r["step"] for r in log_records(out)] == [1]

    monkeypatch.undo()
    monkeypatch.setattr(data, "load_dataset", fake_dataset)
    code, _, stderr = run_cli("--resume", "--out", out, "--steps", 2, "--no-progress")
    assert code == 0, stderr
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[2](2))


def test_a_signal_during_the_update_waits_for_the_step_to_finish(reference, tmp_path, monkeypatch):
    """SIGTERM between the AdamW update and the EMA update of step 3: stopping there would save a
    half-updated state; the handler holds the signal until the step is whole, saves step 3, exits 143."""
    def terminate_before_third_ema_update(index, original, *args, **kwargs):
        if index == 2:
            signal.raise_signal(signal.SIGTERM)
        return original(*args, **kwargs)

    count_calls(monkeypatch, optim.EMA, "update", terminate_before_third_ema_update)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(*COMMON, "--steps", STEPS, "--out", out)
    assert code == 128 + signal.SIGTERM, stderr
    assert "interrupted (SIGTERM): saved step 3" in stdout
    assert load_checkpoint(out / "checkpoint.safetensors")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back
    # exactly the state of step 3 of the uninterrupted run: nothing half-updated
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[2](3))


SIGINT_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from minisdit import data
    from minisdit.cli import train

    def fake_dataset(*args, **kwargs):
        rng = np.random.default_rng(7)
        return rng.integers(0, 256, (12, 1, 28, 28), dtype=np.uint8), np.arange(12) % 10

    data.load_dataset = fake_dataset
    sys.exit(train.main(sys.argv[1:]))
""")


def test_ctrl_c_in_a_real_process(tmp_path):
    """SIGINT to a training process (what Ctrl-C sends): exit code 130, checkpoint at the last
    logged step, a message how to resume, no traceback."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, *COMMON, "--steps", "1000", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        # with --no-progress the run prints "step 1/1000 ..." after writing the step's log line:
        # signal it then, without polling the clock
        before = []
        for line in process.stdout:
            before.append(line)
            if line.startswith("step "):
                break
        else:
            pytest.fail(f"the training process ended before its first step: {process.communicate()}")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        stdout = "".join(before) + stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (SIGINT): saved step" in stdout
    assert "--resume --out" in stdout
    step = load_checkpoint(out / "checkpoint.safetensors")["step"]
    assert step >= 1 and [r["step"] for r in log_records(out)] == list(range(1, step + 1))


# ----- NaN / inf -----

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    def nan_at_third_step(index, original, *args, **kwargs):
        losses = original(*args, **kwargs)
        if index == 2:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    count_calls(monkeypatch, diffusion.GaussianDiffusion, "training_losses", nan_at_third_step)
    out = tmp_path / "run"
    code, _, stderr = run_cli(*COMMON, "--steps", STEPS, "--ckpt-every", 1, "--out", out)
    path = out / "checkpoint.safetensors"
    assert_one_line_error(code, stderr, "loss became nan at step 3", f"last good checkpoint is {path} (step 2)",
                          "lower --lr", "--resume")
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 2
    assert all(np.isfinite(value).all() for value in checkpoint["model"].values())
    # what the message advises works: resume with a lower learning rate
    monkeypatch.undo()
    monkeypatch.setattr(data, "load_dataset", fake_dataset)
    code, stdout, stderr = run_cli("--resume", "--out", out, "--lr", "5e-4", "--steps", 3, "--no-progress")
    assert code == 0, stderr
    assert "changed on resume: lr 0.001 -> 0.0005" in stdout
    assert [(r["step"], r["lr"]) for r in log_records(out)] == [(1, 5e-4), (2, 1e-3), (3, 5e-4)]


def test_a_huge_learning_rate_diverges_with_a_clear_message(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = run_cli(*COMMON, "--grad-clip", 0, "--warmup-steps", 0, "--lr", "1e8", "--steps", STEPS,
                              "--ckpt-every", 1, "--out", out)
    line = assert_one_line_error(code, stderr, "training stopped", "lower --lr or set --grad-clip, then --resume")
    assert re.search(r"(loss became (nan|inf|-inf) at step \d+|weights became non-finite)", line), line
    named = re.search(r"last good checkpoint is (\S+) \(step (\d+)\)", line)
    if named:  # the checkpoint it names is there, at that step, and sound
        checkpoint = load_checkpoint(named.group(1))
        assert checkpoint["step"] == int(named.group(2))
        assert all(np.isfinite(value).all() for value in checkpoint["model"].values())
    else:
        assert "no checkpoint was written yet" in line


# ----- one-line errors -----

@pytest.mark.parametrize("argv, code, fragments", [
    (["--dataset", "imagenet"], 1, ["unknown dataset 'imagenet'", "mnist, fashion-mnist, cifar10"]),
    (["--preset", "huge"], 1, ["unknown preset 'huge'", "tiny, small, paper, paper-cifar"]),
    (["--batch-size", "0"], 1, ["--batch-size must be a positive integer"]),
    (["--ema", "1.5"], 1, ["--ema is a decay in [0, 1)"]),
    (["--lr", "-1"], 1, ["--lr must be positive"]),
    (["--sample-steps", "2000"], 1, ["--sample-steps must lie in 1..1000"]),
    (["--batch-size", "64"], 1, ["batch size 64 is larger than the 12 training images", "lower --batch-size"]),
    (["--steps", "abc"], 2, ["invalid int value: 'abc'", "--help"]),
    (["--device", "tpu"], 2, ["invalid choice: 'tpu'", "--help"]),
    (["--workers", "0"], 1, ["--workers must be a positive integer"]),
    (["--max-mse-weight", "0.5"], 1, ["--max-mse-weight must be at least 1"]),
    (["--mse-weighting", "snr"], 2, ["invalid choice: 'snr'", "--help"]),
    (["--lr-decay-fraction", "1"], 1, ["--lr-decay-fraction must lie in [0, 1)"]),
    (["--guidance-min-t", "-1"], 1, ["--guidance-min-t must be zero or positive"]),
    (["--sample-variance", "fixed"], 2, ["invalid choice: 'fixed'", "--help"]),
])
def test_bad_arguments_give_one_line_errors(tmp_path, argv, code, fragments):
    returned, _, stderr = run_cli(*argv, "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(returned, stderr, *fragments)
    assert returned == code


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a usable GPU, so --device gpu works")
def test_device_gpu_without_cupy_or_gpu(tmp_path):
    code, stdout, stderr = run_cli("--device", "gpu", "--out", tmp_path / "run")
    assert_one_line_error(code, stderr, "device 'gpu' needs", "--device cpu")
    assert stdout == "" and not (tmp_path / "run").exists()


def make_checkpoint_like(reference_out: Path, path: Path, **changes):
    """A copy of the reference checkpoint with some config entries or model arrays replaced."""
    checkpoint = load_checkpoint(reference_out / "checkpoint.safetensors")
    model = dict(checkpoint["model"], **changes.pop("model", {}))
    save_checkpoint(path, model_state=model, optimizer_state=checkpoint["optimizer"], ema_state=None,
                    step=checkpoint["step"], config={**checkpoint["config"], **changes},
                    rng_states=checkpoint["rng_states"])
    return path


def test_resume_errors(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # missing
    code, _, stderr = run_cli("--resume", "--out", out)
    assert_one_line_error(code, stderr, "does not exist", "checkpoint.safetensors")
    # corrupt
    corrupt = out / "checkpoint.safetensors"
    corrupt.write_bytes((reference[0] / "checkpoint.safetensors").read_bytes()[:1000])
    code, _, stderr = run_cli("--resume", "--out", out)
    assert_one_line_error(code, stderr, "is corrupt", "use an earlier checkpoint or start a new run")
    # another preset asked for than the checkpoint's
    code, _, stderr = run_cli("--resume", reference[0] / "checkpoint.safetensors", "--preset", "small", "--out", out)
    assert_one_line_error(code, stderr, "was trained with --preset tiny, not small", "drop --preset")
    code, _, stderr = run_cli("--resume", reference[0] / "checkpoint.safetensors", "--dataset", "cifar10",
                              "--out", out)
    assert_one_line_error(code, stderr, "was trained with --dataset mnist, not cifar10")
    # weights that do not fit the preset the checkpoint names
    wrong = make_checkpoint_like(reference[0], tmp_path / "wrong.safetensors",
                                 model={"pos_embed": np.zeros((1, 50, 192), np.float32)})
    code, _, stderr = run_cli("--resume", wrong, "--out", out)
    assert_one_line_error(code, stderr, "holds a different model", "pos_embed")
    # a new run must not overwrite a run folder's checkpoint
    code, _, stderr = run_cli(*COMMON, "--steps", 1, "--out", reference[0])
    assert_one_line_error(code, stderr, "already holds a checkpoint", "--resume")
    assert load_checkpoint(reference[0] / "checkpoint.safetensors")["step"] == STEPS


def checkpoint_without(reference_out: Path, path: Path, what: str) -> Path:
    """A copy of the reference checkpoint lacking one thing this version writes."""
    from safetensors.numpy import save_file

    from minisdit.training import checkpoint as ckpt

    saved = load_checkpoint(reference_out / "checkpoint.safetensors")
    config, rng_states, optimizer = dict(saved["config"]), dict(saved["rng_states"]), saved["optimizer"]
    if what == "checksum":
        tensors = {f"{part}.{name}": value for part in ("model", "optimizer", "ema")
                   for name, value in saved[part].items()}
        save_file(tensors, str(path), metadata={"format": ckpt.FORMAT_VERSION, "step": str(saved["step"]),
                                                "extra": "{}", "config": json.dumps(config),
                                                "rng_states": json.dumps(rng_states)})
        return path
    if what == "config field":
        del config["num_timesteps"]
    if what == "rng scheme":
        rng_states["scheme"] = "derived from (seed, purpose, counter)"
    if what == "optimizer":
        optimizer = None
    save_checkpoint(path, model_state=saved["model"], optimizer_state=optimizer, ema_state=saved["ema"],
                    step=saved["step"], config=config, rng_states=rng_states)
    return path


@pytest.mark.parametrize("what, fragment", [
    ("config field", "lacks num_timesteps: it was written by an earlier version"),
    ("checksum", "has no checksum of its tensors"),
    ("rng scheme", "drew its random numbers another way ('derived from (seed, purpose, counter)')"),
    ("optimizer", "holds no optimizer state"),
])
def test_a_checkpoint_missing_what_this_version_writes_is_refused(reference, tmp_path, what, fragment):
    """No shims for earlier checkpoints: one line that says to start a new run, and nothing changed."""
    out = tmp_path / "run"
    out.mkdir()
    path = checkpoint_without(reference[0], out / "checkpoint.safetensors", what)
    before = path.read_bytes()
    code, _, stderr = run_cli("--resume", "--out", out, "--steps", STEPS + 1, "--no-progress")
    assert_one_line_error(code, stderr, str(path), fragment, "start a new run")
    assert path.read_bytes() == before
    assert not (out / "config.json").exists() and not (out / "log.jsonl").exists()


def test_every_option_changed_on_resume_is_said_and_used(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    code, stdout, stderr = run_cli("--resume", "--out", out, "--steps", STEPS + 1, "--workers", 1,
                                   "--mse-weighting", "uniform", "--sample-num", 3, "--no-progress")
    assert code == 0, stderr
    assert "changed on resume: mse_weighting truncated-snr -> uniform, workers 2 -> 1, sample_num 2 -> 3, " \
           "steps 4 -> 5" in stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["workers"], config["mse_weighting"], config["sample_num"], config["steps"]) == (1, "uniform", 3, 5)
    assert load_checkpoint(out / "checkpoint.safetensors")["config"] == config


def test_resume_at_the_end_changes_nothing(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    (out / "log.jsonl").unlink()  # a resumed run copes with a lost log
    code, stdout, stderr = run_cli("--resume", out / "checkpoint.safetensors", "--no-progress")  # --out: its folder
    assert code == 0, stderr
    assert f"already at step {STEPS} of {STEPS}" in stdout
    assert (out / "samples_final.png").exists()
    assert_bitwise_equal_checkpoints(out / "checkpoint.safetensors", reference[0] / "checkpoint.safetensors")


@pytest.mark.gpu
def test_training_and_sampling_on_the_gpu(tmp_path):
    from minisdit.cli import sample

    out = tmp_path / "run"
    code, stdout, stderr = run_cli(*COMMON, "--device", "gpu", "--steps", 2, "--out", out)
    assert code == 0, stderr
    assert stdout.splitlines()[0].startswith("device: gpu (")
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    assert checkpoint["step"] == 2 and all(np.isfinite(v).all() for v in checkpoint["model"].values())
    npz = tmp_path / "s.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        assert sample.main(["--ckpt", str(out / "checkpoint.safetensors"), "--device", "gpu", "--num", "3",
                            "--steps", "3", "--no-progress", "--out", str(npz)]) == 0
    with np.load(npz) as saved:
        assert saved["images"].dtype == np.uint8 and saved["images"].shape == (3, 1, 28, 28)


def test_learning_rate_warms_up_stays_and_decays_over_the_last_fraction(tmp_path):
    from minisdit.training.trainer import Trainer

    images, labels = fake_dataset()
    config = dataclasses.replace(CPU_RECIPE, batch_size=4, lr=1e-3, warmup_steps=2, steps=10, workers=1,
                                 lr_decay_fraction=0.4)
    trainer = Trainer(config, images, labels, tmp_path, progress=False)
    rates = [trainer.learning_rate(step) for step in range(10)]
    # warm-up 2 steps, constant, then the last 4 of 10 steps go 4/4, 3/4, 2/4, 1/4 of the rate
    assert rates == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4], rel=1e-12)
    trainer.config = dataclasses.replace(config, lr_decay_fraction=0.0)
    assert [trainer.learning_rate(step) for step in range(2, 10)] == [1e-3] * 8


def test_images_that_do_not_fit_the_config_give_one_line(tmp_path):
    from minisdit.training.trainer import Trainer, TrainingError

    images, labels = fake_dataset()  # (12, 1, 28, 28)
    config = dataclasses.replace(CPU_RECIPE, batch_size=4, in_channels=3, input_size=32, dataset="cifar10")
    with pytest.raises(TrainingError) as caught:
        Trainer(config, images, labels, tmp_path, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "(1, 28, 28)" in message and "(3, 32, 32)" in message and "cifar10" in message
