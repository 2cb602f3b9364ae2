"""Train SDiT:  python -m minisdit.train --dataset mnist --device gpu

One step: take a batch x0 in [-1, 1], draw t uniformly from 0..999 and noise eps, form
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, predict (eps_hat, v) with the model, and minimise
mean (eps - eps_hat)^2 + L_vb (DESIGN.md section 4) with AdamW.

Everything random (initial weights, batch order, t, eps, label dropout) comes from seeded NumPy
generators whose states are saved in every checkpoint, so ``--resume`` continues an interrupted run
exactly as if it had never stopped (bitwise on the CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import CheckpointError, check_compatible, load_checkpoint
from .trainer import TrainingError

# The authors' recipe (DESIGN.md section 4) for a GPU.  On a CPU the defaults shrink to a model and
# schedule that show recognisable digits within about 15 minutes on two cores.
GPU_DEFAULTS = dict(preset="paper", batch_size=256, lr=1e-4, epochs=1600, sample_steps=250, sample_every=5000,
                    ckpt_every=5000, log_every=50)
CPU_DEFAULTS = dict(preset="tiny", batch_size=64, lr=1e-3, steps=1500, sample_steps=100, sample_every=500,
                    ckpt_every=250, log_every=10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minisdit.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="default: gpu if usable, else cpu")
    parser.add_argument("--preset", default=None, help="tiny, small, paper, paper-cifar (default: paper on GPU, tiny on CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (0: none, as the authors)")
    parser.add_argument("--grad-clip", type=float, default=0.0, help="clip the global gradient norm (0: off, as the authors)")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs (ignored when --steps is given)")
    parser.add_argument("--steps", type=int, default=None, help="train this many optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<preset>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint (default: <out>/checkpoint.safetensors)")
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights, e.g. 0.9999 (0: off)")
    parser.add_argument("--sample-every", type=int, default=None, help="write a sample grid every N steps")
    parser.add_argument("--sample-steps", type=int, default=None, help="respaced DDPM steps for the sample grids")
    parser.add_argument("--ckpt-every", type=int, default=None, help="write a checkpoint every N steps")
    parser.add_argument("--log-every", type=int, default=None)
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale for the sample grids")
    parser.add_argument("--data-dir", default=None, help="where data sets are cached (default: $MINISDIT_DATA or ~/.cache/minisdit)")
    parser.add_argument("--num-train", type=int, default=None, help="use only the first N training images (quick experiments)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    return parser


def choose_device(requested: str | None) -> tuple[str, str]:
    """The device to train on and a sentence saying why."""
    if requested == "gpu":
        backend.get_array_module("gpu")  # raises DeviceUnavailableError with the real reason
        return "gpu", "device: gpu (asked for)"
    if requested == "cpu":
        return "cpu", "device: cpu (asked for)"
    try:
        backend.get_array_module("gpu")
        return "gpu", "device: gpu (found a usable CUDA GPU)"
    except backend.DeviceUnavailableError as error:
        return "cpu", f"device: cpu (no usable GPU: {error})"


def resolve_config(args, device: str) -> dict:
    defaults = GPU_DEFAULTS if device == "gpu" else CPU_DEFAULTS
    config = dict(
        dataset=args.dataset, device=device, seed=args.seed,
        preset=args.preset or defaults["preset"],
        batch_size=args.batch_size or defaults["batch_size"],
        lr=args.lr if args.lr is not None else defaults["lr"],
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
        ema=args.ema, cfg_scale=args.cfg_scale, num_train=args.num_train,
        sample_every=args.sample_every or defaults["sample_every"],
        sample_steps=args.sample_steps or defaults["sample_steps"],
        ckpt_every=args.ckpt_every or defaults["ckpt_every"],
        log_every=args.log_every or defaults["log_every"],
    )
    config["steps"] = args.steps
    config["epochs"] = args.epochs
    if args.steps is None and args.epochs is None:
        if "steps" in defaults:
            config["steps"] = defaults["steps"]
        else:
            config["epochs"] = defaults["epochs"]
    return config


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (TrainingError, CheckpointError, backend.DeviceUnavailableError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args) -> int:
    from . import data
    from .trainer import Trainer

    if args.dataset not in data.DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(data.DATASETS)}")
    device, reason = choose_device(args.device)
    print(reason, flush=True)

    out = Path(args.out or f"runs/{args.dataset}-{args.preset or (GPU_DEFAULTS if device == 'gpu' else CPU_DEFAULTS)['preset']}")
    checkpoint = None
    if args.resume is not None:
        path = out / "checkpoint.safetensors" if args.resume == "auto" else Path(args.resume)
        checkpoint = load_checkpoint(path)
        config = dict(checkpoint["config"])
        config["device"] = device
        for name in ("steps", "epochs"):  # a resumed run may be extended
            if getattr(args, name) is not None:
                config[name] = getattr(args, name)
        print(f"resuming from {path} at step {checkpoint['step']}", flush=True)
    else:
        config = resolve_config(args, device)
    out.mkdir(parents=True, exist_ok=True)

    images, labels = data.load_dataset(config["dataset"], split="train", data_dir=args.data_dir, download=True)
    if config.get("num_train"):
        images, labels = images[: config["num_train"]], labels[: config["num_train"]]
    trainer = Trainer(config, images, labels, out, progress=not args.no_progress)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if checkpoint is not None:
        check_compatible(checkpoint, trainer.model, out)
        trainer.restore(checkpoint)
    return trainer.train()


if __name__ == "__main__":
    sys.exit(main())
