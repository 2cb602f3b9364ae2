"""``generate`` over several CPU processes: the batches of one call shared by forked workers.

Batch b of ``generate`` draws its noise from ``default_rng([seed, b])`` whoever computes it, so
handing batch b to worker b mod K and putting the results back in batch order gives exactly the
images of one process (same seed, same batch size), for any K.  The workers are forked from the
caller, so they share its model read-only and need no pickling; each sends its batches back over
its own pipe as .npy bytes (no pickle), and an error in a worker is sent back as one line of
text that the caller raises.  On a GPU (or with one worker, or one batch) it is ``generate`` itself.

Why processes and not threads: one sampling step of the small models here is many small NumPy
calls, so a thread would hold the GIL most of the time; two processes on two cores draw about
twice the images per second (docs/decisions.md).
"""
from __future__ import annotations

import io
import os
import selectors
import struct
import time
from typing import Callable

import numpy as np

from ..autograd import backend
from .samplers import generate

HEADER = struct.Struct("<cQ")  # kind (b"B" batch, b"E" error), payload length


def _send(fd: int, kind: bytes, payload: bytes) -> None:
    data = memoryview(HEADER.pack(kind, len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _worker(write_fd: int, diffusion, model, labels, batches, batch_size, options) -> None:
    """In the forked child: draw ``batches`` (indices) and send each as (index, .npy bytes)."""
    try:
        for b in batches:
            images = generate(diffusion, model, labels[b * batch_size:(b + 1) * batch_size], batch_size=batch_size,
                              first_batch=b, **options)
            buffer = io.BytesIO()
            np.save(buffer, images, allow_pickle=False)
            _send(write_fd, b"B", struct.pack("<Q", b) + buffer.getvalue())
    except BaseException as error:  # reported to the caller, which raises it; the child must not unwind
        _send(write_fd, b"E", f"{type(error).__name__}: {' '.join(str(error).split())}".encode())


class _Reader:
    """Reassembles the messages of one worker's pipe from the chunks ``selectors`` hands over."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.closed = fd, b"", False

    def read(self) -> list[tuple[bytes, bytes]]:
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.closed = True
        self.buffer += chunk
        messages = []
        while len(self.buffer) >= HEADER.size:
            kind, size = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            messages.append((kind, self.buffer[HEADER.size:HEADER.size + size]))
            self.buffer = self.buffer[HEADER.size + size:]
        return messages


def generate_in_workers(diffusion, model, labels, *, workers: int = 2, batch_size: int = 256,
                        report: Callable[[int, int, float], None] | None = None, **options) -> np.ndarray:
    """``generate(diffusion, model, labels, batch_size=batch_size, **options)`` computed by ``workers``
    forked processes (the same images).  ``report(done, total, seconds)`` is called in the caller after
    each finished batch (a progress line)."""
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    labels = np.asarray(labels, dtype=np.int64)
    count = -(-len(labels) // batch_size)
    workers = min(workers, count)
    started = time.perf_counter()
    on_gpu = backend.is_gpu_array(next(iter(model.parameters())).data)
    if workers <= 1 or on_gpu:
        chunks = []
        for b in range(count):
            chunks.append(generate(diffusion, model, labels[b * batch_size:(b + 1) * batch_size], batch_size=batch_size,
                                   first_batch=b, **options))
            if report is not None:
                report(min((b + 1) * batch_size, len(labels)), len(labels), time.perf_counter() - started)
        return np.concatenate(chunks, axis=0)

    children, readers = [], []
    for k in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: only its own write end stays open, so the caller sees EOF when it ends
            os.close(read_fd)
            for reader in readers:
                os.close(reader.fd)
            status = 0
            try:
                _worker(write_fd, diffusion, model, labels, range(k, count, workers), batch_size, options)
            except BaseException:  # the caller reads EOF without all batches and reports it
                status = 1
            finally:
                os._exit(status)
        os.close(write_fd)
        children.append(pid)
        readers.append(_Reader(read_fd))

    results: dict[int, np.ndarray] = {}
    error = None
    selector = selectors.DefaultSelector()
    try:
        for reader in readers:
            selector.register(reader.fd, selectors.EVENT_READ, reader)
        open_readers = len(readers)
        while open_readers and error is None:
            for key, _ in selector.select():
                reader = key.data
                for kind, payload in reader.read():
                    if kind == b"E":
                        error = payload.decode()
                        continue
                    (b,) = struct.unpack_from("<Q", payload)
                    results[b] = np.load(io.BytesIO(payload[8:]), allow_pickle=False)
                    if report is not None:
                        done = sum(len(images) for images in results.values())
                        report(done, len(labels), time.perf_counter() - started)
                if reader.closed:
                    selector.unregister(reader.fd)
                    open_readers -= 1
    finally:
        selector.close()
        for reader in readers:
            os.close(reader.fd)  # a worker still writing gets EPIPE and ends
        for pid in children:
            os.waitpid(pid, 0)
    if error is not None:
        raise RuntimeError(f"a sampling worker failed: {error}")
    if len(results) != count:
        raise RuntimeError(f"sampling workers ended after {len(results)} of {count} batches; run again with --workers 1")
    return np.concatenate([results[b] for b in range(count)], axis=0)


def progress_line(stream) -> Callable[[int, int, float], None]:
    """A ``report`` for ``generate_in_workers`` that prints "sampled 512/1000 images, 3.1 img/s, eta 2:37"."""
    def report(done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else float("nan")
        left = (total - done) / rate if rate > 0 else 0.0
        print(f"sampled {done}/{total} images, {rate:.1f} img/s, eta {int(left) // 60}:{int(left) % 60:02d}",
              file=stream, flush=True)
    return report
