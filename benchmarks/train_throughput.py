"""Training throughput (images/s) of each SDiT preset on this machine.

    python benchmarks/train_throughput.py [--device cpu|gpu] [--presets tiny,small] [--batch-size 32]
        [--blas-threads 1] [--no-cpu-kernels]

One training step = forward of the model, the hybrid DDPM loss, backward, AdamW update.  The first
steps (warm-up: kernel compilation, allocator growth) are not timed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from minisdit import Tensor, backend
from minisdit.diffusion import GaussianDiffusion
from minisdit.models import sdit_from_preset
from minisdit.optim import AdamW


def measure(preset: str, device: str, batch_size: int, steps: int, warmup: int) -> float:
    xp = backend.get_array_module(device)
    model = sdit_from_preset(preset, in_channels=1).to(device=device)
    diffusion = GaussianDiffusion()
    optimizer = AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    x0 = xp.asarray(rng.uniform(-1, 1, (batch_size, 1, 28, 28)).astype(np.float32))
    y = rng.integers(0, 10, batch_size)

    def step():
        t = rng.integers(0, 1000, batch_size)
        loss = diffusion.training_losses(model, Tensor(x0), t, y=y)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    if device == "gpu":
        xp.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss.item())  # waits for the device
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--presets", default=None, help="comma list (default: tiny,small on CPU; all on GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on GPU")
    parser.add_argument("--steps", type=int, default=None)
    from minisdit.train import add_cpu_arguments

    add_cpu_arguments(parser)
    args = parser.parse_args()
    if args.device == "cpu":
        backend.configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
    gpu = args.device == "gpu"
    presets = (args.presets or ("tiny,small,paper,paper-cifar" if gpu else "tiny,small")).split(",")
    batch_size = args.batch_size or (256 if gpu else 32)
    steps = args.steps or (20 if gpu else 3)
    print(f"device {args.device}, batch {batch_size}, {steps} timed steps after 2 warm-up steps")
    print(f"{'preset':<12} {'images/s':>10}")
    for preset in presets:
        print(f"{preset:<12} {measure(preset, args.device, batch_size, steps, warmup=2):>10.1f}", flush=True)


if __name__ == "__main__":
    main()
