"""Draw images from a trained SDiT:

    python -m minisdit.sample --ckpt runs/mnist-tiny/checkpoint.safetensors --num 64 --sampler ddpm \
        --steps 250 --cfg-scale 1.0 --out grid.png        # or --out samples.npz (uint8 images + labels)

The same checkpoint, seed, labels, sampler, steps and --batch-size give the same images.  The
.npz holds ``images`` (N, C, H, W) uint8 (round((x + 1) 127.5) clipped, DESIGN.md section 5),
``labels`` (N,) int64, and what made them: ``sampler``, ``steps``, ``cfg_scale``, ``eta``,
``seed``, ``checkpoint_step``, ``weights`` ("ema" or "model").
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import CheckpointError, check_compatible, load_checkpoint

SAMPLERS = ("ddpm", "ddim")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def generate(diffusion, model, labels, *, sampler: str = "ddpm", steps: int = 250, seed: int = 0,
             cfg_scale: float = 1.0, eta: float = 0.0, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as a NumPy array, one per label, reproducible from ``seed``.

    Batch b draws its noise from default_rng([seed, b]), so the same seed (and batch size) gives
    the same images whatever else ran before.
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
    """The model saved in a training checkpoint (its EMA weights when present and ``use_ema``).

    Returns (model in eval mode on ``device``, the checkpoint dict); ``checkpoint["weights_used"]``
    says which weights were loaded: "ema" or "model"."""
    from .models import PRESETS, sdit_from_preset

    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    preset = config.get("preset")
    if preset not in PRESETS:
        raise CheckpointError(f"checkpoint {path} names an unknown preset {preset!r} (known: {', '.join(PRESETS)}); "
                              "pass a checkpoint written by minisdit.train")
    model = sdit_from_preset(preset, in_channels=config.get("in_channels", 1), num_classes=config.get("num_classes", 10),
                             input_size=config.get("input_size", 28), seed=config.get("seed", 0))
    check_compatible(checkpoint, model, path)
    which = "ema" if use_ema and checkpoint["ema"] is not None else "model"
    model.load_state_dict(checkpoint[which])
    checkpoint["weights_used"] = which
    return model.to(device=device).eval(), checkpoint


def build_parser():
    from .train import OneLineParser

    parser = OneLineParser(prog="python -m minisdit.sample", description="Draw images from a trained SDiT.")
    parser.add_argument("--ckpt", required=True, help="a checkpoint.safetensors written by minisdit.train")
    parser.add_argument("--num", type=int, default=64, help="how many images")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=250, help="respaced steps, 1..1000 (the authors: 250)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--labels", default=None, help="comma list of class labels, repeated to --num "
                                                       "(default: 0, 1, ..., cycling through the classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="default: gpu if usable, else cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="images drawn together (part of what the seed fixes)")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights even when EMA weights exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", default="samples.png", help=".png (a grid) or .npz (uint8 images and labels)")
    from .train import add_cpu_arguments

    add_cpu_arguments(parser)
    return parser


def check_arguments(args) -> None:
    for name in ("num", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not 1 <= args.steps <= 1000:
        raise ValueError(f"--steps must lie in 1..1000 (the diffusion has 1000 steps), got {args.steps}")
    if not args.eta >= 0:
        raise ValueError(f"--eta must be zero or positive, got {args.eta}")
    if not args.cfg_scale >= 0:
        raise ValueError(f"--cfg-scale must be zero or positive, got {args.cfg_scale}")
    suffix = Path(args.out).suffix.lower()
    if suffix != ".npz" and suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {args.out} must end in .npz (uint8 images for evaluation) or an image suffix such as .png")


def parse_labels(text: str | None, num: int, num_classes: int) -> np.ndarray:
    """--labels "3,5" -> 3, 5, 3, 5, ... (num of them); None -> 0, 1, ..., num_classes - 1, 0, ..."""
    if text is None:
        return np.arange(num, dtype=np.int64) % num_classes
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"--labels must be a comma list of integers such as 3,5,7, got {text!r}") from None
    if not values:
        raise ValueError("--labels is empty; give a comma list of integers such as 3,5,7")
    if min(values) < 0 or max(values) > num_classes:
        raise ValueError(f"--labels must lie in 0..{num_classes} ({num_classes} = no class), got {text!r}")
    return np.resize(np.array(values, dtype=np.int64), num)


def main(argv=None) -> int:
    from .diffusion import GaussianDiffusion
    from .images import save_grid, to_uint8
    from .train import choose_device

    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        device, reason = choose_device(args.device)
        print(reason, flush=True)
        if device == "cpu":
            backend.configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
        model, checkpoint = load_model(args.ckpt, device=device, use_ema=not args.no_ema)
        which = checkpoint["weights_used"]
        labels = parse_labels(args.labels, args.num, model.num_classes)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            images = generate(GaussianDiffusion(), model, labels, sampler=args.sampler, steps=args.steps,
                              seed=args.seed, cfg_scale=args.cfg_scale, eta=args.eta, batch_size=args.batch_size,
                              progress=not args.no_progress and sys.stderr.isatty())
        if not np.isfinite(images).all():
            raise ValueError(f"the samples hold non-finite values; checkpoint {args.ckpt} (step {checkpoint['step']}) "
                             "may hold diverged weights; use an earlier checkpoint")
        images = to_uint8(images)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".npz":
            np.savez(out, images=images, labels=labels, sampler=np.array(args.sampler), steps=np.array(args.steps),
                     cfg_scale=np.array(args.cfg_scale), eta=np.array(args.eta), seed=np.array(args.seed),
                     checkpoint_step=np.array(checkpoint["step"]), weights=np.array(which))
        else:
            # one class per column: the label cycle, when it is short enough to read as columns
            cycle = model.num_classes if args.labels is None else len(set(labels[:args.num].tolist()))
            columns = min(args.num, cycle if cycle <= 16 else 10)
            save_grid(images, out, columns=columns)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (CheckpointError, ValueError, OSError, backend.DeviceUnavailableError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"wrote {len(images)} images ({args.sampler}, {args.steps} steps, cfg {args.cfg_scale}, "
          f"{which} weights of step {checkpoint['step']}) to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
