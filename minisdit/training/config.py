"""The run's configuration: one dataclass, the GPU and CPU recipes, and its JSON round trip.

A run folder's config.json and every checkpoint hold ``TrainConfig.to_json()``; ``--resume`` reads
it back with ``TrainConfig.from_dict``, which refuses a config that lacks a field this version
writes (a checkpoint of an earlier version: start a new run) instead of guessing the old value; the
exceptions are fields whose old value is known (``backend``/``world_size`` before issue 18: local
workers; ``ema_warmup`` before the decay warm-up: False; ``sample_variance``/``guidance_min_t`` before
the grids had those options: "learned" and 0).

On resume the fields of ``FIXED_ON_RESUME`` (they decide the model's shape or the diffusion) must
stay as they were; every other field may be changed and the run goes on with the new value.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..diffusion import GaussianDiffusion
from ..models import sdit_from_preset

NUM_TIMESTEPS = 1000  # the diffusion's length T (docs/DESIGN.md §4)
from ..diffusion.gaussian import MAX_MSE_WEIGHT, MSE_WEIGHTINGS
ATTENTIONS = ("rwkv", "softmax")  # TimeMix (the paper) or standard multi-head self-attention (issue 15)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run.  The defaults are the authors' GPU recipe (docs/DESIGN.md §4)."""

    # what is trained: fixed for the life of a run
    dataset: str = "mnist"
    preset: str = "paper"
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10
    num_timesteps: int = NUM_TIMESTEPS
    # the model variant (the ablations; the defaults are the paper's model, docs/DESIGN.md §1): fixed too
    reconstruction: bool = True  # False: no Reconstruction Token, no gate
    spiking: bool = True  # False: every SN is the identity (an ANN)
    time_steps: int = 4  # T, the SNN time steps of every LIF
    attention: str = "rwkv"  # or "softmax"
    spiking_embedding: bool = False  # True: the patch tokens pass through SN before the first block
    # how it is trained; the length is `steps` optimizer steps, or `epochs` passes when steps is None
    device: str = "gpu"
    seed: int = 0
    batch_size: int = 256
    steps: int | None = None
    epochs: int | None = 1600
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_decay_fraction: float = 0.0  # > 0: the last fraction of the steps decays linearly towards 0
    grad_clip: float = 0.0  # 0: off
    ema: float = 0.0  # EMA decay of the weights; 0: off
    ema_warmup: bool = True  # the decay grows as min(ema, (1 + step)/(10 + step)) (autograd/optim.py ema_decay_at)
    mse_weighting: str = "uniform"  # or "truncated-snr" (GaussianDiffusion.mse_weights)
    max_mse_weight: float = MAX_MSE_WEIGHT
    workers: int = 1  # CPU processes sharing each batch with the local backend (minisdit/training/parallel.py)
    # how the batch was shared, as the run found it (minisdit/training/distributed.py); recorded, and
    # free on resume: any world size up to the batch size continues the run
    backend: str = "local"  # local (this process and --workers - 1 forked ones), mpi or nccl
    world_size: int = 1  # processes sharing each batch
    num_train: int | None = None  # None: every training image
    # what the run writes
    sample_every: int = 5000
    sample_steps: int = 250  # respaced DDPM steps of the sample grids
    sample_num: int = 100
    cfg_scale: float = 1.0  # classifier-free guidance of the sample grids; 1: off
    guidance_min_t: int = 0  # the grids' guidance acts only at timesteps t >= this; 0: at every step
    sample_variance: str = "learned"  # the grids' DDPM step noise: the model's learned Σ, or "posterior" β̃_t
    ckpt_every: int = 5000
    log_every: int = 50

    def total_steps(self, batches_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * batches_per_epoch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, **options) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **options)

    @classmethod
    def from_dict(cls, values: dict, source: str = "the config") -> "TrainConfig":
        """The config ``values`` describe (as ``to_dict`` wrote them); a one-line ValueError when a
        field is missing or unknown, naming ``source``."""
        names = [field.name for field in dataclasses.fields(cls)]
        values = dict(values)
        if "backend" not in values and "workers" in values:  # written before issue 18: local workers only
            values.update(backend="local", world_size=values["workers"])
        if "ema_warmup" not in values:  # written before the EMA decay warm-up: those runs used the fixed decay
            values["ema_warmup"] = False
        # written before the grids' sampler options: those grids used the learned variance and guidance at every step
        values.setdefault("sample_variance", "learned")
        values.setdefault("guidance_min_t", 0)
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}: it was written by an earlier version of minisdit "
                             "and cannot be resumed exactly; start a new run")
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{source} holds fields this version does not know ({', '.join(unknown)}); "
                             "resume it with the minisdit version that wrote it, or start a new run")
        return cls(**{name: values[name] for name in names})


# The authors' recipe for a GPU (docs/DESIGN.md §4): the dataclass defaults.
GPU_RECIPE = TrainConfig()
# On a CPU: what draws recognisable digits in about 15 minutes on two cores (docs/decisions.md has
# the measurements): the `tiny` model, two processes sharing each batch of 32, lr 3e-3 with warm-up,
# decaying linearly to 0 over the last 30 % of the steps (smoother strokes, half the speckle), the
# ε-MSE weighted by truncated SNR capped at 5 so that the class and shape are worth learning early, and
# sample grids drawn with classifier-free guidance above t = 200 and the posterior's variance (fewer
# stray background pixels: docs/decisions.md, sessions 8 to 10).
CPU_RECIPE = dataclasses.replace(
    GPU_RECIPE, device="cpu", preset="tiny", batch_size=32, lr=3e-3, warmup_steps=100, lr_decay_fraction=0.3,
    steps=10000, epochs=None, sample_steps=100, sample_every=2000, sample_num=20, ckpt_every=250, log_every=10,
    workers=2, mse_weighting="truncated-snr", max_mse_weight=5.0, cfg_scale=5.0, guidance_min_t=200,
    sample_variance="posterior")
RECIPES = {"gpu": GPU_RECIPE, "cpu": CPU_RECIPE}

# what a resumed run must share with its checkpoint: the model's shape, the data and the diffusion
VARIANT_FIELDS = ("reconstruction", "spiking", "time_steps", "attention", "spiking_embedding")
FIXED_ON_RESUME = ("dataset", "preset", "in_channels", "input_size", "num_classes", "num_timesteps") + VARIANT_FIELDS
def variant_flags(values) -> str:
    """The ``python -m minisdit.train`` flags that select the variant of ``values`` (a TrainConfig or a
    dict of some VARIANT_FIELDS); for the paper's model: "the paper's model (no variant flags)"."""
    get = values.get if isinstance(values, dict) else lambda name, default=None: getattr(values, name, default)
    default = TrainConfig()
    flags = []
    if get("reconstruction", True) is False:
        flags.append("--no-reconstruction")
    if get("spiking", True) is False:
        flags.append("--no-spiking")
    if get("time_steps", default.time_steps) != default.time_steps:
        flags.append(f"--time-steps {get('time_steps')}")
    if get("attention", default.attention) != default.attention:
        flags.append(f"--attention {get('attention')}")
    if get("spiking_embedding", False) is True:
        flags.append("--spiking-embedding")
    return " ".join(flags) or "the paper's model (no variant flags)"


def check_variant(config: TrainConfig) -> None:
    """Refuse a variant that cannot be built (one-line ValueError)."""
    if config.attention not in ATTENTIONS:
        raise ValueError(f"unknown attention {config.attention!r}; choose one of {', '.join(ATTENTIONS)}")
    if isinstance(config.time_steps, bool) or not isinstance(config.time_steps, int) or config.time_steps < 1:
        raise ValueError(f"--time-steps must be a positive integer (the SNN time steps T), got {config.time_steps}")


def build_model(config: TrainConfig):
    """The SDiT a run with ``config`` trains (its variant), initialised from its seed (on the CPU)."""
    check_variant(config)
    return sdit_from_preset(config.preset, in_channels=config.in_channels, num_classes=config.num_classes,
                            input_size=config.input_size, seed=config.seed, reconstruction=config.reconstruction,
                            spiking=config.spiking, T=config.time_steps, attention=config.attention,
                            spiking_embedding=config.spiking_embedding)


def build_diffusion(config: TrainConfig) -> GaussianDiffusion:
    """The diffusion a run with ``config`` trains on (and its checkpoints sample from)."""
    return GaussianDiffusion(num_timesteps=config.num_timesteps, mse_weighting=config.mse_weighting,
                             max_mse_weight=config.max_mse_weight)
