"""Data parallelism on a multi-core CPU: each batch is split over forked worker processes.

Why processes: SDiT's matrices are small (D = 64 for ``tiny``), so a second BLAS thread or a
kernel launch split over threads gains little, while two independent processes each keep one core
busy (two single-threaded runs side by side train at about 1.6x the images/s of one).

How, in one step with W processes (the trainer's own process is worker 0):
- the trainer draws the batch, t, ε and the label dropout for the *whole* batch exactly as it
  does alone, then gives worker i the slice i of every array;
- worker i computes the mean loss of its slice, scaled by n_i / N, and its gradients.  Because the
  batch loss is the mean over samples, (1/N) Σ_n ℓ_n = Σ_i (n_i/N) mean_{n in slice i} ℓ_n, so the
  sum of the workers' gradients is the gradient of the whole batch;
- the parameters' flat buffer (minisdit/autograd/flat.py) is moved into one shared memory block
  that every forked worker maps, so the optimizer step of the trainer is seen by all workers
  without copying; each worker copies its flat gradient buffer into a shared block of its own
  (one copy), and the trainer adds those blocks to its flat gradient buffer (one sum per worker).

The result depends on W only through the order of floating-point sums (the slices are summed
in a fixed order), so a run is reproducible for a given W, and resuming it is exact.
"""
from __future__ import annotations

import atexit
import mmap
import multiprocessing
import signal

import numpy as np


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


class DataParallel:
    """Workers 1..W-1 as forked processes; ``run`` computes slice 0 itself (worker 0, the caller).

    ``flat``: the model's ``FlatParameters`` (``optimizer.flat``).  ``compute(arrays) -> (values,
    gradients)``: the loss terms (a 1-d float64 array) of one slice of the batch, with its gradients
    left in the parameters' ``.grad`` (autograd writes them into ``flat.grad``; the returned list is
    not used).  It runs in every worker with that worker's copy of the model, whose parameters are
    views of the shared block.
    """

    def __init__(self, flat, compute, workers: int):
        if workers < 2:
            raise ValueError(f"data parallelism needs at least 2 workers, got {workers}")
        self.flat, self.compute, self.workers = flat, compute, workers
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
            process = context.Process(target=self._serve, args=(theirs, index), daemon=True,
                                      name=f"minisdit-worker-{index}")
            process.start()
            theirs.close()
            self.connections.append(mine)
            self.processes.append(process)
        # the workers ignore SIGTERM (see _serve), so multiprocessing's own exit handler, which
        # terminates daemons and then joins them, would wait forever: close them first
        atexit.register(self.close)

    def _serve(self, connection, index):
        # Ctrl-C and a SIGTERM to the process group reach every worker: the trainer's process decides
        # (it finishes the step, saves and closes the workers); a worker just finishes its slice
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        gradients_out = self.gradient_blocks[index - 1].array
        while True:
            try:
                arrays = connection.recv()
            except EOFError:
                return
            if arrays is None:
                return
            try:
                values, _ = self.compute(arrays)
                self.flat.gather_grads()  # zeros for a parameter this slice gave no gradient
                gradients_out[...] = self.flat.grad
                connection.send(("ok", values))
            except Exception as error:  # reported to the trainer, which raises it with its own message
                connection.send(("error", f"{type(error).__name__}: {error}"))

    def run(self, slices):
        """Compute every slice (slices[0] here, the rest in the workers); return the summed values
        and leave the summed gradients in ``flat.grad`` (every parameter's ``.grad`` its view)."""
        if len(slices) != self.workers:
            raise ValueError(f"expected {self.workers} slices, got {len(slices)}")
        self.flat.attach()  # a loaded state dict assigned new arrays: copy them into the shared block
        failures, sent = [], []
        for connection, process, arrays in zip(self.connections, self.processes, slices[1:]):
            try:
                connection.send(arrays)
                sent.append(True)
            except (BrokenPipeError, OSError):
                sent.append(False)
                failures.append(f"worker process {process.pid} is gone (exit code {process.exitcode})")
        try:
            values, _ = self.compute(slices[0])
        except BaseException:  # e.g. Ctrl-C here: collect the workers' answers so none is read as the next one
            for connection, was_sent in zip(self.connections, sent):
                if was_sent:
                    try:
                        connection.recv()
                    except (EOFError, OSError):
                        pass
            raise
        self.flat.gather_grads()
        total = np.array(values, dtype=np.float64)
        for connection, process, block, was_sent in zip(self.connections, self.processes, self.gradient_blocks, sent):
            if not was_sent:
                continue
            try:
                status, payload = connection.recv()
            except (EOFError, OSError):
                process.join(timeout=1)
                failures.append(f"worker process {process.pid} is gone (exit code {process.exitcode})")
                continue
            if status != "ok":
                failures.append(payload)
                continue
            total += payload
            self.flat.grad += block.array  # worker by worker, in a fixed order
        if failures:
            raise WorkerError(f"a data-parallel worker failed: {failures[0]}")
        for parameter, view in zip(self.flat.params, self.flat.grad_views):
            parameter.grad = view
        return total

    def close(self):
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
