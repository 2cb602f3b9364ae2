"""Training throughput and peak memory per preset, with nothing compiled inside the timed steps.

    python benchmarks/gpu_memory.py [--device gpu|cpu] [--presets small,paper] [--batch-size 256]
        [--steps 10] [--max-warmup 5]

One step is ``Trainer.train_step`` (what ``python -m minisdit.train`` takes) on random images.  A
first step compiles the kernels (CuPy compiles each RawModule and each elementwise / reduction kernel
on first use); warm-up steps continue until one whole step compiles nothing new, counted by CuPy's
compile hook (``count_compiles``), at most ``--max-warmup`` steps.  Then ``--steps`` timed steps, and
the compiles during them are reported too (0 means the timing holds no compile).

Memory on the GPU: the high-water mark of CuPy's memory pool (``total_bytes``: the pool keeps what
it took from the device, so after the steps it holds the most they ever needed at once) and the
device's used memory (``cudaMemGetInfo``, the CUDA context included).  On the CPU (the dry run of
scripts/gpu_check.sh --cpu): the process's peak resident memory.  Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import backend  # noqa: E402
from minisdit.kernels import runtime  # noqa: E402
from minisdit.training.config import RECIPES  # noqa: E402
from minisdit.training.trainer import Trainer  # noqa: E402


# CuPy's compile entry points over its versions (RawModule and the generated elementwise / reduction
# kernels go through one of them); those present are wrapped.  Calls between them count twice, which
# does not matter: only "none" versus "some" decides the warm-up.
CUPY_COMPILE_FUNCTIONS = ("compile_with_cache", "_compile_module_with_cache", "_compile_with_cache_cuda")


@contextlib.contextmanager
def count_compiles(device: str):
    """Yield a list whose length is the number of kernel compiles inside the block (None entries
    when they cannot be counted: a CuPy without any of CUPY_COMPILE_FUNCTIONS).

    On the GPU, CuPy's compile functions are wrapped for the block (a kernel CuPy finds in its disk
    cache counts as well: loading it still costs time).  On the CPU the kernels compile once per
    variant into ``runtime``'s caches, counted by their misses."""
    compiled = []
    if device == "gpu":
        compiler = getattr(backend.get_array_module("gpu").cuda, "compiler", None)
        originals = {name: getattr(compiler, name) for name in CUPY_COMPILE_FUNCTIONS if hasattr(compiler, name)}
        if not originals:
            compiled.append(None)

        def counting(original):
            def wrapped(*args, **kwargs):
                compiled.append(1)
                return original(*args, **kwargs)
            return wrapped

        for name, original in originals.items():
            setattr(compiler, name, counting(original))
        try:
            yield compiled
        finally:
            for name, original in originals.items():
                setattr(compiler, name, original)
    else:
        misses = runtime_cache_misses()
        try:
            yield compiled
        finally:
            compiled.extend([1] * (runtime_cache_misses() - misses))


def runtime_cache_misses() -> int:
    """How many CPU kernel variants ``minisdit.kernels.runtime`` has compiled in this process."""
    cached = [getattr(runtime, name) for name in dir(runtime) if hasattr(getattr(runtime, name), "cache_info")]
    return sum(function.cache_info().misses for function in cached)


def synchronize(device: str) -> None:
    if device == "gpu":
        backend.get_array_module("gpu").cuda.Device().synchronize()


def memory_report(device: str) -> str:
    if device == "gpu":
        cupy = backend.get_array_module("gpu")
        free, total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool().total_bytes()
        return f"pool peak {pool / 2**30:6.2f} GiB, device used {(total - free) / 2**30:6.2f} of {total / 2**30:.0f} GiB"
    # ru_maxrss is in KiB on Linux
    return f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:6.2f} GiB"


def measure(preset: str, device: str, batch_size: int, steps: int, max_warmup: int) -> dict:
    """Images/s of ``steps`` steps after warm-up, and the warm-up and compiles it took."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(4 * batch_size, 256), 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    config = dataclasses.replace(RECIPES[device], preset=preset, batch_size=batch_size, steps=steps + max_warmup,
                                 epochs=None, workers=1, ema=0.0)
    if device == "gpu":
        backend.get_array_module("gpu").get_default_memory_pool().free_all_blocks()  # this preset's peak only
    with tempfile.TemporaryDirectory() as folder, runtime.cpu_kernels(device == "cpu"):
        trainer = Trainer(config, images, labels, Path(folder), progress=False)
        warmup = 0
        try:
            while warmup < max_warmup:
                with count_compiles(device) as compiled:
                    trainer.train_step()
                warmup += 1
                # the first step always compiles or loads something; uncountable: all max_warmup steps
                if warmup > 1 and not compiled:
                    break
            synchronize(device)
            with count_compiles(device) as compiled:
                start = time.perf_counter()
                for _ in range(steps):
                    record = trainer.train_step()  # its loss is a host float: the device has finished
                seconds = time.perf_counter() - start
            if not np.isfinite(record["loss"]):
                raise RuntimeError(f"{preset}: the loss became {record['loss']}")
            return dict(preset=preset, images_per_s=steps * batch_size / seconds, step_ms=1e3 * seconds / steps,
                        warmup=warmup, compiles="n/a" if None in compiled else str(len(compiled)),
                        memory=memory_report(device))
        finally:
            trainer.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="gpu")
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    parser.add_argument("--max-warmup", type=int, default=5, help="at most this many warm-up steps")
    args = parser.parse_args(argv)
    if args.device == "gpu" and not backend.gpu_available():
        print(f"error: {backend.gpu_unavailable_reason()}", file=sys.stderr)
        return 1
    print(f"device {args.device}, batch {args.batch_size}, {args.steps} timed steps after warm-up")
    print(f"{'preset':8} {'images/s':>10} {'ms/step':>9} {'warm-up':>8} {'compiles timed':>15}  memory")
    for preset in args.presets.split(","):
        r = measure(preset, args.device, args.batch_size, args.steps, args.max_warmup)
        print(f"{r['preset']:8} {r['images_per_s']:10.1f} {r['step_ms']:9.1f} {r['warmup']:8d} {r['compiles']:>15}  "
              f"{r['memory']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
