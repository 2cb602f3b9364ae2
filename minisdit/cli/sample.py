"""Draw images from a trained SDiT:

    python -m minisdit.sample --ckpt runs/mnist-tiny/checkpoint.safetensors --num 64 --sampler ddpm \
        --steps 250 --cfg-scale 1.0 --out grid.png        # or --out samples.npz (uint8 images + labels)

The same checkpoint, seed, labels, sampler, steps, eta, guidance, --variance, --guidance-min-t,
--clip-denoised and --batch-size give the same images: those of ``minisdit.diffusion.generate``
with the same arguments, for any --workers (the CPU processes that share the batches; a progress
line reports images/s).  The diffusion is the one the checkpoint was trained with
(``config["num_timesteps"]`` steps), and --steps respaces it.  The .npz holds ``images``
(N, C, H, W) uint8 (round((x + 1) 127.5) clipped, docs/DESIGN.md §5), ``labels`` (N,) int64, and
what made them: ``sampler``, ``steps``, ``cfg_scale``, ``eta``, ``clip_denoised``, ``variance``,
``guidance_min_t``, ``seed``, ``checkpoint_step``, ``weights`` ("ema" or "model") and ``dataset`` (what the model was
trained on, so that ``python -m minisdit.evaluate --samples`` needs no checkpoint).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..autograd import backend
from ..data.images import save_grid, to_uint8
from ..diffusion import SAMPLERS, GaussianDiffusion, generate_in_workers
from ..training.checkpoint import CheckpointError, load_model
from ..training.config import build_diffusion
from .common import (OneLineParser, add_cpu_arguments, add_sampling_arguments, choose_device, configure_cpu_runtime,
                     own_runtime_settings, sampling_report)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def build_parser():
    parser = OneLineParser(prog="python -m minisdit.sample", description="Draw images from a trained SDiT.")
    parser.add_argument("--ckpt", required=True, help="a checkpoint.safetensors written by minisdit.train")
    parser.add_argument("--num", type=int, default=64, help="how many images")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=250,
                        help="respaced steps, at most the checkpoint's diffusion steps (the authors: 250 of 1000)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta, with --sampler ddim (0: deterministic)")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--labels", default=None, help="comma list of class labels, repeated to --num "
                                                       "(default: 0, 1, ..., cycling through the classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="default: gpu if usable, else cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="images drawn together (part of what the seed fixes)")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights even when EMA weights exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    add_sampling_arguments(parser)
    parser.add_argument("--out", default="samples.png", help=".png (a grid) or .npz (uint8 images and labels)")
    add_cpu_arguments(parser)
    return parser


def check_arguments(args) -> None:
    for name in ("num", "batch_size", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not args.eta >= 0:
        raise ValueError(f"--eta must be zero or positive, got {args.eta}")
    if args.eta != 0 and args.sampler != "ddim":
        raise ValueError(f"--eta {args.eta} applies to the DDIM sampler only; add --sampler ddim or drop --eta")
    if not args.cfg_scale >= 0:
        raise ValueError(f"--cfg-scale must be zero or positive, got {args.cfg_scale}")
    suffix = Path(args.out).suffix.lower()
    if suffix != ".npz" and suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {args.out} must end in .npz (uint8 images for evaluation) or an image suffix such as .png")


def diffusion_from_checkpoint(checkpoint: dict) -> GaussianDiffusion:
    """The diffusion the checkpoint's model was trained with (its config's ``num_timesteps`` steps)."""
    return build_diffusion(checkpoint["train_config"])


def check_steps(steps: int, diffusion: GaussianDiffusion) -> None:
    """--steps respaces the checkpoint's diffusion, so it lies in 1..its number of steps."""
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(f"--steps must lie in 1..{diffusion.num_timesteps} (the checkpoint's diffusion has "
                         f"{diffusion.num_timesteps} steps), got {steps}")


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


@own_runtime_settings  # the CPU-kernel setting ends with the command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        device, reason = choose_device(args.device)
        print(reason, flush=True)
        if device == "cpu":
            configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
        model, checkpoint = load_model(args.ckpt, device=device, use_ema=not args.no_ema)
        which = checkpoint["weights_used"]
        diffusion = diffusion_from_checkpoint(checkpoint)
        check_steps(args.steps, diffusion)
        labels = parse_labels(args.labels, args.num, model.num_classes)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            images = generate_in_workers(diffusion, model, labels, workers=args.workers, sampler=args.sampler,
                                         steps=args.steps, seed=args.seed, cfg_scale=args.cfg_scale, eta=args.eta,
                                         batch_size=args.batch_size, clip_denoised=args.clip_denoised,
                                         variance=args.variance, guidance_min_t=args.guidance_min_t,
                                         report=sampling_report(not args.no_progress))
        if not np.isfinite(images).all():
            raise ValueError(f"the samples hold non-finite values; checkpoint {args.ckpt} (step {checkpoint['step']}) "
                             "may hold diverged weights; use an earlier checkpoint")
        images = to_uint8(images)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".npz":
            np.savez(out, images=images, labels=labels, sampler=np.array(args.sampler), steps=np.array(args.steps),
                     cfg_scale=np.array(args.cfg_scale), eta=np.array(args.eta), seed=np.array(args.seed),
                     clip_denoised=np.array(args.clip_denoised), variance=np.array(args.variance),
                     guidance_min_t=np.array(args.guidance_min_t),
                     checkpoint_step=np.array(checkpoint["step"]), weights=np.array(which),
                     dataset=np.array(str(checkpoint["config"].get("dataset", ""))))
        else:
            # one class per column: the label cycle, when it is short enough to read as columns
            cycle = model.num_classes if args.labels is None else len(set(labels[:args.num].tolist()))
            columns = min(args.num, cycle if cycle <= 16 else 10)
            save_grid(images, out, columns=columns)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (CheckpointError, ValueError, OSError, RuntimeError, backend.DeviceUnavailableError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"wrote {len(images)} images ({args.sampler}, {args.steps} steps, cfg {args.cfg_scale}, "
          f"{which} weights of step {checkpoint['step']}) to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
