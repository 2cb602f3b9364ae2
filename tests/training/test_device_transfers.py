"""A training step reads nothing back from the device: counted on the CPU with the launch counter's
stand-in for CuPy (minisdit/kernel_checks/launches.py), through the loop ``python -m minisdit.train``
runs.  Only a log step (every ``log_every``) copies its record to the host, in one transfer."""
import dataclasses
import io

import numpy as np
import pytest

from minisdit import diffusion
from minisdit.kernel_checks.launches import LaunchCounter, on_counting_device
from minisdit.training.config import RECIPES
from minisdit.training.trainer import Trainer, TrainingError

BATCH = 4


def make_trainer(tmp_path, **changes):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * BATCH, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    config = dataclasses.replace(RECIPES["gpu"], device="cpu", preset="tiny", batch_size=BATCH, steps=6, epochs=None,
                                 workers=1, in_channels=1, input_size=28, log_every=3, ckpt_every=100,
                                 sample_every=100, **changes)
    return Trainer(config, images, labels, tmp_path, progress=False)


class _NoBar:
    def update(self, n): pass
    def set_postfix(self, **values): pass


def per_step_counts(trainer):
    """(device-to-host copies, host-to-device bytes) of each step of the training loop."""
    counter, marks = LaunchCounter(), []
    original = trainer.forward_backward

    def marked(*args, **kwargs):  # each step starts here
        marks.append((counter.device_to_host, counter.host_to_device_bytes))
        return original(*args, **kwargs)

    trainer.forward_backward = marked
    with counter.counting():
        trainer._steps(io.StringIO(), _NoBar())
    marks.append((counter.device_to_host, counter.host_to_device_bytes))
    copies = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    sent = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return copies, sent, counter


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_only_a_log_step_reads_from_the_device_and_it_reads_once(tmp_path, grad_clip):
    trainer = make_trainer(tmp_path, grad_clip=grad_clip)
    on_counting_device(trainer)
    copies, sent, counter = per_step_counts(trainer)
    assert copies == [0, 0, 1, 0, 0, 1], counter.device_to_host_sites
    # the data set crosses once, at the first step; a later step sends its noise, t's coefficients,
    # the labels and the batch's indices, the same bytes every step
    noise = BATCH * 28 * 28 * 4
    assert sent[0] - sent[1] >= trainer.images.nbytes
    assert len(set(sent[1:])) == 1 and noise <= sent[1] < noise + trainer.images.nbytes


def test_the_read_record_holds_what_the_log_needs(tmp_path):
    trainer = make_trainer(tmp_path, grad_clip=1.0)
    on_counting_device(trainer)
    with LaunchCounter().counting():
        record = trainer.train_step()
    assert set(record) == {"step", "loss", "mse", "vb", "grad_norm", "lr"}
    assert all(type(record[name]) is float and np.isfinite(record[name]) for name in ("loss", "mse", "vb", "grad_norm"))


def test_a_non_finite_loss_between_log_steps_stops_training_at_the_next_log_step(tmp_path, monkeypatch):
    original, calls = diffusion.GaussianDiffusion.training_losses, []

    def nan_at_second_step(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(diffusion.GaussianDiffusion, "training_losses", nan_at_second_step)
    trainer = make_trainer(tmp_path)
    with pytest.raises(TrainingError, match=r"loss became nan at one of steps 1\.\.3 \(the loss is checked at every "
                                            r"--log-every step\); training stopped and no checkpoint was written yet"):
        trainer._steps(io.StringIO(), _NoBar())
    assert trainer.step == 3 and not trainer.checkpoint_path().exists()
