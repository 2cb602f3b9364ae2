"""Train SDiT:  python -m minisdit.train --dataset mnist --device gpu

One step: take a batch x0 in [-1, 1], draw t uniformly from 0..T-1 (T = NUM_TIMESTEPS) and noise
eps, form x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, predict (eps_hat, v) with the model, and
minimise mean (eps - eps_hat)^2 + L_vb (docs/DESIGN.md §4) with AdamW.  On a CPU the defaults
differ (CPU_RECIPE in minisdit/training/config.py): each sample's (eps - eps_hat)^2 is weighted by
lambda_t (truncated SNR) and two processes share each batch.

Everything random (initial weights, batch order, t, eps, label dropout) is derived from the seed
and a counter (see minisdit/training/trainer.py), so ``--resume`` continues an interrupted run exactly as if
it had never stopped (bitwise on the CPU).

The model is the paper's SDiT unless variant flags say otherwise (--no-reconstruction, --no-spiking,
--time-steps K, --attention softmax, --spiking-embedding; the ablations of ``python -m minisdit.ablate``).
The variant is part of the run's config, so --resume, minisdit.sample and minisdit.evaluate rebuild it
from the checkpoint; asking --resume for another variant than the checkpoint's is a one-line error.

The run folder (--out) receives config.json, log.jsonl (one JSON line per logged step),
checkpoint.safetensors, samples_step*.png / samples_final.png and loss.png.  Ctrl-C or SIGTERM
saves a checkpoint and says how to resume.  Errors are one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from .. import data
from ..autograd.precision import matmul_precision
from ..data import dataset_spec
from ..diffusion import VARIANCES
from ..models import PRESETS
from ..training.checkpoint import CheckpointError, check_compatible, load_checkpoint
from ..training.config import (ATTENTIONS, FIXED_ON_RESUME, MAX_MSE_WEIGHT, MSE_WEIGHTINGS, NUM_TIMESTEPS, RECIPES,
                               VARIANT_FIELDS, TrainConfig, check_variant, variant_flags)
from ..training.distributed import BACKENDS, DistributedError, choose_backend, make_communicator
from ..training.trainer import CHECKPOINT_NAME, Trainer, TrainingError
from .common import EXPECTED_ERRORS, one_line_error, OneLineParser, add_cpu_arguments, choose_device, configure_cpu_runtime, own_runtime_settings

# fields of TrainConfig that are command-line options of the same name (--batch-size: batch_size)
OPTIONS = ("dataset", "preset", "seed", "batch_size", "lr", "weight_decay", "warmup_steps", "lr_decay_fraction",
           "grad_clip", "ema", "ema_warmup", "mse_weighting", "max_mse_weight", "workers", "num_train",
           "sample_every", "sample_steps", "sample_num", "cfg_scale", "guidance_min_t", "sample_variance", "ckpt_every", "log_every") + VARIANT_FIELDS


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m minisdit.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None, help="mnist (default), fashion-mnist or cifar10")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="default: gpu if usable, else cpu")
    parser.add_argument("--preset", default=None, help="tiny, small, paper, paper-cifar (default: paper on GPU, tiny on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 1e-4 on GPU, 3e-3 on CPU)")
    parser.add_argument("--weight-decay", type=float, default=None, help="decoupled weight decay (default 0.01)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up steps (default: 0 on GPU, as the authors; 100 on CPU)")
    parser.add_argument("--lr-decay-fraction", type=float, default=None,
                        help="decay the learning rate linearly to 0 over this last fraction of the steps (default: 0 on GPU, "
                             f"constant after warm-up as the authors; {RECIPES['cpu'].lr_decay_fraction:g} on CPU)")
    parser.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm (default 0: off, as the authors)")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs (ignored when --steps is given)")
    parser.add_argument("--steps", type=int, default=None, help="train this many optimizer steps in all")
    parser.add_argument("--seed", type=int, default=None, help="default 0")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<preset>, or the folder of --resume PATH)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue from a checkpoint (without PATH: <out>/checkpoint.safetensors)")
    parser.add_argument("--ema", type=float, default=None, help="EMA decay of the weights, e.g. 0.9999 (default 0: off)")
    parser.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="grow the EMA decay as min(--ema, (1 + step)/(10 + step)) (default on; --no-ema-warmup: "
                             "the fixed decay from the first step)")
    parser.add_argument("--sample-every", type=int, default=None, help="write a sample grid every N steps")
    parser.add_argument("--sample-steps", type=int, default=None, help="respaced DDPM steps for the sample grids")
    parser.add_argument("--sample-num", type=int, default=None, help="images per sample grid (default: 100 on GPU, 20 on CPU)")
    parser.add_argument("--ckpt-every", type=int, default=None, help="write a checkpoint every N steps")
    parser.add_argument("--log-every", type=int, default=None, help="write a log line every N steps (the loss is read from the device and checked for NaN/inf at these steps)")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale for the sample grids (1: off; default 1 on GPU, as the authors, and 5 on CPU)")
    parser.add_argument("--guidance-min-t", type=int, default=None,
                        help="the grids' guidance acts only at timesteps t >= this (default 0 on GPU: every step; 200 on "
                             "CPU, so that it does not amplify the noise left at the end)")
    parser.add_argument("--sample-variance", choices=VARIANCES, default=None,
                        help="the grids' DDPM step noise: learned (the model's Σ; default on GPU) or posterior "
                             "(β̃_t; default on CPU: fewer stray background pixels; docs/decisions.md)")
    parser.add_argument("--data-dir", default=None, help="where data sets are cached (default: $MINISDIT_DATA or ~/.cache/minisdit)")
    parser.add_argument("--mse-weighting", choices=MSE_WEIGHTINGS, default=None,
                        help="weight of each sample's ε-MSE by its step t: uniform (the authors; default on GPU) or "
                             "truncated-snr, max(1, 1/SNR_t) capped at --max-mse-weight (default on CPU: a small model "
                             "learns the digits' shapes and classes sooner; docs/decisions.md)")
    parser.add_argument("--max-mse-weight", type=float, default=None,
                        help=f"cap of the truncated-snr weights (default: {RECIPES['cpu'].max_mse_weight:g} on CPU, else {MAX_MSE_WEIGHT:g})")
    parser.add_argument("--workers", type=int, default=None,
                        help="CPU processes that share each batch (default 2 on CPU; 1 on GPU, where it does not apply); "
                             "a run is reproducible for a given number of workers")
    # not a config option of the same name: the trainer records the backend it was given (config.backend)
    parser.add_argument("--backend", dest="distributed_backend", choices=BACKENDS, default=None,
                        help="how processes share each batch: local (this process and --workers - 1 forked ones; the "
                             "default when started alone), mpi (CPU ranks started by mpiexec; the default under mpiexec "
                             "on the CPU) or nccl (one GPU per rank, started by mpiexec or torchrun; the default there "
                             "on a GPU)")
    parser.add_argument("--num-train", type=int, default=None, help="use only the first N training images (quick experiments)")
    # the model variant (the ablations of issue 15); None: the recipe's (the paper's model), or on --resume the checkpoint's
    variant = parser.add_argument_group("model variant (fixed for a run; --resume rebuilds the checkpoint's)")
    variant.add_argument("--no-reconstruction", dest="reconstruction", action="store_const", const=False, default=None,
                         help="no Reconstruction Module: no Reconstruction Token, no gate")
    variant.add_argument("--no-spiking", dest="spiking", action="store_const", const=False, default=None,
                         help="every SN is the identity: the same network as an ANN")
    variant.add_argument("--time-steps", type=int, default=None, metavar="K", help="SNN time steps T of every LIF (default 4)")
    variant.add_argument("--attention", choices=ATTENTIONS, default=None,
                         help="rwkv (the paper's TimeMix; default) or softmax (standard multi-head self-attention)")
    variant.add_argument("--spiking-embedding", dest="spiking_embedding", action="store_const", const=True, default=None,
                         help="pass the patch tokens through SN right after the patch embedding (no ANN front end)")
    add_cpu_arguments(parser)
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                        help="GPU only: float32 matrix products on TF32 tensor cores (faster, ~1e-3 relative error per "
                             "product; default --no-tf32: exact float32; minisdit/autograd/precision.py)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a terminal); print a line per logged step instead")
    return parser


def check_arguments(args) -> None:
    """Refuse impossible values before anything is loaded (one-line ValueError)."""
    for name in ("batch_size", "steps", "epochs", "sample_every", "sample_num", "ckpt_every", "log_every", "num_train",
                 "workers", "time_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.sample_steps is not None and not 1 <= args.sample_steps <= NUM_TIMESTEPS:
        raise ValueError(f"--sample-steps must lie in 1..{NUM_TIMESTEPS} (the diffusion has {NUM_TIMESTEPS} steps), "
                         f"got {args.sample_steps}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    for name in ("weight_decay", "warmup_steps", "grad_clip", "cfg_scale", "guidance_min_t"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be zero or positive, got {value}")
    if args.lr_decay_fraction is not None and not 0 <= args.lr_decay_fraction < 1:
        raise ValueError(f"--lr-decay-fraction must lie in [0, 1), got {args.lr_decay_fraction}")
    if args.max_mse_weight is not None and not args.max_mse_weight >= 1:
        raise ValueError(f"--max-mse-weight must be at least 1 (the weights start at 1), got {args.max_mse_weight}")
    if args.ema is not None and not 0 <= args.ema < 1:
        raise ValueError(f"--ema is a decay in [0, 1) (e.g. 0.9999; 0 turns EMA off), got {args.ema}")
    if args.preset is not None and args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.dataset is not None:
        args.dataset = dataset_spec(args.dataset).name  # "unknown dataset ...; choose one of: ..."


def resolve_config(args, device: str) -> TrainConfig:
    """The config of a new run: the recipe of ``device`` with what the command line gives."""
    given = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    config = dataclasses.replace(RECIPES[device], **given)
    check_variant(config)  # a bad variant gives one line before any data is loaded
    if args.steps is not None or args.epochs is not None:  # the length given replaces the recipe's
        config = dataclasses.replace(config, steps=args.steps, epochs=args.epochs)
    return config


def resumed_config(args, checkpoint: dict, device: str) -> TrainConfig:
    """The checkpoint's config, with what the command line changes (and a line saying so)."""
    path = checkpoint["path"]
    try:
        config = TrainConfig.from_dict(checkpoint["config"], source=f"checkpoint {path}")
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    asked = {name: getattr(args, name) for name in VARIANT_FIELDS if getattr(args, name) is not None}
    if any(value != getattr(config, name) for name, value in asked.items()):
        raise CheckpointError(f"checkpoint {path} holds the model of {variant_flags(config)}, not of {variant_flags(asked)}; "
                              "drop the variant flags to resume it (--resume rebuilds its variant), "
                              "or start a new run with another --out")
    for name in FIXED_ON_RESUME:
        if name in VARIANT_FIELDS:
            continue
        given = getattr(args, name, None)
        if given is not None and given != getattr(config, name):
            raise CheckpointError(f"checkpoint {path} was trained with --{name} {getattr(config, name)}, not {given}; "
                                  f"drop --{name} to resume it, or start a new run with another --out")
    changes = {name: getattr(args, name) for name in OPTIONS + ("steps", "epochs")
               if name not in FIXED_ON_RESUME and getattr(args, name) is not None
               and getattr(args, name) != getattr(config, name)}
    if changes:
        print(f"changed on resume: {', '.join(f'{n} {getattr(config, n)} -> {v}' for n, v in changes.items())}",
              flush=True)
    # the length given now decides, whichever of --steps / --epochs the first run used
    if args.steps is not None and args.epochs is None:
        changes["epochs"] = None
    if args.epochs is not None and args.steps is None:
        changes["steps"] = None
    return dataclasses.replace(config, device=device, **changes)


@own_runtime_settings  # the CPU-kernel setting ends with the command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    launch = {}  # the communicator of an mpi or nccl rank, once made (run)
    try:
        with matmul_precision("tf32" if args.tf32 else "fp32"):  # restored after the command
            return run(args, launch)
    except KeyboardInterrupt:
        print("error: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS + (DistributedError,) as error:
        return _rank_failed(launch, one_line_error(error, prefix=_rank_prefix(launch)))
    except Exception as error:  # under mpi a rank's traceback would leave the others waiting forever
        if not launch.get("communicator") or launch["communicator"].world_size == 1:
            raise
        return _rank_failed(launch, one_line_error(error, prefix=_rank_prefix(launch) + f"{type(error).__name__}: "))
    finally:
        if launch.get("communicator") is not None:
            launch["communicator"].close()


def _rank_prefix(launch: dict) -> str:
    communicator = launch.get("communicator")
    if communicator is None or communicator.world_size == 1:
        return ""
    return f"rank {communicator.rank} of {communicator.world_size} ({communicator.name}): "


def _rank_failed(launch: dict, code: int) -> int:
    """After a rank's one-line error, end every rank (the others may wait in a collective for it)."""
    communicator = launch.get("communicator")
    if communicator is not None and communicator.world_size > 1:
        communicator.abort(code)
    return code


def run(args, launch: dict | None = None) -> int:
    check_arguments(args)
    device, reason = choose_device(args.device)
    backend_name = choose_backend(getattr(args, "distributed_backend", None), device)
    communicator = None
    if backend_name != "local":
        if backend_name == "nccl" and device != "gpu":
            raise DistributedError("the nccl backend trains on GPUs; use --backend mpi on the CPU")
        if backend_name == "mpi" and device != "cpu":
            raise DistributedError("the mpi backend trains on the CPU; use --backend nccl on GPUs (or --device cpu)")
        communicator = make_communicator(backend_name)
        if launch is not None:
            launch["communicator"] = communicator
    if communicator is not None and communicator.rank != 0:
        # rank 0 alone prints (and writes); the others' errors still reach stderr
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _train(args, device, reason, communicator)
    return _train(args, device, reason, communicator)


def _train(args, device: str, reason: str, communicator) -> int:
    print(reason, flush=True)
    if device == "cpu":
        message = configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
        if message:
            print(message, flush=True)

    checkpoint = None
    if args.resume is not None:
        if args.resume == "auto":
            named = resolve_config(args, device)  # the run folder a new run with these options would use
            out = Path(args.out or f"runs/{named.dataset}-{named.preset}")
            path = out / CHECKPOINT_NAME
        else:
            path = Path(args.resume)
            out = Path(args.out) if args.out else path.parent
        checkpoint = load_checkpoint(path)
        print(f"resuming from {path} at step {checkpoint['step']}", flush=True)
        config = resumed_config(args, checkpoint, device)
    else:
        config = resolve_config(args, device)
        out = Path(args.out or f"runs/{config.dataset}-{config.preset}")
        if (out / CHECKPOINT_NAME).exists():
            raise TrainingError(f"run folder {out} already holds a checkpoint; continue it with --resume, "
                                "or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingError(f"cannot create the run folder {out} ({error.strerror or error}); choose another --out") from error

    images, labels = data.load_dataset(config.dataset, split="train", data_dir=args.data_dir, download=True)
    if config.num_train is not None:
        images, labels = images[: config.num_train], labels[: config.num_train]
    if checkpoint is None:  # the model's input and label table follow the data set (a resumed run checks them)
        config = dataclasses.replace(config, in_channels=int(images.shape[1]), input_size=int(images.shape[-1]),
                                     num_classes=data.dataset_spec(config.dataset).num_classes)
    if variant_flags(config) != variant_flags({}):  # say which model is trained when it is not the paper's
        print(f"model variant: {variant_flags(config)}", flush=True)
    # a bar needs a terminal; in a log file (nohup, CI) one line per logged step reads better
    trainer = Trainer(config, images, labels, out, progress=not args.no_progress and sys.stderr.isatty(),
                      communicator=communicator)
    if checkpoint is not None:
        check_compatible(checkpoint, trainer.model, checkpoint["path"])
        trainer.restore(checkpoint)
    if trainer.is_main:  # with the backend and world size the trainer found
        (out / "config.json").write_text(trainer.config.to_json(indent=2) + "\n")
    return trainer.train()


if __name__ == "__main__":
    sys.exit(main())
