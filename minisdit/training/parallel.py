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
- the parameters live in one shared memory block that every forked worker maps, so the optimizer
  step of the trainer is seen by all workers without copying; the workers write their gradients
  into a second shared block and the trainer adds them to its own.

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

    def views(self, shapes):
        """One view per shape, laid end to end."""
        out, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(self.array[offset:offset + size].reshape(shape))
            offset += size
        return out


class WorkerError(RuntimeError):
    pass


class DataParallel:
    """Workers 1..W-1 as forked processes; ``slice_gradients`` is worker 0 (the caller).

    ``compute(arrays) -> (values, gradients)``: the loss terms (a 1-d float64 array) and one gradient
    per parameter (None where a parameter got none) for one slice of the batch.  It runs in every
    worker with that worker's copy of the model, whose parameters are views of the shared block.
    """

    def __init__(self, parameters, compute, workers: int):
        if workers < 2:
            raise ValueError(f"data parallelism needs at least 2 workers, got {workers}")
        self.parameters, self.compute, self.workers = list(parameters), compute, workers
        if any(p.data.dtype != np.float32 for p in self.parameters):
            raise ValueError("CPU data parallelism shares float32 parameters; the model holds another dtype")
        shapes = [p.data.shape for p in self.parameters]
        total = sum(int(np.prod(s)) for s in shapes)
        self.weights_block = SharedBlock(total)
        self.shared_weights = self.weights_block.views(shapes)
        self.attach()
        # one gradient block per worker, so their sums are added in a fixed order
        self.gradient_blocks = [SharedBlock(total) for _ in range(workers - 1)]
        self.shared_gradients = [block.views(shapes) for block in self.gradient_blocks]
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

    def attach(self):
        """Make every parameter a view of the shared block (again, if something replaced its array)."""
        for parameter, view in zip(self.parameters, self.shared_weights):
            if parameter.data is not view:
                view[...] = parameter.data
                parameter.data = view

    def _serve(self, connection, index):
        # Ctrl-C and a SIGTERM to the process group reach every worker: the trainer's process decides
        # (it finishes the step, saves and closes the workers); a worker just finishes its slice
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        gradients_out = self.shared_gradients[index - 1]
        while True:
            try:
                arrays = connection.recv()
            except EOFError:
                return
            if arrays is None:
                return
            try:
                values, gradients = self.compute(arrays)
                for out, gradient in zip(gradients_out, gradients):
                    if gradient is None:
                        out[...] = 0.0
                    else:
                        out[...] = gradient
                connection.send(("ok", values))
            except Exception as error:  # reported to the trainer, which raises it with its own message
                connection.send(("error", f"{type(error).__name__}: {error}"))

    def run(self, slices):
        """Compute every slice (slices[0] here, the rest in the workers); return the summed values
        and leave the summed gradients in the parameters' ``.grad``."""
        if len(slices) != self.workers:
            raise ValueError(f"expected {self.workers} slices, got {len(slices)}")
        self.attach()
        failures, sent = [], []
        for connection, process, arrays in zip(self.connections, self.processes, slices[1:]):
            try:
                connection.send(arrays)
                sent.append(True)
            except (BrokenPipeError, OSError):
                sent.append(False)
                failures.append(f"worker process {process.pid} is gone (exit code {process.exitcode})")
        try:
            values, gradients = self.compute(slices[0])
        except BaseException:  # e.g. Ctrl-C here: collect the workers' answers so none is read as the next one
            for connection, was_sent in zip(self.connections, sent):
                if was_sent:
                    try:
                        connection.recv()
                    except (EOFError, OSError):
                        pass
            raise
        total = np.array(values, dtype=np.float64)
        for connection, process, shared, was_sent in zip(self.connections, self.processes, self.shared_gradients, sent):
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
            for i, view in enumerate(shared):
                gradients[i] = view.copy() if gradients[i] is None else gradients[i] + view
        if failures:
            raise WorkerError(f"a data-parallel worker failed: {failures[0]}")
        for parameter, gradient in zip(self.parameters, gradients):
            parameter.grad = gradient
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
