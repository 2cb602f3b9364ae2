"""Draw images from a trained SDiT:

    python -m minisdit.sample --ckpt runs/mnist-tiny/checkpoint.safetensors --num 64 --sampler ddpm \
        --steps 250 --cfg-scale 1.0 --out grid.png        # or --out samples.npz (uint8 images + labels)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import CheckpointError, check_compatible, load_checkpoint

SAMPLERS = ("ddpm", "ddim")


def generate(diffusion, model, labels, *, sampler: str = "ddpm", steps: int = 250, seed: int = 0,
             cfg_scale: float = 1.0, eta: float = 0.0, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as a NumPy array, one per label, reproducible from ``seed``.

    Batch b draws its noise from default_rng([seed, b]), so the same seed gives the same images
    whatever else ran before.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    labels = np.asarray(labels, dtype=np.int64)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for b, start in enumerate(range(0, len(labels), batch_size)):
            y = labels[start:start + batch_size]
            shape = (len(y), model.in_channels, model.input_size, model.input_size)
            rng = np.random.default_rng([seed, b])
            if sampler == "ddpm":
                images = diffusion.p_sample_loop(model, shape, y=y, steps=steps, rng=rng, cfg_scale=cfg_scale,
                                                 progress=progress)
            else:
                images = diffusion.ddim_sample_loop(model, shape, y=y, steps=steps, rng=rng, cfg_scale=cfg_scale,
                                                    eta=eta, progress=progress)
            chunks.append(backend.to_numpy(getattr(images, "data", images)))
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)


def load_model(path, device: str = "cpu", use_ema: bool = True):
    """The model saved in a training checkpoint (its EMA weights when present and ``use_ema``)."""
    from .models import sdit_from_preset

    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    model = sdit_from_preset(config["preset"], in_channels=config.get("in_channels", 1),
                             input_size=config.get("input_size", 28), seed=config.get("seed", 0))
    check_compatible(checkpoint, model, path)
    weights = checkpoint["ema"] if use_ema and checkpoint["ema"] is not None else checkpoint["model"]
    model.load_state_dict(weights)
    return model.to(device=device).eval(), checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minisdit.sample", description="Draw images from a trained SDiT.")
    parser.add_argument("--ckpt", required=True, help="a checkpoint.safetensors written by minisdit.train")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=250, help="respaced steps (the authors: 250)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--labels", default=None, help="comma list of class labels (default: 0, 1, ..., cycling)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights even when EMA weights exist")
    parser.add_argument("--out", default="samples.png", help=".png for a grid, .npz for uint8 images and labels")
    return parser


def main(argv=None) -> int:
    from .diffusion import GaussianDiffusion
    from .images import save_grid, to_uint8

    args = build_parser().parse_args(argv)
    try:
        model, _ = load_model(args.ckpt, device=args.device, use_ema=not args.no_ema)
        if args.labels:
            labels = np.array([int(v) for v in args.labels.split(",")] * args.num)[: args.num]
        else:
            labels = np.arange(args.num) % model.num_classes
        if labels.min() < 0 or labels.max() > model.num_classes:
            raise ValueError(f"labels must lie in 0..{model.num_classes} ({model.num_classes} = no class)")
        images = to_uint8(generate(GaussianDiffusion(), model, labels, sampler=args.sampler, steps=args.steps,
                                   seed=args.seed, cfg_scale=args.cfg_scale, eta=args.eta,
                                   batch_size=args.batch_size, progress=True))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".npz":
            np.savez(out, images=images, labels=labels)
        else:
            save_grid(images, out, columns=min(10, args.num) if args.labels is None else 8)
    except (CheckpointError, ValueError, backend.DeviceUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(images)} images ({args.sampler}, {args.steps} steps, cfg {args.cfg_scale}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
