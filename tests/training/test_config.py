"""The run's config (minisdit/training/config.py): the recipes, the JSON round trip, and one-line
errors for a config this version did not write."""
import dataclasses
import json

import pytest

from minisdit.autograd.optim import ema_decay_at
from minisdit.cli import train
from minisdit.training.config import (CPU_RECIPE, FIXED_ON_RESUME, GPU_RECIPE, MAX_MSE_WEIGHT, NUM_TIMESTEPS, RECIPES,
                                      TrainConfig)


def test_the_gpu_recipe_is_the_authors():
    assert (GPU_RECIPE.preset, GPU_RECIPE.batch_size, GPU_RECIPE.lr, GPU_RECIPE.epochs, GPU_RECIPE.steps) == \
        ("paper", 256, 1e-4, 1600, None)
    assert (GPU_RECIPE.mse_weighting, GPU_RECIPE.warmup_steps, GPU_RECIPE.cfg_scale, GPU_RECIPE.sample_steps) == \
        ("uniform", 0, 1.0, 250)
    assert GPU_RECIPE.num_timesteps == NUM_TIMESTEPS == 1000 and GPU_RECIPE.device == "gpu"


def test_the_cpu_recipe_differs_only_where_it_says():
    differences = {f.name: getattr(CPU_RECIPE, f.name) for f in dataclasses.fields(TrainConfig)
                   if getattr(CPU_RECIPE, f.name) != getattr(GPU_RECIPE, f.name)}
    assert differences == dict(device="cpu", preset="tiny", batch_size=32, lr=3e-3, warmup_steps=100,
                               lr_decay_fraction=0.3, steps=10000, epochs=None, sample_steps=100, sample_every=2000,
                               sample_num=20, ckpt_every=250, log_every=10, workers=2, mse_weighting="truncated-snr",
                               max_mse_weight=5.0, cfg_scale=5.0, guidance_min_t=200, sample_variance="posterior")
    assert GPU_RECIPE.max_mse_weight == MAX_MSE_WEIGHT == 10.0  # the diffusion's default cap; the GPU recipe weighs uniformly
    assert RECIPES == {"cpu": CPU_RECIPE, "gpu": GPU_RECIPE}


def test_the_length_is_steps_or_epochs():
    assert CPU_RECIPE.total_steps(batches_per_epoch=10) == 10000
    assert GPU_RECIPE.total_steps(batches_per_epoch=10) == 16000


@pytest.mark.parametrize("config", [GPU_RECIPE, CPU_RECIPE, dataclasses.replace(CPU_RECIPE, num_train=12, ema=0.9)])
def test_json_round_trip_is_exact(config):
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    assert TrainConfig.from_dict(json.loads(config.to_json(indent=2))) == config


def test_a_config_missing_a_field_says_to_start_a_new_run():
    values = CPU_RECIPE.to_dict()
    del values["num_timesteps"], values["mse_weighting"]
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_dict(values, source="checkpoint c.safetensors")
    message = str(caught.value)
    assert "\n" not in message
    assert "checkpoint c.safetensors lacks num_timesteps, mse_weighting" in message and "start a new run" in message


def test_a_config_written_before_the_ema_warm_up_resumes_with_the_fixed_decay_it_used():
    old = dataclasses.replace(CPU_RECIPE, ema=0.999).to_dict()
    del old["ema_warmup"]
    config = TrainConfig.from_dict(old)
    assert config == dataclasses.replace(CPU_RECIPE, ema=0.999, ema_warmup=False)
    assert ema_decay_at(config.ema, 0, config.ema_warmup) == 0.999


def test_a_config_written_before_the_grid_sampler_options_keeps_the_grids_it_drew():
    old = CPU_RECIPE.to_dict()
    del old["sample_variance"], old["guidance_min_t"]
    config = TrainConfig.from_dict(old)
    assert config == dataclasses.replace(CPU_RECIPE, sample_variance="learned", guidance_min_t=0)


def test_a_config_with_an_unknown_field_is_refused():
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_dict({**CPU_RECIPE.to_dict(), "label_smoothing": 0.1})
    assert "\n" not in str(caught.value) and "label_smoothing" in str(caught.value)


def test_the_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CPU_RECIPE.lr = 1.0


def test_the_command_line_options_are_config_fields_and_the_fixed_ones_are_not_changeable():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(train.OPTIONS) <= names and set(FIXED_ON_RESUME) <= names
    # every option of the parser that sets a config field is in OPTIONS (so resolve_config sees it)
    destinations = {action.dest for action in train.build_parser()._actions}
    assert names & destinations == set(train.OPTIONS) | {"device", "steps", "epochs"}


def test_resolve_config_takes_the_recipe_and_what_is_given():
    args = train.build_parser().parse_args(["--lr", "5e-4", "--epochs", "3"])
    config = train.resolve_config(args, "cpu")
    assert config == dataclasses.replace(CPU_RECIPE, lr=5e-4, epochs=3, steps=None)
    args = train.build_parser().parse_args([])
    assert train.resolve_config(args, "gpu") == GPU_RECIPE
