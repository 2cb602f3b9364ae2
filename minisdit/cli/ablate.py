"""Compare model variants:  python -m minisdit.ablate --steps 2000 [--variants default,no-spiking,T1] [--out DIR]

Trains each variant (default: the paper's model, no Reconstruction Module, softmax attention, a
spiking embedding, no spiking, T = 1 and T = 8; see minisdit/training/ablation.py for the names)
with the same config, seed, data order and budget (--steps, or --minutes per variant), each in its
own run folder <out>/<variant>/, then evaluates each the same way: N = --num-samples images with
labels cycling through the classes, drawn with --sampler, --sample-steps and guidance --cfg-scale
from the same seed; FID_LeNet and the classifier IS against the test split; how often LeNet reads
the class a sample was drawn for; the firing rates and the energy estimate of
``python -m minisdit.evaluate --energy``; the training images/s.  Writes <out>/ablation.md (the
table, with N, sampler, steps, guidance and seed), ablation.json, samples.png (every variant's
grid side by side) and losses.png (every loss curve).

Run the same command again after a kill (or with more variants, or a larger budget): finished
variants are not retrained, a half-trained one resumes from its checkpoint, finished evaluations
are reused.  The training options (--preset, --lr, ...) are those of ``python -m minisdit.train``,
with its recipe for the device as the defaults, except that the learning rate stays constant after its
warm-up unless --lr-decay-fraction is given.  Errors are one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from .. import data
from ..data.images import to_uint8
from ..diffusion import SAMPLERS, VARIANCES, generate
from ..metrics import inception_score, lenet_outputs, load_lenet, reference_statistics
from ..metrics.fid import FeatureStatistics
from ..training import ablation
from ..training.checkpoint import load_model
from ..training.config import MSE_WEIGHTINGS, VARIANT_FIELDS, build_diffusion, check_variant, variant_flags
from ..training.trainer import CHECKPOINT_NAME, TrainingError
from . import train
from .common import EXPECTED_ERRORS, one_line_error, OneLineParser, add_cpu_arguments, choose_device, configure_cpu_runtime, own_runtime_settings
from .evaluate import energy_report

# a --minutes budget without --steps trains until the time is spent; the step count only has to be unreachable
MINUTES_STEP_CAP = 10 ** 7
# no sample grids while training (every variant draws its evaluation samples afterwards); the final grid stays
NO_GRIDS = 2 ** 62
# guidance of the evaluation on a GPU, where the recipe (the authors') draws its grids without any
GPU_CFG_SCALE = 4.0
NUM_SAMPLES = {"gpu": 1000, "cpu": 250}


def build_parser():
    parser = OneLineParser(prog="python -m minisdit.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(ablation.DEFAULT_VARIANTS),
                        help=f"comma list of {', '.join(ablation.VARIANTS)}, T<K>, or names joined with + "
                             f"(default: {','.join(ablation.DEFAULT_VARIANTS)})")
    parser.add_argument("--out", default=None, help="the ablation's folder (default: runs/ablation-<dataset>-<preset>)")
    parser.add_argument("--steps", type=int, default=None, help="train every variant this many optimizer steps")
    parser.add_argument("--minutes", type=float, default=None,
                        help="train every variant this many minutes (of training, not sampling); with --steps: "
                             "whichever is reached first")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="default: gpu if usable, else cpu")
    evaluation = parser.add_argument_group("evaluation (the same for every variant)")
    evaluation.add_argument("--num-samples", type=int, default=None,
                            help=f"N, images drawn per variant (default {NUM_SAMPLES['gpu']} on GPU, {NUM_SAMPLES['cpu']} on CPU)")
    evaluation.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    evaluation.add_argument("--sample-steps", type=int, default=None,
                            help="respaced steps of the evaluation and the final grids (default: the recipe's, 250 on "
                                 "GPU, 100 on CPU)")
    evaluation.add_argument("--cfg-scale", type=float, default=None,
                            help=f"classifier-free guidance of the samples (default: 5 on CPU as its recipe, "
                                 f"{GPU_CFG_SCALE:g} on GPU)")
    evaluation.add_argument("--guidance-min-t", type=int, default=None,
                            help="guidance only at timesteps t >= this (default: the recipe's, 200 on CPU, 0 on GPU)")
    evaluation.add_argument("--sample-variance", choices=VARIANCES, default=None,
                            help="the DDPM step's noise, learned or posterior (default: the recipe's, posterior on CPU, "
                                 "learned on GPU)")
    evaluation.add_argument("--eval-batch-size", type=int, default=256, help="images drawn together (part of what the seed fixes)")
    options = parser.add_argument_group("training options (as python -m minisdit.train; default: its recipe for the device)")
    options.add_argument("--dataset", default=None)
    options.add_argument("--preset", default=None)
    options.add_argument("--seed", type=int, default=None)
    options.add_argument("--batch-size", type=int, default=None)
    for name in ("lr", "weight_decay", "lr_decay_fraction", "grad_clip", "ema", "max_mse_weight"):
        options.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    for name in ("warmup_steps", "workers", "num_train", "ckpt_every", "log_every", "sample_num"):
        options.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    options.add_argument("--mse-weighting", choices=MSE_WEIGHTINGS, default=None)
    options.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None)
    options.add_argument("--data-dir", default=None, help="where data sets are cached")
    add_cpu_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    # what minisdit.train's config helpers read but an ablation decides itself: the variant, the grids, the length
    parser.set_defaults(epochs=None, sample_every=None, **{name: None for name in VARIANT_FIELDS})
    return parser


def check_arguments(args) -> None:
    if args.steps is None and args.minutes is None:
        raise ValueError("give the budget of every variant: --steps N or --minutes M")
    if args.minutes is not None and not args.minutes > 0:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    if args.minutes is not None and args.steps is None and args.lr_decay_fraction:
        raise ValueError("--lr-decay-fraction needs the run's length in steps; add --steps (the cap) to --minutes")
    for name in ("num_samples", "eval_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    train.check_arguments(args)  # the training options, as minisdit.train checks them


@own_runtime_settings  # the CPU-kernel setting ends with the command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue the ablation", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        return one_line_error(error)


def run(args) -> int:
    check_arguments(args)
    variants = ablation.parse_variants(args.variants)
    device, reason = choose_device(args.device)
    print(reason, flush=True)
    if device == "cpu":
        configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
    base = train.resolve_config(args, device)
    base = dataclasses.replace(base, steps=args.steps if args.steps is not None else MINUTES_STEP_CAP, epochs=None,
                               sample_every=NO_GRIDS)
    if args.lr_decay_fraction is None:
        # a constant rate unless asked: a larger budget then trains a finished variant further exactly as a
        # fresh run with that budget (a decay over the last fraction would move with the budget), and a
        # --minutes budget has no last steps to decay over; the CPU recipe's cooldown is for one fixed run
        base = dataclasses.replace(base, lr_decay_fraction=0.0)
    if device == "gpu" and args.cfg_scale is None:
        base = dataclasses.replace(base, cfg_scale=GPU_CFG_SCALE)
    for _, fields in variants:  # a variant this model cannot build fails now, not after hours of the others
        check_variant(dataclasses.replace(base, **fields))

    images, labels = data.load_dataset(base.dataset, split="train", data_dir=args.data_dir, download=True)
    if base.num_train is not None:
        images, labels = images[: base.num_train], labels[: base.num_train]
    base = dataclasses.replace(base, in_channels=int(images.shape[1]), input_size=int(images.shape[-1]),
                               num_classes=data.dataset_spec(base.dataset).num_classes)
    out = Path(args.out or f"runs/ablation-{base.dataset}-{base.preset}")
    out.mkdir(parents=True, exist_ok=True)
    budget = ablation.budget_of(args.steps, args.minutes)
    settings = {"dataset": base.dataset, "preset": base.preset, "seed": base.seed, "batch_size": base.batch_size,
                "device": device, "budget": budget, "budget_text": budget_text(budget),
                "num_samples": args.num_samples or NUM_SAMPLES[device], "num_classes": base.num_classes,
                "sampler": args.sampler, "sample_steps": base.sample_steps, "cfg_scale": base.cfg_scale,
                "guidance_min_t": base.guidance_min_t, "sample_variance": base.sample_variance,
                "eval_batch_size": args.eval_batch_size, "variants": [name for name, _ in variants],
                "train_config": {name: value for name, value in base.to_dict().items() if name not in VARIANT_FIELDS}}
    progress = not args.no_progress and sys.stderr.isatty()

    rows, grids, curves = [], [], []
    for name, fields in variants:
        folder = out / name
        flags = variant_flags(fields) if fields else "no variant flags"
        print(f"== {name}: {ablation.describe(fields)} ({flags}); run folder {folder}", flush=True)
        code, what = ablation.train_variant(dataclasses.replace(base, **fields), images, labels, folder, budget=budget,
                                            progress=progress)
        if code != 0:
            print(f"ablation stopped while training {name} (its checkpoint is saved); run the same command again "
                  "to continue where it stopped", flush=True)
            return code
        print(f"{name}: training {what}", flush=True)
        result, reused = evaluate_variant(folder, fields, settings, device, progress)
        print(f"{name}: evaluation {'reused' if reused else 'done'}: FID_LeNet {result['fid_lenet']:.2f}, "
              f"IS {result['is_lenet']:.3f}, LeNet reads the class {result['label_accuracy']:.1%}", flush=True)
        record = ablation.training_record(folder)
        curves.append((name, record.pop("losses")))
        rows.append({"name": name, "fields": fields, "flags": flags, "changes": ablation.describe(fields),
                     **record, **{key: value for key, value in result.items() if key != "settings"}})
        with np.load(folder / ablation.SAMPLES_NAME) as saved:  # the grid: the first two rows of the samples
            grids.append((name, saved["images"][: 2 * base.num_classes]))
    paths = ablation.write_report(out, rows, settings, grids, curves)
    print(f"wrote {', '.join(str(path) for path in paths.values())}", flush=True)
    return 0


def budget_text(budget: dict) -> str:
    parts = []
    if budget["steps"] is not None:
        parts.append(f"{budget['steps']} steps")
    if budget["minutes"] is not None:
        parts.append(f"{budget['minutes']:g} minutes of training")
    return " or ".join(parts) + (", whichever comes first" if len(parts) > 1 else "")


def evaluate_variant(folder: Path, fields: dict, settings: dict, device: str, progress: bool) -> tuple[dict, bool]:
    """The evaluation of one trained variant (``eval.json`` in its folder, reused when it was made at the
    same step with the same settings): FID_LeNet, IS, the share of samples LeNet reads as their class,
    firing rates and energy.  Returns (the results, whether they were reused)."""
    model, checkpoint = load_model(folder / CHECKPOINT_NAME, device=device, variant=fields)
    wanted = {"step": checkpoint["step"], "weights": checkpoint["weights_used"],
              **{key: settings[key] for key in ("num_samples", "sampler", "sample_steps", "cfg_scale", "guidance_min_t",
                                                "sample_variance", "seed", "eval_batch_size", "dataset")}}
    previous = ablation.read_json(folder / ablation.EVAL_NAME)
    if previous is not None and previous.get("settings") == wanted and (folder / ablation.SAMPLES_NAME).exists():
        return previous, True
    diffusion = build_diffusion(checkpoint["train_config"])
    labels = np.arange(wanted["num_samples"]) % model.num_classes
    started = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        images = generate(diffusion, model, labels, sampler=wanted["sampler"], steps=wanted["sample_steps"],
                          seed=wanted["seed"], cfg_scale=wanted["cfg_scale"], batch_size=wanted["eval_batch_size"],
                          guidance_min_t=wanted["guidance_min_t"], variance=wanted["sample_variance"],
                          progress=progress)
    sampling_seconds = time.perf_counter() - started
    if not np.isfinite(images).all():
        raise TrainingError(f"the samples of {folder} hold non-finite values (diverged weights?); lower --lr or set "
                            "--grad-clip and start the ablation again with another --out")
    images = to_uint8(images)
    np.savez(folder / ablation.SAMPLES_NAME, images=images, labels=labels)
    lenet = load_lenet(wanted["dataset"], device=device)
    features, probabilities = lenet_outputs(images, lenet)
    energy = energy_report(model, diffusion, device)
    rates = energy["firing_rates"]
    result = {
        "settings": wanted,
        "parameters": model.num_parameters(),
        "fid_lenet": FeatureStatistics.from_features(features).frechet_distance(reference_statistics(wanted["dataset"])),
        "is_lenet": inception_score(probabilities, splits=1)[0],
        "label_accuracy": float(np.mean(np.argmax(probabilities, axis=1) == labels)),
        "firing_rates": rates,
        "mean_firing_rate": float(np.mean(list(rates.values()))) if rates else None,  # None: no spiking layer
        "macs_per_forward": energy["macs_per_forward"], "acs_per_forward": energy["acs_per_forward"],
        "snn_energy_uj": energy["snn_energy_uj"], "ann_energy_uj": energy["ann_energy_uj"],
        "energy_ratio": energy["energy_ratio"], "sampling_seconds": sampling_seconds,
    }
    ablation.write_json(folder / ablation.EVAL_NAME, result)
    return result, False


if __name__ == "__main__":
    sys.exit(main())
