"""The sampling command line: PNG grids and .npz files of uint8 images, reproducible from the seed,
EMA weights by default, the images of ``generate`` with the same arguments on the checkpoint's own
diffusion, and one-line errors for bad checkpoints and arguments.

The checkpoint is a tiny model whose weights were moved off their initialisation (every array
plus N(0, 0.2²) noise; EMA weights with other noise), so the whole network shapes the samples
(with N(0, 0.05²) no neuron fired and the output depended on neither t nor y, so guidance could not
show); sampling uses 3 respaced steps.
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minisdit import backend
from minisdit.cli import sample
from minisdit.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from minisdit.data.images import make_grid, to_uint8
from minisdit.diffusion import GaussianDiffusion, generate
from minisdit.models import sdit_from_preset
from minisdit.training.config import TrainConfig
from tests.helpers import assert_one_line_error, run_main

FAST = ["--steps", "3", "--no-progress"]


def run_cli(*argv):
    return run_main(sample.main, *argv)


def perturbed(state: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {name: (value + 0.2 * rng.standard_normal(value.shape)).astype(value.dtype) for name, value in state.items()}


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors", num_timesteps=1000)


def make_checkpoint(path: Path, num_timesteps: int, drop_from_config: tuple = ()) -> Path:
    """A checkpoint of the perturbed tiny model (a config without the fields ``drop_from_config``)."""
    state = sdit_from_preset("tiny", seed=0).state_dict()
    config = TrainConfig(preset="tiny", device="cpu", num_timesteps=num_timesteps).to_dict()
    for name in drop_from_config:
        del config[name]
    save_checkpoint(path, model_state=perturbed(state, 1), ema_state=perturbed(state, 2), step=42, config=config,
                    rng_states={})
    return path


def draw_npz(checkpoint_path, out: Path, *extra) -> dict:
    code, stdout, stderr = run_cli("--ckpt", checkpoint_path, "--num", 5, *FAST, "--out", out, *extra)
    assert code == 0, stderr
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}


def test_npz_holds_uint8_images_labels_and_how_they_were_made(checkpoint_path, tmp_path):
    saved = draw_npz(checkpoint_path, tmp_path / "s.npz", "--seed", 4)
    images = saved["images"]
    assert images.dtype == np.uint8 and images.shape == (5, 1, 28, 28)
    assert images.min() < images.max()  # not a blank picture
    assert saved["labels"].dtype == np.int64 and saved["labels"].tolist() == [0, 1, 2, 3, 4]
    assert str(saved["sampler"]) == "ddpm" and int(saved["steps"]) == 3 and float(saved["cfg_scale"]) == 1.0
    assert int(saved["seed"]) == 4 and int(saved["checkpoint_step"]) == 42 and str(saved["weights"]) == "ema"
    assert float(saved["eta"]) == 0.0 and str(saved["dataset"]) == "mnist"


def test_same_seed_same_images_other_seed_other_images(checkpoint_path, tmp_path):
    first = draw_npz(checkpoint_path, tmp_path / "a.npz", "--seed", 1)["images"]
    again = draw_npz(checkpoint_path, tmp_path / "b.npz", "--seed", 1)["images"]
    other = draw_npz(checkpoint_path, tmp_path / "c.npz", "--seed", 2)["images"]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_png_grid_shows_the_same_images_as_the_npz(checkpoint_path, tmp_path):
    saved = draw_npz(checkpoint_path, tmp_path / "s.npz", "--seed", 5)
    code, stdout, stderr = run_cli("--ckpt", checkpoint_path, "--num", 5, *FAST, "--seed", 5, "--out", tmp_path / "g.png")
    assert code == 0, stderr
    assert stdout.splitlines()[-1].endswith(f"to {tmp_path / 'g.png'}")
    with Image.open(tmp_path / "g.png") as picture:
        pixels = np.asarray(picture)
    grid = make_grid(saved["images"], columns=5)[..., 0]  # one row, one class per column
    assert np.array_equal(pixels, grid.repeat(2, axis=0).repeat(2, axis=1))  # saved twice enlarged


def test_ddim_labels_guidance_and_weights_options(checkpoint_path, tmp_path):
    ddim = draw_npz(checkpoint_path, tmp_path / "d.npz", "--sampler", "ddim", "--labels", "7,3", "--cfg-scale", 2)
    assert ddim["labels"].tolist() == [7, 3, 7, 3, 7] and str(ddim["sampler"]) == "ddim"
    assert np.array_equal(ddim["images"], draw_npz(checkpoint_path, tmp_path / "e.npz", "--sampler", "ddim",
                                                   "--labels", "7,3", "--cfg-scale", 2)["images"])
    trained = draw_npz(checkpoint_path, tmp_path / "m.npz", "--no-ema")
    averaged = draw_npz(checkpoint_path, tmp_path / "a.npz")
    assert str(trained["weights"]) == "model" and str(averaged["weights"]) == "ema"
    assert not np.array_equal(trained["images"], averaged["images"])


@pytest.mark.parametrize("options", [
    ["--sampler", "ddpm", "--cfg-scale", 3],
    ["--sampler", "ddim", "--eta", 0.5, "--cfg-scale", 2, "--seed", 9, "--labels", "4,1"],
    ["--sampler", "ddim", "--batch-size", 2, "--seed", 3],
    ["--sampler", "ddpm", "--variance", "posterior", "--cfg-scale", 3, "--guidance-min-t", 500],
])
def test_the_command_line_draws_the_images_of_generate(checkpoint_path, tmp_path, options):
    """The CLI's images are generate's, with the same seed, sampler, steps, guidance, eta and batch
    size, on the EMA weights and the checkpoint's 1000-step diffusion."""
    saved = draw_npz(checkpoint_path, tmp_path / "s.npz", *options)
    model, _ = load_model(checkpoint_path)
    expected = generate(GaussianDiffusion(num_timesteps=1000), model, saved["labels"], sampler=str(saved["sampler"]),
                        steps=int(saved["steps"]), seed=int(saved["seed"]), cfg_scale=float(saved["cfg_scale"]),
                        eta=float(saved["eta"]), batch_size=2 if "--batch-size" in options else 256,
                        variance=str(saved["variance"]), guidance_min_t=int(saved["guidance_min_t"]))
    assert np.array_equal(saved["images"], to_uint8(expected))


def test_guidance_eta_and_sampler_each_change_the_images(checkpoint_path, tmp_path):
    def images(*options):
        return draw_npz(checkpoint_path, tmp_path / "x.npz", "--seed", 6, *options)["images"]

    ddpm, ddim = images("--sampler", "ddpm"), images("--sampler", "ddim")
    assert not np.array_equal(ddpm, ddim)
    assert not np.array_equal(ddpm, images("--sampler", "ddpm", "--cfg-scale", 4))
    assert not np.array_equal(ddim, images("--sampler", "ddim", "--cfg-scale", 4))
    assert not np.array_equal(ddim, images("--sampler", "ddim", "--eta", 1))
    assert np.array_equal(ddim, images("--sampler", "ddim", "--eta", 0))  # η = 0 is the default


def test_the_diffusion_and_its_steps_come_from_the_checkpoint(tmp_path):
    short = make_checkpoint(tmp_path / "short.safetensors", num_timesteps=50)
    saved = draw_npz(short, tmp_path / "s.npz", "--seed", 2)
    model, _ = load_model(short)
    expected = generate(GaussianDiffusion(num_timesteps=50), model, saved["labels"], steps=3, seed=2)
    assert np.array_equal(saved["images"], to_uint8(expected))
    on_1000 = generate(GaussianDiffusion(num_timesteps=1000), model, saved["labels"], steps=3, seed=2)
    assert not np.array_equal(saved["images"], to_uint8(on_1000))
    code, _, stderr = run_cli("--ckpt", short, "--num", 2, "--steps", 51, "--no-progress", "--out", tmp_path / "g.png")
    assert_one_line_error(code, stderr, "--steps must lie in 1..50", "has 50 steps")
    assert not (tmp_path / "g.png").exists()
    # a config that does not say how long its diffusion was is refused, not guessed
    older = make_checkpoint(tmp_path / "older.safetensors", num_timesteps=1000, drop_from_config=("num_timesteps",))
    code, _, stderr = run_cli("--ckpt", older, "--num", 2, *FAST, "--out", tmp_path / "o.png")
    assert_one_line_error(code, stderr, "lacks num_timesteps", "start a new run")
    assert not (tmp_path / "o.png").exists()


def test_first_line_names_the_device(checkpoint_path, tmp_path):
    code, stdout, stderr = run_cli("--ckpt", checkpoint_path, "--num", 1, *FAST, "--out", tmp_path / "g.png")
    assert code == 0, stderr
    first = stdout.splitlines()[0]
    assert first.startswith("device: gpu (" if backend.gpu_available() else "device: cpu (no usable GPU: ")


def test_load_model_rebuilds_the_saved_weights(checkpoint_path):
    model, checkpoint = load_model(checkpoint_path, use_ema=False)
    assert checkpoint["weights_used"] == "model" and not model.training and checkpoint["step"] == 42
    for name, value in model.state_dict().items():
        assert np.array_equal(value, checkpoint["model"][name]), name


# ----- errors -----

def test_checkpoint_errors(checkpoint_path, tmp_path):
    code, _, stderr = run_cli("--ckpt", tmp_path / "missing.safetensors", *FAST, "--out", tmp_path / "g.png")
    assert_one_line_error(code, stderr, "does not exist")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(checkpoint_path.read_bytes()[:-100])
    code, _, stderr = run_cli("--ckpt", corrupt, *FAST, "--out", tmp_path / "g.png")
    assert_one_line_error(code, stderr, "is corrupt", "use an earlier checkpoint")
    # a checkpoint whose config names another preset than its weights hold
    other = tmp_path / "other.safetensors"
    saved = load_checkpoint(checkpoint_path)
    save_checkpoint(other, model_state=saved["model"], step=1, config={**saved["config"], "preset": "small"},
                    rng_states={})
    code, _, stderr = run_cli("--ckpt", other, *FAST, "--out", tmp_path / "g.png")
    assert_one_line_error(code, stderr, "holds a different model", "'small'")
    save_checkpoint(other, model_state=saved["model"], step=1, config={**saved["config"], "preset": "giant"},
                    rng_states={})
    code, _, stderr = run_cli("--ckpt", other, *FAST, "--out", tmp_path / "g.png")
    assert_one_line_error(code, stderr, "unknown preset 'giant'")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("argv, fragments", [
    (["--num", "0"], ["--num must be a positive integer"]),
    (["--steps", "0"], ["--steps must lie in 1..1000"]),
    (["--labels", "1,x"], ["--labels must be a comma list of integers"]),
    (["--labels", "12"], ["--labels must lie in 0..10"]),
    (["--out", "samples.txt"], ["must end in .npz", ".png"]),
    (["--eta", "-1"], ["--eta must be zero or positive"]),
    (["--eta", "0.5"], ["--eta 0.5 applies to the DDIM sampler only", "--sampler ddim"]),
    (["--sampler", "euler"], ["invalid choice: 'euler'", "--help"]),
    (["--sampler", "ddim", "--variance", "posterior"], ["variance='posterior' applies to the DDPM sampler only"]),
    (["--guidance-min-t", "-5"], ["guidance_min_t must be zero or positive"]),
])
def test_bad_arguments_give_one_line_errors(checkpoint_path, tmp_path, argv, fragments):
    argv = ["--ckpt", checkpoint_path, "--num", 2, *FAST, "--out", tmp_path / "g.png", *argv]
    code, _, stderr = run_cli(*argv)
    assert_one_line_error(code, stderr, *fragments)


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a usable GPU, so --device gpu works")
def test_device_gpu_without_cupy_or_gpu(checkpoint_path, tmp_path):
    code, _, stderr = run_cli("--ckpt", checkpoint_path, "--device", "gpu", *FAST, "--out", tmp_path / "g.png")
    assert_one_line_error(code, stderr, "device 'gpu' needs", "--device cpu")
