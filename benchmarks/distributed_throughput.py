"""Training images/s with 1 and 2 processes on the CPU, side by side: one process, the local backend
(a forked worker, ``--workers 2``) and the mpi backend (``mpiexec -n 2``).

    python benchmarks/distributed_throughput.py [--steps 40] [--skip 5] [--rounds 3] [--dataset mnist]

Each configuration runs ``python -m minisdit.train`` (the CPU recipe: ``tiny``, batch 32) for
``--steps`` steps with a log line every step; the rate is taken from the log's ``elapsed_s`` between
step ``--skip`` and the last step, so the start (imports, compiling the CPU kernels, forking,
MPI's start-up) is left out.  The configurations run in turn, ``--rounds`` times (one of each, then
again), so that a machine shared with other jobs slows them alike; the table gives each one's
median and its ratio to one process.  Global images/s: the whole batch of every step, whatever
the number of processes sharing it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGURATIONS = {  # name: (launcher prefix, train options)
    "1 process": ([], ["--workers", "1"]),
    "local, 2 processes": ([], ["--workers", "2"]),
    "mpi, 2 ranks": (["-n", "2"], []),
}


def mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def rate(folder: Path, skip: int, batch_size: int) -> float:
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    first, last = records[skip - 1], records[-1]
    return (last["step"] - first["step"]) * batch_size / (last["elapsed_s"] - first["elapsed_s"])


def run_once(name: str, steps: int, dataset: str, folder: Path) -> None:
    launcher, options = CONFIGURATIONS[name]
    line = [sys.executable, "-m", "minisdit.train", "--dataset", dataset, "--device", "cpu", "--steps", str(steps),
            "--log-every", "1", "--sample-every", str(10 ** 9), "--ckpt-every", str(10 ** 9), "--sample-num", "10",
            "--sample-steps", "2", "--no-progress", "--out", str(folder), *options]
    if launcher:
        line = [mpiexec(), *launcher, *line]
    subprocess.run(line, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="steps left out at the start")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args()
    names = [name for name in CONFIGURATIONS if CONFIGURATIONS[name][0] == [] or mpiexec() is not None]
    if len(names) < len(CONFIGURATIONS):
        print("no mpiexec found (pip install -e \".[mpi]\"): the mpi row is left out")
    rates = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name in names:
                folder = Path(scratch) / f"{round_}-{name.replace(' ', '').replace(',', '-')}"
                run_once(name, args.steps, args.dataset, folder)
                rates[name].append(rate(folder, args.skip, 32))
                print(f"round {round_ + 1}: {name}: {rates[name][-1]:.1f} images/s", flush=True)
    base = statistics.median(rates[names[0]])
    print(f"\nCPU recipe (tiny, batch 32), {args.steps} steps, steps {args.skip}..{args.steps} timed, "
          f"median of {args.rounds} rounds; {os.cpu_count()} CPUs")
    print(f"{'configuration':<22}{'images/s':>10}{'ratio':>8}   rounds")
    for name in names:
        median = statistics.median(rates[name])
        print(f"{name:<22}{median:>10.1f}{median / base:>8.2f}   " + ", ".join(f"{r:.1f}" for r in rates[name]))


if __name__ == "__main__":
    main()
