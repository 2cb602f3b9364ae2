"""The training loop behind ``python -m minisdit.train``: steps, logs, samples and checkpoints.

Randomness is derived from (seed, purpose, counter) rather than carried in generator objects:
the batch order of epoch e comes from default_rng([seed, 0, e]); t and eps of step s from
default_rng([seed, 1, s]); label dropout of step s from default_rng([seed, 2, s]).  Nothing else
in a step is random (EMA and AdamW are deterministic; the sample grids use their own model copy
and seed), so a resumed run needs only the weights, the optimizer and EMA state and the step
number to draw exactly what the uninterrupted run would have drawn: on the CPU the two end with
bitwise equal weights.

Device to host: on a GPU a read of a device array on the host (``float(x)``, ``bool(x)``, ``.get()``)
waits for every kernel queued before it, so a step reads nothing: the data set sits on the device
from the start (uint8, gathered there batch by batch), the loss terms and the gradient norm stay
device scalars, and the log step (every ``log_every``) reads them in one copy.  The check for a
non-finite loss happens then too, on a running sum of the losses since the last log step (a NaN or
an infinity anywhere in it stays in the sum), so with ``log_every`` > 1 a divergence is reported at
the next log step, before that step's checkpoint is written.  ``train_step`` (one step for callers
such as the benchmarks) reads its record at once.

Stopping: SIGINT (Ctrl-C) and SIGTERM stop the run at once while it computes (forward, backward,
sample grids change no state), but are held back while it changes state (the optimizer update,
the EMA update, the step counter, the log line and a checkpoint), so a stop never catches a
half-updated model.  The loop then saves a checkpoint at the current step and returns
128 + the signal number (130 for Ctrl-C).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np

from matplotlib.figure import Figure
from tqdm import tqdm

from ..autograd import backend
from ..autograd.optim import EMA, AdamW, clip_grad_norm, ema_decay_at
from ..autograd.tensor import Tensor
from ..data import to_model_range
from ..data.images import save_grid, to_uint8
from ..diffusion import generate
from ..kernels.optim import FUSED
from .checkpoint import CheckpointError, save_checkpoint
from .config import TrainConfig, build_diffusion, build_model
from .distributed import SingleProcess
from .parallel import LocalWorkers, WorkerError, split_sizes
from .signals import StopSignals

CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "log.jsonl"
RNG_SCHEME = "numpy default_rng([seed, purpose, counter])"
RNG_PURPOSES = {"batch_order": "[seed, 0, epoch]", "t_and_noise": "[seed, 1, step]",
                "label_dropout": "[seed, 2, step]"}


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Throughput:
    """Images/s and the time left, counting training only (``paused()`` leaves out the sample grids)."""

    def __init__(self, step: int, batch_size: int):
        self.started, self.first_step, self.batch_size = time.perf_counter(), step, batch_size

    def measure(self, step: int, total_steps: int) -> tuple[float, float, float]:
        """(seconds trained, images/s, seconds left) after ``step``."""
        elapsed = time.perf_counter() - self.started
        done = step - self.first_step
        return elapsed, done * self.batch_size / max(elapsed, 1e-9), (total_steps - step) * elapsed / max(done, 1)

    @contextlib.contextmanager
    def paused(self):
        paused = time.perf_counter()
        yield
        self.started += time.perf_counter() - paused


class Trainer:
    """One run: its model, diffusion, optimizer, EMA and step counter, and the loop that advances them
    (``train``).  ``config`` is the run's TrainConfig; ``images`` (N, C, H, W) uint8 and ``labels`` (N,)."""

    def __init__(self, config: TrainConfig, images: np.ndarray, labels: np.ndarray, out: Path, progress: bool = True,
                 communicator=None):
        if tuple(images.shape[1:]) != (config.in_channels, config.input_size, config.input_size):
            raise TrainingError(f"the training images are {tuple(images.shape[1:])} but the run's config says "
                                f"{(config.in_channels, config.input_size, config.input_size)}; train on the data "
                                f"set the run was started with ({config.dataset})")
        self.config, self.images, self.labels, self.out, self.progress = config, images, labels, Path(out), progress
        self.device = config.device
        self.xp = backend.get_array_module(self.device)
        self.model = build_model(config).to(device=self.device)
        self.diffusion = build_diffusion(config)
        # AdamW and EMA over the model's flat buffers, each step one fused kernel where kernels run
        # (minisdit/kernels/optim.py), the NumPy references elsewhere; the same bits either way on the CPU
        self.optimizer = AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=FUSED)
        self.ema = EMA(self.model, decay=config.ema, fused=FUSED) if config.ema else None
        self._sampling_model = None  # a second model for EMA samples, so sampling never touches training state
        self.step = 0
        self.batches_per_epoch = len(images) // config.batch_size
        if self.batches_per_epoch == 0:
            raise TrainingError(f"batch size {config.batch_size} is larger than the {len(images)} training images; "
                                "lower --batch-size")
        self.total_steps = config.total_steps(self.batches_per_epoch)
        self.last_good_checkpoint = None  # (path, step) of the newest checkpoint known to be sound
        # the processes sharing each batch: ``communicator`` (an mpi or nccl one, minisdit/training/
        # distributed.py, made by the launcher's process), else this process with --workers - 1 forked
        # workers (the local backend, minisdit/training/parallel.py, forked at the first step)
        self.communicator = communicator
        if communicator is not None:
            self.workers = 1
            self.world_size, self.rank = communicator.world_size, communicator.rank
            if self.world_size > config.batch_size:
                raise TrainingError(f"{self.world_size} ranks cannot share a batch of {config.batch_size}; start at "
                                    "most --batch-size ranks or raise --batch-size")
            # every rank starts from rank 0's weights (built from the same seed, or the same checkpoint)
            communicator.broadcast(self.optimizer.flat.data, root=0)
        else:
            self.workers = min(config.workers, config.batch_size) if self.device == "cpu" else 1
            self.world_size, self.rank = self.workers, 0
        self.is_main = self.rank == 0  # rank 0 alone writes checkpoints, logs, grids and prints
        # what config.json and the checkpoints record: how this run shares its batches
        self.config = config = dataclasses.replace(config, backend=self.backend_name(), world_size=self.world_size)
        self._parallel = None
        self._loss_names = ["mse", "vb"] if self.diffusion.loss == "hybrid" else ["mse"]
        self.stops = StopSignals()
        self._images_on_device = None  # the data set on the training device, copied once (_batch_images)
        self._losses_since_log = None  # device sum of the losses since the last read (the finite-loss check)
        self._steps_since_log = []

    # ----- state -----
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def rng_states(self) -> dict:
        return {"scheme": RNG_SCHEME, "purposes": RNG_PURPOSES, "seed": self.config.seed, "next_step": self.step}

    def _check_finite_weights(self):
        for name, parameter in self.model.named_parameters():
            if not bool(self.xp.isfinite(parameter.data).all()):
                raise TrainingError(f"weights became non-finite ({name}) after step {self.step}; training stopped and "
                                    f"{self._last_good_sentence()}; lower --lr or set --grad-clip, then --resume")

    def save(self) -> Path:
        """Write the checkpoint at the current step (after checking that the weights are finite); with
        several ranks only rank 0 writes (every rank holds the same weights), the others note it."""
        self._check_finite_weights()
        path = self.checkpoint_path()
        if self.is_main:
            save_checkpoint(
                path, model_state=self.model.state_dict(), optimizer_state=self.optimizer.state_dict(),
                ema_state=self.ema.state_dict() if self.ema is not None else None, step=self.step,
                config=self.config.to_dict(), rng_states=self.rng_states())
        if self.communicator is not None:  # no rank goes on (and may fail) before the checkpoint is written
            self.communicator.barrier()
        self.last_good_checkpoint = (path, self.step)
        return path

    def restore(self, checkpoint: dict):
        """Continue from a checkpoint read by ``load_checkpoint`` (already checked to fit the model)."""
        path = checkpoint["path"]
        scheme = checkpoint["rng_states"].get("scheme")
        if scheme != RNG_SCHEME:
            raise CheckpointError(f"checkpoint {path} drew its random numbers another way ({scheme!r}), so it cannot "
                                  "be resumed exactly; start a new run")
        if checkpoint["optimizer"] is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state (it was not written by a training run), "
                                  "so it cannot be resumed exactly; start a new run")
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            # the run's config decides these (they may be changed on resume)
            self.optimizer.lr, self.optimizer.weight_decay = self.config.lr, self.config.weight_decay
            if self.ema is not None:  # EMA switched on at this resume starts from the resumed weights
                self.ema.load_state_dict(checkpoint["ema"] if checkpoint["ema"] is not None else checkpoint["model"])
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {path} does not fit this model and optimizer "
                                  f"({' '.join(str(error).split())}); resume with the run's own checkpoint") from error
        self.step = checkpoint["step"]
        self.last_good_checkpoint = (path, self.step)

    # ----- one step -----
    def batch_indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.batches_per_epoch)
        if getattr(self, "_order_epoch", None) != epoch:  # one permutation per epoch, kept for its batches
            self._order = np.random.default_rng([self.config.seed, 0, epoch]).permutation(len(self.images))
            self._order_epoch = epoch
        size = self.config.batch_size
        return self._order[position * size:(position + 1) * size]

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant; with ``lr_decay_fraction`` f > 0 the
        last f of the run decays linearly towards 0 (warm-up, stable, decay), reaching lr/n at the
        last of its n steps."""
        lr, warmup, fraction = self.config.lr, self.config.warmup_steps, self.config.lr_decay_fraction
        if warmup and step < warmup:
            return lr * (step + 1) / warmup
        if fraction > 0:
            decay_steps = max(1, round(self.total_steps * fraction))
            remaining = self.total_steps - step
            if remaining <= decay_steps:
                return lr * remaining / decay_steps
        return lr

    def _last_good_sentence(self) -> str:
        if self.last_good_checkpoint is None:
            return "no checkpoint was written yet"
        path, step = self.last_good_checkpoint
        return f"the last good checkpoint is {path} (step {step})"

    def draw_step(self):
        """Everything random in step ``self.step + 1``, as host arrays: the batch indices (from
        (seed, 0, epoch)), t and ε (from (seed, 1, step)) and the labels after dropout (from (seed, 2, step))."""
        indices = self.batch_indices(self.step)
        step_rng = np.random.default_rng([self.config.seed, 1, self.step])
        t = step_rng.integers(0, self.diffusion.num_timesteps, size=len(indices))
        noise = step_rng.standard_normal((len(indices), *self.images.shape[1:]), dtype=np.float32)
        y = self.model.drop_labels(self.labels[indices], np.random.default_rng([self.config.seed, 2, self.step]))
        return indices, t, noise, y

    def forward_backward(self, read: bool = True) -> dict:
        """Loss and gradients of step ``self.step + 1`` (changes nothing but the gradients).

        Its record holds the loss terms as host floats (``read``, checked to be finite), or with
        ``read=False`` still on the device under ``"pending"``, for ``read_record`` at a log step."""
        communicator = self._communicator()
        communicator.start_step(self.step)  # the local backend's workers start their slices now
        try:
            values = self._rank_part(self.step, communicator)
        except WorkerError as error:
            raise TrainingError(f"{error} at step {self.step + 1}; {self._last_good_sentence()}; "
                                "rerun with --workers 1 to see the error in this process") from error
        # a device add, no read: NaN and infinities of any step stay in the sum until the next read
        loss = values[0:1]
        self._losses_since_log = loss if self._losses_since_log is None else self._losses_since_log + loss
        self._steps_since_log.append(self.step + 1)
        record = {"step": self.step + 1, "pending": values}
        return self.read_record(record) if read else record

    def read_record(self, record: dict) -> dict:
        """The record's device values as host floats, in one device-to-host copy: the loss terms, the
        gradient norm (when clipped) and the sum of the losses since the last read, which must be
        finite (else training stops with a one-line error naming the steps it covers)."""
        if "pending" not in record:
            return record
        parts = [record.pop("pending"), self._losses_since_log]
        if "grad_norm" in record:  # a device scalar on a GPU, a float on the CPU
            parts.append(self.xp.asarray(record["grad_norm"], dtype=np.float64).reshape(1))
        xp = backend.array_module_of(parts[0])
        host = backend.to_numpy(xp.concatenate(parts))
        names = len(self._loss_names) + 1
        values, losses_since_log = host[:names], float(host[names])
        steps, self._losses_since_log, self._steps_since_log = self._steps_since_log, None, []
        if not math.isfinite(losses_since_log):
            bad = float(values[0]) if not math.isfinite(float(values[0])) else losses_since_log
            when = (f"at step {steps[-1]}" if len(steps) == 1 else
                    f"at one of steps {steps[0]}..{steps[-1]} (the loss is checked at every --log-every step)")
            raise TrainingError(f"loss became {bad} {when}; training stopped and "
                                f"{self._last_good_sentence()}; lower --lr or set --grad-clip, then --resume")
        record["loss"] = float(values[0])
        record.update({name: float(value) for name, value in zip(self._loss_names, values[1:])})
        if "grad_norm" in record:
            record["grad_norm"] = float(host[names + 1])
        return record

    def _loss_and_gradients(self, arrays):
        """The loss terms of a slice of the batch, each times the slice's ``share`` of the batch, and
        the gradients of that loss: the whole step in one process (share 1), or one worker's part."""
        indices, t, noise, y, share = arrays
        x0 = to_model_range(self._batch_images(indices))
        self.model.train()
        # overflow warnings would bury the one-line message of a non-finite loss; the loss is checked instead
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            losses = self.diffusion.training_losses(self.model, Tensor(x0), t, noise=self.xp.asarray(noise), y=y)
            loss = losses["loss"] * share
            # everything the log needs, as one device array: read (one copy) only at a log step
            terms = self.xp.stack([loss.data.reshape(())] + [losses[name].mean() for name in self._loss_names])
            self.optimizer.zero_grad()
            loss.backward()
        values = terms.astype(np.float64)  # as the host floats the log has always held
        if share != 1.0:  # a worker's slice (CPU only): its terms weighted by its share, as the loss is
            values[1:] *= share
        return values, [parameter.grad for parameter in self.model.parameters()]

    def _batch_images(self, indices):
        """The uint8 images of a batch, gathered on the device from the data set copied there once
        (on the CPU the data set itself; a GPU receives the indices, not the pixels)."""
        if self._images_on_device is None or backend.array_module_of(self._images_on_device) is not self.xp:
            self._images_on_device = self.xp.asarray(self.images)
        return self._images_on_device[self.xp.asarray(indices)]

    def _communicator(self):
        """The processes sharing this step: the given communicator, the local workers (forked at the
        first step, after any --resume has loaded the weights) or this process alone."""
        if self.communicator is not None:
            return self.communicator
        if self.workers > 1:
            if self._parallel is None:
                self._parallel = LocalWorkers(self.optimizer.flat, self._worker_part, self.workers)
            return self._parallel
        return SingleProcess()

    def _worker_part(self, step: int, communicator):
        """A forked worker's part of step ``step + 1`` (its copy of the trainer, its rank)."""
        self.step = step
        return self._rank_part(step, communicator)

    def _rank_part(self, step: int, communicator) -> np.ndarray:
        """This rank's slice of step ``step + 1`` and the exchange of its gradients: every rank draws
        what one process would draw for the whole batch (draw_step) and takes slice ``rank`` of it,
        its loss weighted by its share of the batch, so the sums over the ranks are the loss terms
        and gradients of the batch mean (minisdit/training/distributed.py)."""
        indices, t, noise, y = self.draw_step()
        world_size, rank = communicator.world_size, communicator.rank
        if world_size == 1:
            values, _ = self._loss_and_gradients((indices, t, noise, y, 1.0))
            return values
        sizes = split_sizes(len(indices), world_size)
        start = sum(sizes[:rank])
        part = slice(start, start + sizes[rank])
        values, _ = self._loss_and_gradients((indices[part], t[part], noise[part], y[part],
                                              sizes[rank] / len(indices)))
        return self._exchange(values, communicator)

    def _exchange(self, values, communicator):
        """The one gradient exchange of every backend: the sums over the ranks of the flat gradient
        buffer and of the loss terms.  Under mpi or nccl the terms carry one more number, 1 where a
        rank holds a stop signal, so that every rank stops after the same step (a rank leaving
        alone would leave the others waiting in a collective)."""
        flat = self.optimizer.flat
        flat.gather_grads()  # zeros for a parameter this slice gave no gradient
        agree_on_stop = self.communicator is not None
        if agree_on_stop:
            flag = self.xp.asarray([1.0 if self.stops.signal_number is not None else 0.0])
            values = self.xp.concatenate([values, flag])
        communicator.all_reduce(values)
        communicator.all_reduce(flat.grad)
        for parameter, view in zip(flat.params, flat.grad_views):
            parameter.grad = view
        if agree_on_stop:
            values, flag = values[:-1], values[-1]
            if float(flag) > 0 and self.stops.signal_number is None:  # another rank was stopped
                self.stops.signal_number = signal.SIGTERM
        return values

    def close(self):
        """Stop the local data-parallel workers, if any (training can start them again)."""
        if self._parallel is not None:
            self._parallel.close()
            self._parallel = None

    def update(self, record: dict) -> dict:
        """Apply the gradients: clip, AdamW, EMA, step counter.  Call inside ``stops.deferred()``."""
        if self.config.grad_clip:
            # one reduction over the flat gradient buffer, one in-place scaling of it; the norm a
            # device scalar on a GPU, read with the loss at a log step
            record["grad_norm"] = clip_grad_norm(self.optimizer.flat, self.config.grad_clip)
        self.optimizer.lr = self.learning_rate(self.step)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(ema_decay_at(self.config.ema, self.step, self.config.ema_warmup))
        self.step += 1
        record["lr"] = self.optimizer.lr
        return record

    def train_step(self) -> dict:
        """One whole optimizer step; returns its log record, read on the host (one copy)."""
        record = self.forward_backward(read=False)
        with self.stops.deferred():
            return self.read_record(self.update(record))

    # ----- outputs -----
    def sampling_model(self):
        """The trained model, or with EMA a separate copy holding the averaged weights."""
        if self.ema is None:
            return self.model
        if self._sampling_model is None:
            self._sampling_model = build_model(self.config).to(device=self.device)
        self.ema.copy_to(self._sampling_model)
        return self._sampling_model

    def sample_grid(self, name: str) -> Path:
        """A PNG grid of ``sample_num`` images, one class per column, same seed every time."""
        model = self.sampling_model()
        count = self.config.sample_num
        labels = np.arange(count) % model.num_classes
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            images = generate(self.diffusion, model, labels, sampler="ddpm", steps=self.config.sample_steps,
                              seed=self.config.seed, cfg_scale=self.config.cfg_scale,
                              guidance_min_t=self.config.guidance_min_t, variance=self.config.sample_variance)
        return save_grid(to_uint8(images), self.out / name, columns=min(count, model.num_classes))

    def read_log(self) -> list[dict]:
        path = self.out / LOG_NAME
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return records

    def rewind_log(self):
        """Keep only the log lines up to the current step (a crash may have logged steps the
        checkpoint does not hold; the resumed run logs them again)."""
        path = self.out / LOG_NAME
        if not path.exists():
            return
        kept = [r for r in self.read_log() if r.get("step", 0) <= self.step]
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(temporary, path)

    def plot_losses(self):
        # a bare Figure (no pyplot) leaves the caller's plotting backend alone, e.g. inline plots in a notebook
        records = [r for r in self.read_log() if "loss" in r]
        if not records:
            return
        steps = np.array([r["step"] for r in records])
        losses = np.array([r["loss"] for r in records])
        figure = Figure(figsize=(6, 3.5))
        axis = figure.subplots()
        window = max(1, len(losses) // 20)
        axis.plot(steps, losses, alpha=0.35 if window > 1 else 1.0, label="loss")
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1:], smooth, label=f"mean of {window}")
        axis.set_xlabel("step")
        weighted = self.diffusion.mse_weighting != "uniform"
        axis.set_ylabel(f"loss ({'weighted ' if weighted else ''}eps-MSE + L_vb)")
        axis.set_yscale("log")
        axis.legend()
        axis.set_title(f"{self.config.dataset}, preset {self.config.preset}")
        figure.tight_layout()
        temporary = self.out / f".loss.{os.getpid()}.tmp.png"  # renamed into place: never a truncated picture
        try:
            figure.savefig(temporary, dpi=100)
            os.replace(temporary, self.out / "loss.png")
        finally:
            temporary.unlink(missing_ok=True)

    # ----- the loop -----
    def _say(self, line: str):
        if self.is_main:
            print(line, flush=True)

    def train(self) -> int:
        """Train to ``total_steps``; 0 when done, 128 + signal number when stopped by a signal.  With
        several ranks every rank runs this loop; rank 0 alone writes and prints."""
        config = self.config
        ranks = "" if self.world_size == 1 else f" shared by {self.world_size} {self.backend_name()} processes"
        self._say(f"training {config.preset} ({self.model.num_parameters():,} parameters) on {config.dataset} "
                  f"({len(self.images)} images) for {self.total_steps} steps of {config.batch_size}{ranks}; "
                  f"run folder {self.out}")
        if self.step and self.is_main:
            self.rewind_log()
        if self.step >= self.total_steps:
            self._say(f"the checkpoint is already at step {self.step} of {self.total_steps}; "
                      "pass a larger --steps or --epochs to train further")
        self.stops.install()
        try:
            log_path = self.out / LOG_NAME if self.is_main else os.devnull
            with open(log_path, "a" if self.step else "w") as log, \
                    tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main),
                         dynamic_ncols=True, unit="step") as bar:
                stopped = self._steps(log, bar)
            self.stops.finishing()  # from here on a signal must not cut the final save short
            if self.last_good_checkpoint != (self.checkpoint_path(), self.step):
                self.save()
            if self.is_main:
                self.plot_losses()
        finally:
            self.stops.restore()
            self.close()
        path = self.checkpoint_path()
        if stopped:
            self._say(f"interrupted ({self.stops.name}): saved step {self.step} to {path}; continue with: "
                      f"python -m minisdit.train --resume --out {self.out}")
            return self.stops.exit_code
        if not self.is_main:
            return 0
        try:
            grid = self.sample_grid("samples_final.png")
        except KeyboardInterrupt:
            print(f"interrupted while drawing the final samples; the checkpoint at step {self.step} is saved "
                  f"in {path}", flush=True)
            return 130
        print(f"done: {self.step} steps; checkpoint {path}; samples {grid}; loss curve {self.out / 'loss.png'}",
              flush=True)
        return 0

    def backend_name(self) -> str:
        """The backend sharing each batch: local (this process and its forked workers), mpi or nccl."""
        return self.communicator.name if self.communicator is not None else "local"

    def _steps(self, log, bar) -> bool:
        """Step until ``total_steps``; True when a stop signal (or Ctrl-C) ended the steps early."""
        config, throughput = self.config, _Throughput(self.step, self.config.batch_size)
        # under mpi or nccl a signal never interrupts a step: the ranks agree in the step's exchange
        # to stop after it (Trainer._exchange); the local workers follow their trainer, which may stop at once
        computing = self.stops.held if self.communicator is not None else contextlib.nullcontext
        try:
            while self.step < self.total_steps:
                with computing():
                    record = self.forward_backward(read=False)
                with self.stops.deferred():  # the update, its log line and checkpoint happen whole
                    self.update(record)
                    self._report(record, throughput, log, bar)
                    if self.step % config.ckpt_every == 0:
                        self.read_record(record)  # no checkpoint after an unchecked loss
                        self.save()
                # the last step's grid is samples_final.png, drawn once after the final save
                if self.step % config.sample_every == 0 and self.step < self.total_steps and self.is_main:
                    with throughput.paused():
                        self.sample_grid(f"samples_step{self.step:07d}.png")
                        self.plot_losses()
        except KeyboardInterrupt:
            return True
        except TrainingError:
            raise
        except Exception as error:
            if self.communicator is None or self.world_size == 1:
                raise
            # one rank's failure ends every rank (the launcher's process aborts them): say where it stands
            raise TrainingError(f"{type(error).__name__}: {error} at step {self.step + 1}; "
                                f"{self._last_good_sentence()}; continue with --resume") from error
        return False

    def _report(self, record: dict, throughput: _Throughput, log, bar):
        """The progress bar after every step; every ``log_every`` (and at the last step) the record
        read from the device, a log line and, without a bar, a printed line; the bar shows the loss
        of the latest log step (reading it every step would wait for the GPU every step)."""
        elapsed, images_per_second, eta = throughput.measure(self.step, self.total_steps)
        bar.update(1)
        if self.step % self.config.log_every == 0 or self.step == self.total_steps:
            self.read_record(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_second:.1f}")
            record.update(images_per_second=images_per_second, elapsed_s=elapsed)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if not self.progress and self.is_main:
                print(f"step {self.step}/{self.total_steps} loss {record['loss']:.4f} "
                      f"{images_per_second:.1f} img/s eta {_format_seconds(eta)}", flush=True)
