"""The CPU training step before issue 14 and now, side by side in one run.

    python benchmarks/step_before_after.py [--preset small] [--batch-sizes 8,32] [--repeats 7] [--steps 3]
        [--before-commit 0045e37]

"Before" is the code of ``--before-commit`` (default 0045e37, the parent of e3dfeb4, the first
commit of issue 14: the GPU path), unpacked with ``git archive`` into a temporary folder; "after" is
this checkout.  Each runs in a process of its own (``PYTHONPATH`` its tree) that builds a
``Trainer`` as ``benchmarks/train_throughput.py`` does: the CPU recipe (``RECIPES["cpu"]``: the CPU's
compiled kernels, one BLAS thread) with the preset and batch measured, one worker process (the step
itself, without data parallelism), random images, the same seed in both.  After two warm-up steps
(kernel compilation) both processes wait on a pipe; the parent then asks them in turn for a round of
``--steps`` steps, before and after alternating as ABBA so that both see the same load (the machine
may be shared), ``--repeats`` rounds each, and reports the median milliseconds per step of each side
and their ratio (after / before: below 1 is faster), by the wall clock and by the process's CPU time
(``time.process_time``: with one BLAS thread it leaves out the time a loaded machine gives to others).
Run it with ``nice -n 15`` on a shared machine.

Measured 2026-12-02 on the project's two-core machine, shared with four training runs at normal
priority (load 7-9), ``nice -n 15``, ``small``, batch 8, 4 rounds of 2 steps each side, before
``cli.common.keep_freed_memory`` existed (docs/decisions.md has why and the fix):

    batch   clock   before ms/step   after ms/step   after / before
        8    wall           2752.4          4535.2            1.648
        8     CPU           1654.2          2440.3            1.475

The after step then page-faulted its activations in again every step (137,744 minor faults against
9,388); with the fix it takes 16 faults and no system time.  Batch 32, and the run after the fix,
are still to be measured on a machine that is not this loaded.

Measured again 2026-12-02 after the fix (and after the vectorised CPU kernels of issue 17), ``small``,
5 rounds of 3 steps each side; batch 8 while a CI run shared the machine, batch 32 on the quiet machine:

    batch   clock   before ms/step   after ms/step   after / before
        8    wall           1727.9          1216.6            0.704
        8     CPU           1665.3          1178.9            0.708
       32    wall           6644.7          7416.9            1.116
       32     CPU           6561.3          7385.7            1.126

Batch 32 was slower, and its "after" rounds scattered from 4,937 to 8,440 ms (before: 6,293-6,985).
The cause: the freed top of the heap passed 2 GB, the largest trim threshold an ``int`` could set, so
glibc still gave 2.4 GB back every other step (strace: brk shrinking by 2,375 MB), and arrays above
the 32 MB mmap threshold were unmapped on free; 37,000-134,000 page faults and up to 2.3 s of system
time per step.  ``keep_freed_memory`` now disables trimming (-1) and per-array mappings: 4-17 faults
and no system time per step.  Measured again 2026-12-02 on the quiet two-core machine, ``small``, 5
rounds of 3 steps each side:

    batch   clock   before ms/step   after ms/step   after / before
        8    wall           1131.8           834.7            0.738
        8     CPU           1124.8           830.9            0.739
       32    wall           5090.5          3466.8            0.681
       32     CPU           4983.9          3413.9            0.685
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "0045e37"  # parent of e3dfeb4, issue 14's first commit (git log --graph)


# ---------------------------------------------------------------------------------------------
# the child: one tree's Trainer, steps on request
# ---------------------------------------------------------------------------------------------
def serve(preset: str, batch_size: int, warmup: int) -> None:
    """Build the step of the tree on PYTHONPATH, warm it up, then answer "run N" with the seconds of N steps."""
    import dataclasses

    import numpy as np

    import minisdit
    from minisdit.cli.common import configure_cpu_runtime
    from minisdit.training.config import RECIPES
    from minisdit.training.trainer import Trainer

    configure_cpu_runtime(1, compiled_kernels=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(4 * batch_size, 256), 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    config = dataclasses.replace(RECIPES["cpu"], preset=preset, batch_size=batch_size, steps=10 ** 6, epochs=None,
                                 workers=1)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, images, labels, Path(folder), progress=False)
        try:
            for _ in range(warmup):
                trainer.train_step()
            print(f"ready {Path(minisdit.__file__).resolve().parent}", flush=True)
            for line in sys.stdin:
                command = line.split()
                if command[:1] != ["run"]:
                    break
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(int(command[1])):
                    record = trainer.train_step()
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
                if not np.isfinite(float(record["loss"])):
                    raise SystemExit("the loss became non-finite; the measurement is void")
                print(f"{seconds!r} {cpu_seconds!r}", flush=True)
        finally:
            trainer.close()


# ---------------------------------------------------------------------------------------------
# the parent: both trees side by side
# ---------------------------------------------------------------------------------------------
class Side:
    """One tree's serving process."""

    def __init__(self, name: str, tree: Path, preset: str, batch_size: int, warmup: int):
        self.name, self.times, self.cpu_times = name, [], []
        env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", "--preset", preset,
             "--batch-sizes", str(batch_size), "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        ready = self.process.stdout.readline().split()
        if ready[:1] != ["ready"]:
            raise SystemExit(f"the {name} step did not start (exit {self.process.wait()}); run it alone to see why")
        if Path(ready[1]) != (tree / "minisdit").resolve():
            raise SystemExit(f"the {name} step imported minisdit from {ready[1]}, not from {tree}; "
                             "uninstall a non-editable minisdit from this Python or run from a clean environment")

    def run(self, steps: int) -> None:
        self.process.stdin.write(f"run {steps}\n")
        self.process.stdin.flush()
        seconds, cpu_seconds = map(float, self.process.stdout.readline().split())
        self.times.append(seconds / steps)
        self.cpu_times.append(cpu_seconds / steps)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def unpack(commit: str, folder: Path) -> Path:
    """The tree of ``commit`` of this repository, unpacked into ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {commit} failed: {archive.stderr.decode().strip()}; "
                         "run from a git checkout that has the commit (git fetch) or pass --before-commit")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def compare(before: Path, preset: str, batch_size: int, repeats: int, steps: int, warmup: int):
    sides = {}
    try:
        sides["before"] = Side("before", before, preset, batch_size, warmup)
        sides["after"] = Side("after", ROOT, preset, batch_size, warmup)
        for round_ in range(repeats):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")  # ABBA: drift cancels
            for name in order:
                sides[name].run(steps)
    finally:
        for side in sides.values():
            side.close()
    return ({name: [1000 * t for t in side.times] for name, side in sides.items()},
            {name: [1000 * t for t in side.cpu_times] for name, side in sides.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-sizes", default="8,32", help="comma list")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per side (alternating)")
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--before-commit", default=BEFORE_COMMIT)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.serve:
        serve(args.preset, batch_sizes[0], args.warmup)
        return
    print(f"{args.preset} CPU training step, before = {args.before_commit}, after = this checkout; "
          f"{args.repeats} alternating rounds (ABBA) of {args.steps} steps each, median ms/step")
    print(f"{'batch':>5} {'':>6} {'before ms/step':>15} {'after ms/step':>14} {'after / before':>15}   "
          "rounds before | after")
    with tempfile.TemporaryDirectory() as folder:
        before = unpack(args.before_commit, Path(folder))
        for batch_size in batch_sizes:
            for clock, times in zip(("wall", "CPU"), compare(before, args.preset, batch_size, args.repeats,
                                                             args.steps, args.warmup)):
                b, a = statistics.median(times["before"]), statistics.median(times["after"])
                rounds = " ".join(f"{t:.0f}" for t in times["before"]) + " | " + \
                    " ".join(f"{t:.0f}" for t in times["after"])
                print(f"{batch_size:>5} {clock:>6} {b:>15.1f} {a:>14.1f} {a / b:>15.3f}   {rounds}", flush=True)


if __name__ == "__main__":
    main()
