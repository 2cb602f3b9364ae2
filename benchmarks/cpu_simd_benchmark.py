"""The CPU kernel builds side by side: "scalar" (-O2, thread by thread) against "vector" (the
default: the *_cpu.h loops with the threads innermost, -O3 -march=native, libmvec's exp/log).

    python benchmarks/cpu_simd_benchmark.py [--repeats 9] [--steps 5] [--batch-size 16]

Part 1, per kernel: the LIF and WKV kernels at the shapes one `tiny` training step at batch 16
launches them with (spike rate: N = 102400 neurons, T = 4; WKV: B = 16, L = 100, C = 64, float32);
part 2: the whole `tiny` step (``Trainer.train_step``: forward, hybrid DDPM loss, backward, AdamW)
in one process (one worker, one BLAS thread), ms/step.  The two builds alternate call by call
(part 1) and step by step (part 2, two trainers from the same seed), so that both see the same
load on a shared machine; each number is the median of the repeats.  Run it with `nice -n 15`
next to other work.  docs/decisions.md records a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from minisdit.cli.common import configure_cpu_runtime
from minisdit.kernels import runtime
from minisdit.training.config import RECIPES
from minisdit.training.trainer import Trainer

BUILDS = ("scalar", "vector")


def kernel_calls(rng):
    """{name: a function launching that kernel once} at the `tiny` step's shapes (batch 16)."""
    neurons, steps = 102400, 4
    x, grad = (rng.standard_normal(neurons).astype(np.float32) for _ in range(2))
    sequence = rng.standard_normal((steps, neurons // steps)).astype(np.float32)
    rate, grad_x, spikes, h = (np.zeros(shape, np.float32) for shape in [neurons, neurons] + [sequence.shape] * 2)
    batch, length, channels = 16, 100, 64
    w = rng.random(channels).astype(np.float32)
    u = rng.standard_normal(channels).astype(np.float32)
    k, v, r, grad_y = (rng.standard_normal((batch, length, channels)).astype(np.float32) for _ in range(4))
    y, log_d, gated, wkv_gated, log_d_gated, grad_k, grad_v = (np.zeros((batch, length, channels), np.float32)
                                                               for _ in range(7))
    grad_w, grad_u = (np.zeros((batch, channels), np.float32) for _ in range(2))
    lif = runtime.Kernels("lif.cu", {"SURROGATE": 0, "HARD_RESET": 1, "DETACH_RESET": 0, "DECAY_INPUT": 1,
                                     "scalar_t": "float"})
    wkv = runtime.Kernels("wkv.cu", {"scalar_t": "float"})
    return {
        "spike_rate_forward": lambda: lif.run("spike_rate_forward", neurons, x, rate, neurons, steps, 2.0, 1.0, 0.0),
        "spike_rate_backward": lambda: lif.run("spike_rate_backward", neurons, x, grad, grad_x, neurons, steps,
                                               2.0, 1.0, 0.0, 4.0),
        "lif_forward (T=4)": lambda: lif.run("lif_forward", neurons // steps, sequence, spikes, h, neurons // steps, steps,
                                             2.0, 1.0, 0.0),
        "wkv_forward": lambda: wkv.run("wkv_forward", batch * channels, w, u, k, v, y, log_d, batch, length, channels),
        "wkv_backward": lambda: wkv.run("wkv_backward", batch * channels, w, u, k, v, y, log_d, grad_y, grad_k,
                                        grad_v, grad_w, grad_u, batch, length, channels),
        "wkv_gated_forward": lambda: wkv.run("wkv_gated_forward", batch * channels, w, u, k, v, r, gated, wkv_gated,
                                             log_d_gated, batch, length, channels),
    }


def per_kernel(repeats: int, calls_per_timing: int = 10):
    calls = kernel_calls(np.random.default_rng(0))
    calls["wkv_forward"]()  # y and ln D for wkv_backward, from the forward of the same inputs
    times = {(build, name): [] for build in BUILDS for name in calls}
    for build in BUILDS:  # compile both builds before timing anything
        with runtime.cpu_build(build):
            for call in calls.values():
                call()
    for _ in range(repeats):
        for name, call in calls.items():
            for build in BUILDS:
                with runtime.cpu_build(build):
                    start = time.perf_counter()
                    for _ in range(calls_per_timing):
                        call()
                    times[(build, name)].append((time.perf_counter() - start) / calls_per_timing)
    print(f"per kernel at the tiny step's shapes (median of {repeats} x {calls_per_timing} calls, ms per call)")
    print(f"{'kernel':<22}{'scalar':>10}{'vector':>10}{'speed-up':>10}")
    for name in calls:
        old, new = (np.median(times[(build, name)]) * 1e3 for build in BUILDS)
        print(f"{name:<22}{old:>10.3f}{new:>10.3f}{old / new:>9.1f}x")


def whole_step(repeats: int, steps: int, batch_size: int):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (256, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    config = dataclasses.replace(RECIPES["cpu"], preset="tiny", batch_size=batch_size, steps=10**6, epochs=None,
                                 workers=1, ema=0.0)
    times = {build: [] for build in BUILDS}
    losses = {build: [] for build in BUILDS}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {build: Trainer(config, images, labels, Path(folder) / build, progress=False) for build in BUILDS}
        try:
            for build in BUILDS:  # warm-up: compilation, allocator growth
                with runtime.cpu_build(build):
                    for _ in range(2):
                        trainers[build].train_step()
            for _ in range(repeats):
                for build in BUILDS:
                    with runtime.cpu_build(build):
                        start = time.perf_counter()
                        for _ in range(steps):
                            losses[build].append(trainers[build].train_step()["loss"])
                        times[build].append((time.perf_counter() - start) / steps)
        finally:
            for trainer in trainers.values():
                trainer.close()
    old, new = (np.median(times[build]) * 1e3 for build in BUILDS)
    print(f"whole tiny step, batch {batch_size}, one worker (median of {repeats} x {steps} steps, ms/step)")
    print(f"{'scalar':>10}{'vector':>10}{'speed-up':>10}")
    print(f"{old:>10.1f}{new:>10.1f}{old / new:>9.2f}x")
    difference = np.max(np.abs(np.array(losses["scalar"]) - np.array(losses["vector"])))
    print(f"largest loss difference between the builds over {len(losses['scalar'])} steps from one seed: {difference:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat of the whole step")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    configure_cpu_runtime(1, compiled_kernels=True)
    per_kernel(args.repeats)
    whole_step(args.repeats, args.steps, args.batch_size)


if __name__ == "__main__":
    main()
