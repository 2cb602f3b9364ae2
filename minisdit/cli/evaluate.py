"""Evaluate a trained SDiT:

    python -m minisdit.evaluate --ckpt runs/mnist-tiny/checkpoint.safetensors --num-samples 1000 \
        --metric fid-lenet,is-lenet,fid-inception --sampler ddpm --steps 250 [--energy]

Draws samples (labels cycling 0..9), computes each metric against the real test split, prints a
table that names the metric, the number of samples, the sampler, its steps and the split, and
writes the same as JSON (``--json``, default next to the checkpoint).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import data
from ..autograd import backend
from ..data.images import to_uint8
from ..diffusion import GaussianDiffusion, generate
from ..metrics import (conv2d_macs, estimate_energy, inception_features, inception_score, lenet_outputs, linear_macs,
                       load_inception, load_lenet, reference_statistics)
from ..metrics.fid import FeatureStatistics
from ..models.sdit import SDiTBlock
from ..snn import firing_rates, record_firing_rates, reset_firing_rates
from ..training.checkpoint import CheckpointError, load_model
from .common import OneLineParser, add_cpu_arguments, configure_cpu_runtime, own_runtime_settings

METRICS = ("fid-lenet", "is-lenet", "fid-inception")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m minisdit.evaluate", description="Evaluate a trained SDiT.")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--metric", default="fid-lenet,is-lenet", help=f"comma list of {', '.join(METRICS)}")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", default=None, help="an .npz from minisdit.sample to evaluate instead of sampling")
    parser.add_argument("--num-reference", type=int, default=None,
                        help="test images for the FID_Inception reference (default: the whole split)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--energy", action="store_true", help="also report firing rates and the 45 nm energy estimate")
    parser.add_argument("--json", default=None, help="where to write the results (default: <ckpt folder>/eval.json)")

    add_cpu_arguments(parser)
    return parser


def lenet_metrics(images_uint8: np.ndarray, dataset: str, wanted: list[str], device: str) -> dict:

    lenet = load_lenet(dataset, device=device)
    features, probabilities = lenet_outputs(images_uint8, lenet)
    results = {}
    if "fid-lenet" in wanted:
        reference = reference_statistics(dataset)
        results["fid-lenet"] = FeatureStatistics.from_features(features).frechet_distance(reference)
    if "is-lenet" in wanted:
        results["is-lenet"] = inception_score(probabilities, splits=1)[0]
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
        generate(diffusion, model, np.arange(16) % model.num_classes, steps=20, seed=0)
    rates = firing_rates(model)
    tokens, d = 2 * model.num_tokens if model.reconstruction else model.num_tokens, model.hidden_size
    # Each SN output is added to the residual stream and feeds the next LayerNorm'd projections. The
    # spiking-transformer convention (Spikformer, SDiT) counts the projections after each SN as
    # spike-driven: TimeMix's SN feeds ChannelMix's key/receptance (D->4D, D->D), ChannelMix's SN feeds the
    # next block's four TimeMix projections (4 x D->D).
    layers = []
    for name, rate in rates.items():
        macs = linear_macs(tokens, d, 5 * d) if name.endswith("att_neuron") else linear_macs(tokens, d, 4 * d)
        layers.append((name, rate, macs))
    total_macs = count_macs(model)
    spike_fed = sum(m for _, _, m in layers)
    report = estimate_energy(layers, real_fed_macs=max(total_macs - spike_fed, 0), time_steps=model.T)
    return {"firing_rates": rates, "macs_per_forward": total_macs, "acs_per_forward": report.total_acs,
            "snn_energy_uj": report.snn_energy_pj / 1e6, "ann_energy_uj": report.ann_energy_pj / 1e6,
            "energy_ratio": report.energy_ratio, "summary": str(report)}


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass for one image (Linear and Conv layers)."""
    d, m = model.hidden_size, model.num_tokens
    z = 2 * m if model.reconstruction else m
    block = linear_macs(z, d, 4 * d) + linear_macs(z, d, 4 * d) + linear_macs(z, 4 * d, d) + linear_macs(z, d, d)
    if model.reconstruction:
        block += linear_macs(m, d, m) + linear_macs(m, m, d)
    blocks = sum(1 for module in model.modules() if isinstance(module, SDiTBlock))
    skips = len(model.out_blocks) * linear_macs(m, 2 * d, d)
    grid = model.grid_size[0] * model.grid_size[1]
    p, c = model.patch_size, model.in_channels
    embed = conv2d_macs(*model.grid_size, c, d, p, p) + linear_macs(1, 256, d) + linear_macs(1, d, d)
    head = linear_macs(grid, d, p * p * model.out_channels) + conv2d_macs(
        model.input_size, model.input_size, model.out_channels, model.out_channels, 3, 3)
    return int(blocks * block + skips + embed + head)


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
    if args.device == "cpu":
        configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
    model, checkpoint = load_model(args.ckpt, device=args.device)
    dataset = checkpoint["config"]["dataset"]
    diffusion = GaussianDiffusion()
    started = time.perf_counter()
    if args.samples:
        stored = np.load(args.samples, allow_pickle=False)
        images = stored["images"][: args.num_samples]
        sampler_note = f"from {args.samples}"
    else:
        labels = np.arange(args.num_samples) % model.num_classes
        images = to_uint8(generate(diffusion, model, labels, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                   cfg_scale=args.cfg_scale, batch_size=args.batch_size, progress=True))
        sampler_note = f"{args.sampler}, {args.steps} steps, cfg {args.cfg_scale}"
    sampling_seconds = time.perf_counter() - started

    results = {"checkpoint": str(args.ckpt), "step": checkpoint["step"], "dataset": dataset,
               "num_samples": int(len(images)), "sampler": args.sampler, "steps": args.steps,
               "cfg_scale": args.cfg_scale, "seed": args.seed, "split": "test", "sampling_seconds": sampling_seconds,
               "metrics": {}}
    if {"fid-lenet", "is-lenet"} & set(wanted):
        results["metrics"].update(lenet_metrics(images, dataset, wanted, args.device))
    if "fid-inception" in wanted:

        inception = load_inception(device=args.device)
        reference = inception_reference(dataset, args.data_dir, args.num_reference, inception)
        features = inception_features(images, inception, progress=True)
        results["metrics"]["fid-inception"] = FeatureStatistics.from_features(features).frechet_distance(reference)
        results["inception_reference_count"] = reference.count
    if args.energy:
        results["energy"] = energy_report(model, diffusion, args.device)

    print(f"{'metric':<14} {'value':>10}  samples  sampler                    split")
    for name in wanted:
        print(f"{name:<14} {results['metrics'][name]:>10.3f}  {len(images):>7}  {sampler_note:<26} test ({dataset})")
    if args.energy:
        energy = results["energy"]
        for name, rate in energy["firing_rates"].items():
            print(f"firing rate {name}: {rate:.4f}")
        print(energy["summary"])
    out = Path(args.json) if args.json else Path(args.ckpt).with_name("eval.json")
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
