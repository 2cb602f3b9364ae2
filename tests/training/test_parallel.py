"""CPU data parallelism (minisdit/training/parallel.py): W processes give the whole batch's gradients."""
import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minisdit import diffusion
from minisdit.training.config import CPU_RECIPE
from minisdit.training.parallel import split_sizes
from minisdit.training.trainer import Trainer, TrainingError


@settings(max_examples=settings().max_examples * 4 // 3, deadline=None)
@given(batch=st.integers(1, 300), workers=st.integers(1, 8))
def test_split_sizes_cover_the_batch_evenly(batch, workers):
    sizes = split_sizes(batch, workers)
    assert len(sizes) == workers and sum(sizes) == batch
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def make_trainer(tmp_path, workers, batch_size=7, seed=5, **changes):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (21, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(21, dtype=np.int64) % 10
    config = dataclasses.replace(CPU_RECIPE, batch_size=batch_size, lr=1e-3, warmup_steps=0, steps=3, seed=seed,
                                 mse_weighting="uniform", sample_steps=2, sample_num=2, cfg_scale=1.0,
                                 workers=workers, **changes)
    return Trainer(config, images, labels, tmp_path, progress=False)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_loss_and_gradients_of_the_whole_batch(tmp_path, workers):
    alone, shared = make_trainer(tmp_path, 1), make_trainer(tmp_path, workers)
    try:
        for _ in range(2):  # the second step checks that the workers see the first update
            expected, got = alone.forward_backward(), shared.forward_backward()
            assert got["step"] == expected["step"]
            for name in ("loss", "mse", "vb"):  # float32 sums taken in another order: a few ulps apart
                assert got[name] == pytest.approx(expected[name], rel=1e-5), name
            nonzero = 0
            for (name, a), b in zip(alone.model.named_parameters(), shared.model.parameters()):
                scale = float(np.abs(a.grad).max())  # 0 before the zero-initialised head has moved
                assert np.abs(a.grad - b.grad).max() <= 1e-5 * scale, name
                nonzero += scale > 0
            assert nonzero > 0
            alone.update(expected)
            shared.update(got)
        # after one update every parameter gets a gradient, so the comparison above covered them all
        assert all(float(np.abs(p.grad).max()) > 0 for p in alone.model.parameters())
    finally:
        shared.close()


def test_both_paths_draw_the_labels_dropped_by_the_model_own_api(tmp_path):
    # the one-process and the parallel step both take the labels of draw_step: dropped once, by
    # SDiT.drop_labels with the step's own generator (seed, 2, step)
    alone, shared = make_trainer(tmp_path, 1, batch_size=21), make_trainer(tmp_path, 2, batch_size=21)
    for trainer in (alone, shared):
        indices, _, _, y = trainer.draw_step()
        expected = trainer.model.drop_labels(trainer.labels[indices], np.random.default_rng([5, 2, 0]))
        assert np.array_equal(y, expected)
    assert np.array_equal(alone.draw_step()[3], shared.draw_step()[3])
    labels = np.arange(1000) % 10
    dropped = alone.model.drop_labels(labels, np.random.default_rng([5, 2, 0]))
    assert 50 < int((dropped == 10).sum()) < 150  # about 10 %
    inside = np.random.default_rng([5, 2, 0])
    expected = np.where(inside.random(1000) < alone.model.class_dropout_prob, 10, labels)
    assert np.array_equal(dropped, expected)


def test_a_failing_worker_stops_training_with_one_line(tmp_path, monkeypatch):
    trainer_pid = os.getpid()
    original = diffusion.GaussianDiffusion.training_losses

    def fail_in_the_worker(self, *args, **kwargs):
        if os.getpid() != trainer_pid:
            raise MemoryError("no room for the slice")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusion.GaussianDiffusion, "training_losses", fail_in_the_worker)
    trainer = make_trainer(tmp_path, 2)
    try:
        with pytest.raises(TrainingError) as caught:
            trainer.forward_backward()
    finally:
        trainer.close()
    message = str(caught.value)
    assert "\n" not in message
    assert "MemoryError: no room for the slice" in message and "at step 1" in message
    assert "--workers 1" in message


def test_close_stops_the_worker_processes(tmp_path):
    trainer = make_trainer(tmp_path, 3)
    trainer.forward_backward()
    processes = list(trainer._parallel.processes)
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    trainer.close()
    assert not any(p.is_alive() for p in processes)


def test_a_worker_that_died_gives_one_line(tmp_path):
    trainer = make_trainer(tmp_path, 2)
    try:
        trainer.forward_backward()
        process = trainer._parallel.processes[0]
        process.kill()
        process.join()
        with pytest.raises(TrainingError) as caught:
            trainer.forward_backward()
    finally:
        trainer.close()
    message = str(caught.value)
    assert "\n" not in message and f"worker process {process.pid} is gone" in message


def test_an_interrupt_in_the_trainer_process_leaves_no_stale_answer(tmp_path, monkeypatch):
    trainer_pid = os.getpid()
    original = diffusion.GaussianDiffusion.training_losses
    calls = []

    def interrupt_once_here(self, *args, **kwargs):
        if os.getpid() == trainer_pid and not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusion.GaussianDiffusion, "training_losses", interrupt_once_here)
    shared, alone = make_trainer(tmp_path, 2), make_trainer(tmp_path, 1)
    try:
        with pytest.raises(KeyboardInterrupt):
            shared.forward_backward()
        # the next step (another batch): the worker's answer to the interrupted call must not be taken for it
        shared.step = alone.step = 1
        got, expected = shared.forward_backward(), alone.forward_backward()
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    finally:
        shared.close()


def test_workers_share_the_flat_buffers_and_see_a_loaded_state(tmp_path):
    # the parameters are views of one shared block; the summed gradients are views of the flat
    # gradient buffer that AdamW and clipping read; weights loaded by --resume (new arrays) are
    # copied into the shared block before the workers compute, so they train from them too
    shared, alone = make_trainer(tmp_path, 2), make_trainer(tmp_path, 1)
    try:
        shared.forward_backward()
        flat = shared.optimizer.flat
        assert flat.data is shared._parallel.weights_block.array
        assert all(p.data.base is flat.data and p.grad.base is flat.grad for p in shared.model.parameters())
        moved = {name: value + 0.01 for name, value in shared.model.state_dict().items()}
        for trainer in (shared, alone):
            trainer.model.load_state_dict(moved)
        got, expected = shared.forward_backward(), alone.forward_backward()
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert all(p.data.base is flat.data for p in shared.model.parameters())
    finally:
        shared.close()
