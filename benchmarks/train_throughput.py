"""Training throughput (images/s) of each SDiT preset on this machine.

    python benchmarks/train_throughput.py [--device cpu|gpu] [--presets tiny,small] [--batch-size 32]
        [--workers 1,2] [--blas-threads 1] [--no-cpu-kernels]
    python benchmarks/train_throughput.py --count-launches [--presets tiny,small,paper,paper-cifar] [--batch-size 8]

One training step = forward of the model, the hybrid DDPM loss, backward, AdamW update, exactly as
``python -m minisdit.train`` takes it (``Trainer.train_step``).  The first steps (warm-up: kernel
compilation, allocator growth, starting the worker processes) are not timed.  On a CPU each preset is
measured with each number of ``--workers`` (processes sharing a batch, minisdit/training/parallel.py).

``--count-launches`` measures no time: it counts the device kernels that one step launches (forward,
backward, optimizer: clipping, AdamW and EMA), on the CPU through the code path of the GPU
(minisdit/kernel_checks/launches.py says what is counted).  The count does not depend on the batch
size, so the CPU counts at a small batch (default 8) what a GPU step at batch 256 launches.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from minisdit import backend
from minisdit.cli.common import add_cpu_arguments, configure_cpu_runtime
from minisdit.kernel_checks.launches import PHASES, count_training_step
from minisdit.training.config import RECIPES
from minisdit.training.trainer import Trainer


def measure(preset: str, device: str, batch_size: int, steps: int, warmup: int, workers: int = 1) -> float:
    """Images/s of ``Trainer.train_step`` (the step ``python -m minisdit.train`` takes) on random images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(4 * batch_size, 256), 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    # the device's recipe (its loss weighting included), with the preset, batch and workers measured
    config = dataclasses.replace(RECIPES[device], preset=preset, batch_size=batch_size, steps=steps + warmup,
                                 epochs=None, workers=workers, ema=0.0)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, images, labels, Path(folder), progress=False)
        try:
            for _ in range(warmup):
                trainer.train_step()
            if device == "gpu":
                backend.get_array_module("gpu").cuda.Device().synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                record = trainer.train_step()  # its loss is a host float: the device has finished
            assert np.isfinite(record["loss"])
            return steps * batch_size / (time.perf_counter() - start)
        finally:
            trainer.close()


def count_launches(presets, batch_size: int):
    """Print the kernel launches of one training step per preset, by phase and by kind."""
    print(f"kernel launches of one training step (GPU recipe, EMA on; batch {batch_size}: the count does not depend on it)")
    print(f"{'preset':<12}" + "".join(f"{phase:>11}" for phase in PHASES) + f"{'total':>9}   by kind (all phases)")
    for preset in presets:
        counter = count_training_step(preset, batch_size=batch_size)
        kinds = counter.by_kind()
        transfers = kinds.pop("transfers", 0)
        kinds = ", ".join(f"{kind} {n}" for kind, n in kinds.items()) + f"; and {transfers} host-to-device copies"
        print(f"{preset:<12}" + "".join(f"{counter.launches(phase):>11}" for phase in PHASES)
              + f"{counter.launches():>9}   {kinds}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--presets", default=None, help="comma list (default: tiny,small on CPU; all on GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", default="1,2", help="CPU only: comma list of worker-process counts to measure")
    parser.add_argument("--count-launches", action="store_true",
                        help="count the device kernels of one step per preset instead of timing (CPU; default presets: all, batch 8)")
    add_cpu_arguments(parser)
    args = parser.parse_args()
    if args.count_launches:
        count_launches((args.presets or "tiny,small,paper,paper-cifar").split(","), args.batch_size or 8)
        return
    if args.device == "cpu":
        configure_cpu_runtime(args.blas_threads, compiled_kernels=not args.no_cpu_kernels)
    gpu = args.device == "gpu"
    presets = (args.presets or ("tiny,small,paper,paper-cifar" if gpu else "tiny,small")).split(",")
    batch_size = args.batch_size or RECIPES[args.device].batch_size
    steps = args.steps or (20 if gpu else 3)
    workers = [1] if gpu else [int(w) for w in args.workers.split(",")]
    print(f"device {args.device}, batch {batch_size}, {steps} timed steps after 2 warm-up steps")
    print(f"{'preset':<12}" + "".join(f"{f'images/s, {w} worker' + ('s' if w > 1 else ''):>22}" for w in workers))
    for preset in presets:
        rates = [measure(preset, args.device, batch_size, steps, warmup=2, workers=w) for w in workers]
        print(f"{preset:<12}" + "".join(f"{rate:>22.1f}" for rate in rates), flush=True)


if __name__ == "__main__":
    main()
