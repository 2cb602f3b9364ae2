"""The ``local`` backend: data parallelism on one multi-core machine with forked worker processes.

Why processes: SDiT's matrices are small (D = 64 for ``tiny``), so a second BLAS thread or a
kernel launch split over threads gains little, while two independent processes each keep one core
busy (two single-threaded runs side by side train at about 1.6x the images/s of one).

It is one communicator of minisdit/training/distributed.py (rank, world size, ``all_reduce``,
``broadcast``, ``barrier``, ``close``), so the trainer exchanges gradients through the same code
as with MPI or NCCL.  What differs is who updates the weights: the parameters' flat buffer
(minisdit/autograd/flat.py) is moved into one shared memory block that every forked worker maps,
so only rank 0 (the trainer's own process) runs the optimizer and the workers see its step
without a copy; hence only rank 0 needs the sums, and a worker's ``all_reduce`` just hands its
buffer in (its own copy keeps its contribution).

One step with W processes:
- ``start_step(step)`` sends the step number to workers 1..W-1; each draws the step's batch, t, ε and
  label dropout exactly as one process does (the (seed, step) draws) and takes its slice, as
  rank 0 does (minisdit/training/trainer.py ``Trainer._rank_part``);
- each worker copies its flat gradient buffer into a shared block of its own (one copy) and
  sends its small buffers (the loss terms) over its pipe; rank 0's ``all_reduce`` adds them to
  its own, worker by worker in a fixed order.

Processes that outlive their trainer: a worker closes, right after the fork, every pipe end it
inherited from the trainer, so the trainer's death is an end-of-file on its pipe; on Linux it
also asks the kernel for SIGKILL when the trainer dies (``die_with_parent``), so even a worker
deep inside a slice ends with it.
"""
from __future__ import annotations

import atexit
import mmap
import multiprocessing
import signal

import numpy as np

from .distributed import die_with_parent


def split_sizes(batch: int, workers: int) -> list[int]:
    """Slice sizes, as even as possible, larger ones first: 65 over 2 -> [33, 32]."""
    base, extra = divmod(batch, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


class SharedBlock:
    """A float array in anonymous shared memory: forked children see the same bytes."""

    def __init__(self, size: int, dtype=np.float32):
        itemsize = np.dtype(dtype).itemsize
        self._map = mmap.mmap(-1, max(1, size * itemsize))
        self.array = np.frombuffer(self._map, dtype=dtype, count=size)


class WorkerError(RuntimeError):
    pass


class _WorkerSide:
    """What a worker's ``compute`` sees as its communicator: rank ``index``; ``all_reduce`` hands the
    buffer in (the flat gradient buffer into the worker's shared block, anything else into the
    answer sent over the pipe) and leaves it as it is."""

    name = "local"

    def __init__(self, flat, index: int, world_size: int, block):
        self.flat, self.rank, self.world_size, self.block = flat, index, world_size, block
        self.parts = []

    def start_step(self, step: int):
        pass

    def all_reduce(self, buffer):
        if buffer is self.flat.grad:
            self.block[...] = buffer
        else:
            self.parts.append(np.array(buffer, copy=True))
        return buffer

    def broadcast(self, buffer, root: int = 0):
        return buffer

    def barrier(self):
        pass


class LocalWorkers:
    """Rank 0 of the ``local`` backend: workers 1..W-1 as forked processes.

    ``flat``: the model's ``FlatParameters`` (``optimizer.flat``).  ``compute(step, communicator)``:
    what every rank runs for step ``step`` (the trainer's ``_rank_part``): its slice's loss terms
    and gradients, exchanged through ``communicator.all_reduce``.  It runs in every worker with
    that worker's copy of the model, whose parameters are views of the shared block.
    """

    name = "local"
    rank = 0

    def __init__(self, flat, compute, workers: int):
        if workers < 2:
            raise ValueError(f"data parallelism needs at least 2 workers, got {workers}")
        self.flat, self.compute, self.world_size = flat, compute, workers
        if flat.dtype != np.float32:
            raise ValueError("CPU data parallelism shares float32 parameters; the model holds another dtype")
        flat.attach()
        self.weights_block = SharedBlock(flat.numel)
        flat.relocate(self.weights_block.array)
        # one gradient block per worker, so their sums are added in a fixed order
        self.gradient_blocks = [SharedBlock(flat.numel) for _ in range(workers - 1)]
        context = multiprocessing.get_context("fork")
        self.connections, self.processes = [], []
        for index in range(1, workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=self._serve, args=(theirs, index, self.connections + [mine]),
                                      daemon=True, name=f"minisdit-worker-{index}")
            process.start()
            theirs.close()
            self.connections.append(mine)
            self.processes.append(process)
        self._answers, self._sent, self._small = None, [], 0
        # the workers ignore SIGTERM (see _serve), so multiprocessing's own exit handler, which
        # terminates daemons and then joins them, would wait forever: close them first
        atexit.register(self.close)

    def _serve(self, connection, index, trainer_ends):
        # the trainer's ends of every pipe (this worker's and the earlier workers'): closed here, so
        # that when the trainer dies nobody else holds them and each worker reads end-of-file
        for end in trainer_ends:
            end.close()
        die_with_parent()
        # Ctrl-C and a SIGTERM to the process group reach every worker: the trainer's process decides
        # (it finishes the step, saves and closes the workers); a worker just finishes its slice
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        side = _WorkerSide(self.flat, index, self.world_size, self.gradient_blocks[index - 1].array)
        while True:
            try:
                step = connection.recv()
            except EOFError:
                return
            if step is None:
                return
            side.parts = []
            try:
                self.compute(step, side)
                connection.send(("ok", side.parts))
            except Exception as error:  # reported to the trainer, which raises it with its own message
                connection.send(("error", f"{type(error).__name__}: {error}"))

    def start_step(self, step: int):
        """Set every worker computing its slice of step ``step`` (the step numbered ``step + 1``)."""
        self._collect()  # answers of an interrupted step: never read as this step's
        self.flat.attach()  # a loaded state dict assigned new arrays: copy them into the shared block
        self._failures, self._sent, self._small = [], [], 0
        for connection, process in zip(self.connections, self.processes):
            try:
                connection.send(step)
                self._sent.append(True)
            except (BrokenPipeError, OSError):
                self._sent.append(False)
                self._failures.append(f"worker process {process.pid} is gone (exit code {process.exitcode})")
        self._answers = None

    def _collect(self):
        """Every sent worker's answer of this step (waits for them), once."""
        if not self._sent:
            return
        answers = []
        for connection, process, was_sent in zip(self.connections, self.processes, self._sent):
            if not was_sent:
                answers.append(None)
                continue
            try:
                status, payload = connection.recv()
            except (EOFError, OSError):
                process.join(timeout=1)
                self._failures.append(f"worker process {process.pid} is gone (exit code {process.exitcode})")
                answers.append(None)
                continue
            if status != "ok":
                self._failures.append(payload)
                payload = None
            answers.append(payload)
        self._sent, self._answers = [], answers

    def all_reduce(self, buffer):
        """Add the workers' buffers of this step to ``buffer`` (rank 0's), worker by worker."""
        self._collect()
        if self._failures:
            raise WorkerError(f"a data-parallel worker failed: {self._failures[0]}")
        if buffer is self.flat.grad:
            for block in self.gradient_blocks:
                buffer += block.array
        else:
            for parts in self._answers:
                buffer += parts[self._small]
            self._small += 1
        return buffer

    def broadcast(self, buffer, root: int = 0):
        if buffer is not self.flat.data:
            raise ValueError("the local backend shares only the parameters' flat buffer (broadcast it alone)")
        return buffer  # one shared block: every worker sees rank 0's values already

    def barrier(self):
        self._collect()

    def abort(self, code: int = 1):
        self.close()

    def close(self):
        try:
            self._collect()
        except (EOFError, OSError):
            pass
        for connection in self.connections:
            try:
                connection.send(None)
                connection.close()
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():  # stuck in a slice: it ignores SIGTERM, so end it for good
                process.kill()
                process.join()
        self.connections, self.processes = [], []
        atexit.unregister(self.close)
