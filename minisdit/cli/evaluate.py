"""Evaluate a trained SDiT:

    python -m minisdit.evaluate --ckpt runs/mnist-tiny/checkpoint.safetensors --num-samples 1000 \
        --metric fid-lenet,is-lenet,fid-inception --sampler ddpm --steps 250 [--energy]
    python -m minisdit.evaluate --samples samples.npz --metric fid-lenet,is-lenet

Draws samples (labels cycling 0..9) from the checkpoint on the diffusion it was trained with, or
reads them from an .npz of minisdit.sample (``images`` uint8 (N, C, H, W)); computes each metric
against the real test split (``speckle``, the share of gray background pixels, needs no reference:
metrics/speckle.py); prints a table that names the metric, the number of samples, the
sampler, its steps and the split; and writes the same as JSON (``--json``, default next to the
checkpoint, else next to the samples file).  For a samples file the JSON records the file's own
settings (sampler, steps, cfg_scale, eta, seed, checkpoint_step, weights; null where the file has
none).  The dataset is --dataset, else the checkpoint's, else the one the file names; sources that
disagree are an error.  --energy runs the model, so it needs --ckpt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from .. import data
from ..autograd import backend
from ..data.images import to_uint8
from ..diffusion import SAMPLERS, generate, generate_in_workers
from ..metrics import (estimate_energy, inception_features, inception_score, lenet_outputs, linear_macs,
                       load_inception, load_lenet, reference_statistics)
from ..metrics.energy import forward_macs
from ..metrics.fid import FeatureStatistics
from ..metrics.speckle import background_speckle
from ..snn import firing_rates, record_firing_rates, reset_firing_rates
from ..training.checkpoint import CheckpointError, load_model
from .common import (OneLineParser, add_cpu_arguments, add_sampling_arguments, configure_cpu_runtime,
                     own_runtime_settings, sampling_report)
from .sample import check_steps, diffusion_from_checkpoint

METRICS = ("fid-lenet", "is-lenet", "class-lenet", "fid-inception", "speckle")
# what minisdit.sample writes into an .npz beside the images, recorded in the JSON
SAMPLE_SETTINGS = ("sampler", "steps", "cfg_scale", "eta", "clip_denoised", "variance", "guidance_min_t", "seed",
                   "checkpoint_step", "weights")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m minisdit.evaluate", description="Evaluate a trained SDiT.")
    parser.add_argument("--ckpt", default=None, help="a checkpoint.safetensors to draw samples from (or for --energy)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--metric", default="fid-lenet,is-lenet", help=f"comma list of {', '.join(METRICS)}")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=250, help="respaced steps, at most the checkpoint's diffusion steps")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta, with --sampler ddim (0: deterministic)")
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", default=None, help="an .npz from minisdit.sample to evaluate instead of sampling")
    parser.add_argument("--dataset", choices=data.DATASETS, default=None,
                        help="the real data to compare with (default: the checkpoint's, else the samples file's)")
    parser.add_argument("--num-reference", type=int, default=None,
                        help="test images for the FID_Inception reference (default: the whole split)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--energy", action="store_true", help="also report firing rates and the 45 nm energy estimate")
    add_sampling_arguments(parser)
    parser.add_argument("--json", default=None, help="where to write the results (default: <ckpt folder>/eval.json, "
                                                     "without --ckpt <samples file>.eval.json)")

    add_cpu_arguments(parser)
    return parser


def lenet_metrics(images_uint8: np.ndarray, dataset: str, wanted: list[str], device: str, labels=None) -> dict:
    """FID_LeNet, IS_LeNet and "class-lenet": the share of samples the dataset's LeNet classifies as the
    class they were drawn for (``labels``), with the share per class in "class-lenet per class"."""

    lenet = load_lenet(dataset, device=device)
    features, probabilities = lenet_outputs(images_uint8, lenet)
    results = {}
    if "fid-lenet" in wanted:
        reference = reference_statistics(dataset)
        results["fid-lenet"] = FeatureStatistics.from_features(features).frechet_distance(reference)
    if "is-lenet" in wanted:
        results["is-lenet"] = inception_score(probabilities, splits=1)[0]
    if "class-lenet" in wanted:
        if labels is None:
            raise ValueError("class-lenet needs the labels the samples were drawn for; the samples file holds none "
                             "(write it with python -m minisdit.sample --out FILE.npz)")
        labels = np.asarray(labels)[:len(images_uint8)]
        read = np.argmax(probabilities, axis=1)
        results["class-lenet"] = float(np.mean(read == labels))
        results["class-lenet per class"] = {int(k): float(np.mean(read[labels == k] == k)) for k in np.unique(labels)}
    results["lenet_test_accuracy"] = lenet.metadata.get("test_accuracy")
    return results


def inception_reference(dataset: str, data_dir, count: int | None, model):
    """Inception statistics of the test split, cached under the data folder."""

    images, _ = data.load_dataset(dataset, split="test", data_dir=data_dir, download=True)
    images = images[:count] if count else images
    cache = data.data_root(data_dir) / f"inception_reference_{dataset}_test_{len(images)}.npz"
    if cache.exists():
        stored = np.load(cache, allow_pickle=False)
        return FeatureStatistics.from_moments(stored["mean"], stored["covariance"], int(stored["count"]))
    statistics = FeatureStatistics.from_features(inception_features(images, model, progress=True))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mean=statistics.mean, covariance=statistics.covariance, count=statistics.count)
    return statistics


def energy_report(model, diffusion, device: str) -> dict:
    """Firing rate of every LIF layer over one sampling run, and the 45 nm energy estimate."""

    reset_firing_rates(model)
    with record_firing_rates():
        generate(diffusion, model, np.arange(16) % model.num_classes, steps=min(20, diffusion.num_timesteps), seed=0)
    rates = firing_rates(model)
    tokens, d = 2 * model.num_tokens if model.reconstruction else model.num_tokens, model.hidden_size
    # Each SN output is added to the residual stream and feeds the next LayerNorm'd projections. The
    # spiking-transformer convention (Spikformer, SDiT) counts the projections after each SN as
    # spike-driven: the attention's SN feeds ChannelMix's key/receptance (D->4D, D->D), ChannelMix's SN
    # feeds the next block's four attention projections (4 x D->D: TimeMix's or softmax attention's),
    # and the spiking embedding's SN (``x_neuron``, on the patch tokens) the first block's four.
    layers = []
    for name, rate in rates.items():
        if name.endswith("att_neuron"):
            macs = linear_macs(tokens, d, 5 * d)
        elif name == "x_neuron":
            macs = linear_macs(model.num_tokens - 1, d, 4 * d)
        else:
            macs = linear_macs(tokens, d, 4 * d)
        layers.append((name, rate, macs))
    total_macs = count_macs(model)
    spike_fed = sum(m for _, _, m in layers)
    report = estimate_energy(layers, real_fed_macs=max(total_macs - spike_fed, 0), time_steps=model.T)
    return {"firing_rates": rates, "macs_per_forward": total_macs, "acs_per_forward": report.total_acs,
            "snn_energy_uj": report.snn_energy_pj / 1e6, "ann_energy_uj": report.ann_energy_pj / 1e6,
            "energy_ratio": report.energy_ratio, "summary": str(report)}


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass for one image: every Linear and Conv2d module of the
    model, with the tokens (or output pixels) it sees in a recorded forward pass
    (``metrics.forward_macs``)."""
    image = np.zeros((1, model.in_channels, model.input_size, model.input_size), dtype=model.dtype)
    return forward_macs(model, image, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))


def load_samples(path) -> tuple[np.ndarray, dict]:
    """The images of an .npz written by minisdit.sample, and its settings (None where absent)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--samples {path} does not exist; give a file written by python -m minisdit.sample "
                                "--out FILE.npz")
    if not zipfile.is_zipfile(path):  # an .npz is a zip archive; np.load would try other formats first
        raise ValueError(f"cannot read --samples {path}: it is not an .npz archive; give a file written by "
                         "python -m minisdit.sample --out FILE.npz")
    stored = np.load(path, allow_pickle=False)
    with stored:
        if "images" not in stored.files:
            raise ValueError(f"--samples {path} holds no 'images' array (it has: {', '.join(stored.files) or 'nothing'}); "
                             "give a file written by python -m minisdit.sample --out FILE.npz")
        images = stored["images"]
        settings = {name: stored[name].item() if name in stored.files else None
                    for name in SAMPLE_SETTINGS + ("dataset",)}
        settings["labels"] = stored["labels"] if "labels" in stored.files else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"--samples {path}: 'images' must be uint8 (N, C, H, W), got {images.dtype} {images.shape}; "
                         "give a file written by python -m minisdit.sample --out FILE.npz")
    return images, settings


def choose_dataset(requested, checkpoint, file_settings) -> str:
    """--dataset, else the checkpoint's, else the samples file's; given sources must agree."""
    sources = {"--dataset": requested,
               "the checkpoint": checkpoint["config"].get("dataset") if checkpoint else None,
               "the samples file": (file_settings or {}).get("dataset") or None}
    named = {where: name for where, name in sources.items() if name}
    if not named:
        raise ValueError("no dataset to compare with: pass --dataset (e.g. --dataset mnist)")
    if len(set(named.values())) > 1:
        raise ValueError("the dataset sources disagree (" + ", ".join(f"{where}: {name}" for where, name in named.items())
                         + "); pass the matching --dataset, checkpoint and samples file")
    return next(iter(named.values()))


@own_runtime_settings  # the CPU-kernel setting ends with the command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, ValueError, FileNotFoundError, backend.DeviceUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args) -> int:
    wanted = [name.strip() for name in args.metric.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    if args.ckpt is None and args.samples is None:
        raise ValueError("nothing to evaluate: give --ckpt to draw samples from a checkpoint, or --samples FILE.npz")
    if args.energy and args.ckpt is None:
        raise ValueError("--energy measures the model's firing rates while sampling; give --ckpt")
    if args.eta != 0 and args.sampler != "ddim":
        raise ValueError(f"--eta {args.eta} applies to the DDIM sampler only; add --sampler ddim or drop --eta")
    if args.device == "cpu":
        configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
    model = checkpoint = diffusion = None
    if args.ckpt is not None:
        model, checkpoint = load_model(args.ckpt, device=args.device)
        diffusion = diffusion_from_checkpoint(checkpoint)
    started = time.perf_counter()
    if args.samples:
        images, settings = load_samples(args.samples)
        images = images[: args.num_samples]
        dataset = choose_dataset(args.dataset, checkpoint, settings)
        settings.pop("dataset")
        labels = settings.pop("labels")
    else:
        check_steps(args.steps, diffusion)
        dataset = choose_dataset(args.dataset, checkpoint, None)
        labels = np.arange(args.num_samples) % model.num_classes
        images = to_uint8(generate_in_workers(diffusion, model, labels, workers=args.workers, sampler=args.sampler,
                                              steps=args.steps, seed=args.seed, cfg_scale=args.cfg_scale, eta=args.eta,
                                              batch_size=args.batch_size, clip_denoised=args.clip_denoised,
                                              variance=args.variance, guidance_min_t=args.guidance_min_t,
                                              report=sampling_report(True)))
        settings = {"sampler": args.sampler, "steps": args.steps, "cfg_scale": args.cfg_scale, "eta": args.eta,
                    "clip_denoised": args.clip_denoised, "variance": args.variance,
                    "guidance_min_t": args.guidance_min_t, "seed": args.seed, "checkpoint_step": checkpoint["step"], "weights": checkpoint["weights_used"]}
    sampling_seconds = None if args.samples else time.perf_counter() - started  # a file's images were drawn earlier
    if settings["sampler"] is not None:
        sampler_note = f"{settings['sampler']}, {settings['steps']} steps, cfg {settings['cfg_scale']}"
    else:
        sampler_note = f"from {args.samples}"

    results = {"checkpoint": None if args.ckpt is None else str(args.ckpt),
               "step": checkpoint["step"] if checkpoint else settings["checkpoint_step"],
               "samples": args.samples and str(args.samples), "dataset": dataset, "num_samples": int(len(images)),
               **settings, "split": "test", "sampling_seconds": sampling_seconds, "metrics": {}}
    if {"fid-lenet", "is-lenet", "class-lenet"} & set(wanted):
        results["metrics"].update(lenet_metrics(images, dataset, wanted, args.device, labels))
    if "fid-inception" in wanted:

        inception = load_inception(device=args.device)
        reference = inception_reference(dataset, args.data_dir, args.num_reference, inception)
        features = inception_features(images, inception, progress=True)
        results["metrics"]["fid-inception"] = FeatureStatistics.from_features(features).frechet_distance(reference)
        results["inception_reference_count"] = reference.count
    if "speckle" in wanted:  # gray dots in the background (metrics/speckle.py); needs no network
        results["metrics"]["speckle"] = background_speckle(images)
    if args.energy:
        results["energy"] = energy_report(model, diffusion, args.device)

    print(f"{'metric':<14} {'value':>10}  samples  sampler                    split")
    for name in wanted:
        print(f"{name:<14} {results['metrics'][name]:>10.3f}  {len(images):>7}  {sampler_note:<26} test ({dataset})")
    if "class-lenet" in wanted:
        per_class = results["metrics"]["class-lenet per class"]
        print("class-lenet per class: " + ", ".join(f"{k}: {v:.0%}" for k, v in per_class.items()))
    if args.energy:
        energy = results["energy"]
        for name, rate in energy["firing_rates"].items():
            print(f"firing rate {name}: {rate:.4f}")
        print(energy["summary"])
    if args.json:
        out = Path(args.json)
    else:
        out = Path(args.ckpt).with_name("eval.json") if args.ckpt else Path(args.samples).with_suffix(".eval.json")
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
