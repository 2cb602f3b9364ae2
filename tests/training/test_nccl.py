"""The nccl backend (minisdit/training/distributed.py) through the interface every backend shares:
on a GPU with world size 1 (init, all-reduce, broadcast, barrier, and the trainer's one exchange
path), and, on any machine, the exchange of the NCCL unique id over TCP (MASTER_ADDR/MASTER_PORT)."""
import dataclasses
import socket
import threading

import numpy as np
import pytest

from minisdit.training import distributed
from minisdit.training.config import GPU_RECIPE
from minisdit.training.trainer import Trainer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_rank_0_hands_the_nccl_id_to_every_other_rank_over_tcp():
    unique_id, port, peers = bytes(range(128)), free_port(), 3
    server = threading.Thread(target=distributed._serve_nccl_id, args=(unique_id, "127.0.0.1", port, peers))
    server.start()
    got = [distributed._fetch_nccl_id("127.0.0.1", port, 128) for _ in range(peers)]
    server.join()
    assert got == [unique_id] * peers


@pytest.fixture
def nccl(monkeypatch):
    for name in distributed.MPI_SIZE_VARIABLES + ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    communicator = distributed.NCCLCommunicator()  # RANK 0 of WORLD_SIZE 1: no TCP exchange needed
    yield communicator
    communicator.close()


@pytest.mark.gpu
def test_one_nccl_rank_reduces_broadcasts_and_waits(nccl):
    import cupy

    assert (nccl.rank, nccl.world_size, nccl.name) == (0, 1, "nccl")
    for dtype in (np.float32, np.float64):
        values = np.random.default_rng(0).standard_normal(1000).astype(dtype)
        buffer = cupy.asarray(values)
        assert nccl.all_reduce(buffer) is buffer and np.array_equal(buffer.get(), values)  # the sum over one rank
        assert nccl.broadcast(buffer) is buffer and np.array_equal(buffer.get(), values)
    nccl.barrier()
    with pytest.raises(TypeError, match="contiguous CuPy arrays"):
        nccl.all_reduce(np.zeros(3, np.float32))


@pytest.mark.gpu
def test_the_trainer_exchange_runs_on_nccl(nccl, tmp_path):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    config = dataclasses.replace(GPU_RECIPE, preset="tiny", batch_size=4, steps=2, epochs=None, sample_num=2,
                                 sample_steps=2)
    trainer = Trainer(config, images, np.arange(8) % 10, tmp_path, progress=False, communicator=nccl)
    alone = Trainer(config, images, np.arange(8) % 10, tmp_path, progress=False)
    assert (trainer.config.backend, trainer.config.world_size) == ("nccl", 1)
    got, expected = trainer.forward_backward(), alone.forward_backward()
    assert got["loss"] == expected["loss"]
    # the exchange every backend shares, on NCCL: summing over one rank leaves values and gradients as they are
    before = trainer.optimizer.flat.grad.copy()
    values = trainer.xp.asarray([1.0, 2.0])
    summed = trainer._exchange(values.copy(), nccl)
    assert np.array_equal(summed.get(), values.get())
    assert np.array_equal(trainer.optimizer.flat.grad.get(), before.get())
