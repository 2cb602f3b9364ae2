"""``python -m minisdit.train`` on a small fake data set, with a named point at which a rank fails,
for the multi-process tests of tests/training/test_distributed.py (run under mpiexec, or alone for
the local backend's forked workers).

    python tests/training/distributed_run.py ACTION STEP [train options...]

Where $MINISDIT_TEST_PIDS names a folder, every rank first writes its pid into the file RANK there
(a file, not a line on stdout: mpiexec merges the ranks' output, and a killed rank can cut a line).
ACTION, at rank r's part of step STEP (the step numbered STEP, counted from 1):
  none            nothing: train normally;
  raise-1         rank 1 raises RuntimeError("rank 1 fails on purpose");
  kill-1          rank 1 ends itself with SIGKILL;
  kill-0          rank 0 ends itself with SIGKILL;
  term-0          rank 0 sends itself SIGTERM (rank 1 gets no signal);
  kill-1-saving   at the "mid-write" point of rank 0's checkpoint at step STEP, rank 0 sends SIGKILL
                  to rank 1 (whose pid rank 1 wrote into $MINISDIT_TEST_PIDS/1) and goes on writing;
  save-grad       rank 0 writes the flat gradient buffer of step STEP, summed over the ranks, to
                  $MINISDIT_TEST_PIDS/grad.npy;
  hold            rank 0, with its local workers computing step STEP, prints "workers PID..." and
                  waits for stdin to close (the test then kills it).
"""
import os
import signal
import sys

import numpy as np

from minisdit import data
from minisdit.cli import train
from minisdit.training import trainer as trainer_module


def fake_dataset(*args, **kwargs):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (24, 1, 28, 28), dtype=np.uint8)
    return images, np.arange(24, dtype=np.int64) % 10


def rank_of_this_process() -> int:
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def main():
    action, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank = rank_of_this_process()
    pids = os.environ.get("MINISDIT_TEST_PIDS")
    if pids:
        with open(os.path.join(pids, str(rank)), "w") as handle:
            handle.write(str(os.getpid()))
    data.load_dataset = fake_dataset
    original_part = trainer_module.Trainer._rank_part

    def rank_part(self, at, communicator):
        if at + 1 == step:
            if action == "raise-1" and communicator.rank == 1:
                raise RuntimeError("rank 1 fails on purpose")
            if action == f"kill-{communicator.rank}":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "term-0" and communicator.rank == 0:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the middle of the step
            if action == "hold" and communicator.rank == 0:
                workers = " ".join(str(p.pid) for p in self._parallel.processes)
                print(f"workers {workers}", flush=True)
                sys.stdin.read()
        values = original_part(self, at, communicator)
        if action == "save-grad" and at + 1 == step and communicator.rank == 0:
            np.save(os.path.join(pids, "grad.npy"), self.optimizer.flat.grad)
        return values

    trainer_module.Trainer._rank_part = rank_part
    if action == "kill-1-saving":
        original_save = trainer_module.save_checkpoint

        def save_checkpoint(path, **kwargs):
            def at_point(name):
                if name == "mid-write" and kwargs["step"] == step:
                    with open(os.path.join(pids, "1")) as handle:
                        os.kill(int(handle.read()), signal.SIGKILL)
            return original_save(path, at_point=at_point, **kwargs)

        trainer_module.save_checkpoint = save_checkpoint
    sys.exit(train.main(argv))


if __name__ == "__main__":
    main()
