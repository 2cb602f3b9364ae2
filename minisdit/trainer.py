"""The training loop behind ``python -m minisdit.train``: steps, logs, samples and checkpoints.

Randomness is derived from (seed, purpose, counter) rather than carried in generator objects:
the batch order of epoch e comes from default_rng([seed, 0, e]); t, eps and label dropout of
step s from default_rng([seed, 1, s]) and default_rng([seed, 2, s]).  A resumed run therefore
needs only the step number to draw exactly what the uninterrupted run would have drawn.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import save_checkpoint
from .data import to_model_range
from .images import save_grid, to_uint8
from .tensor import Tensor

CHECKPOINT_NAME = "checkpoint.safetensors"


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class Trainer:
    def __init__(self, config: dict, images: np.ndarray, labels: np.ndarray, out: Path, progress: bool = True):
        from .diffusion import GaussianDiffusion
        from .models import sdit_from_preset
        from .optim import EMA, AdamW

        self.config, self.images, self.labels, self.out, self.progress = config, images, labels, Path(out), progress
        self.device = config["device"]
        config.setdefault("in_channels", int(images.shape[1]))
        config.setdefault("input_size", int(images.shape[-1]))
        self.xp = backend.get_array_module(self.device)
        self.model = sdit_from_preset(config["preset"], in_channels=images.shape[1],
                                      input_size=images.shape[-1], seed=config["seed"]).to(device=self.device)
        self.diffusion = GaussianDiffusion()
        self.optimizer = AdamW(self.model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
        self.ema = EMA(self.model, decay=config["ema"]) if config["ema"] else None
        self.step = 0
        self.batches_per_epoch = len(images) // config["batch_size"]
        if self.batches_per_epoch == 0:
            raise TrainingError(f"batch size {config['batch_size']} is larger than the {len(images)} training images; lower --batch-size")
        self.total_steps = config["steps"] or config["epochs"] * self.batches_per_epoch
        self.last_good_checkpoint = None

    # ----- state -----
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def save(self) -> Path:
        path = save_checkpoint(
            self.checkpoint_path(), model_state=self.model.state_dict(), optimizer_state=self.optimizer.state_dict(),
            ema_state=self.ema.state_dict() if self.ema is not None else None, step=self.step, config=self.config,
            rng_states={"scheme": "derived from (seed, purpose, counter)", "seed": self.config["seed"]})
        self.last_good_checkpoint = (path, self.step)
        return path

    def restore(self, checkpoint: dict):
        self.model.load_state_dict(checkpoint["model"])
        if checkpoint["optimizer"] is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.ema is not None and checkpoint["ema"] is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.step = checkpoint["step"]
        self.last_good_checkpoint = (self.checkpoint_path(), self.step)

    # ----- one step -----
    def batch_indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.batches_per_epoch)
        order = np.random.default_rng([self.config["seed"], 0, epoch]).permutation(len(self.images))
        size = self.config["batch_size"]
        return order[position * size:(position + 1) * size]

    def learning_rate(self, step: int) -> float:
        warmup = self.config.get("warmup_steps", 0)
        if warmup and step < warmup:
            return self.config["lr"] * (step + 1) / warmup
        return self.config["lr"]

    def train_step(self) -> dict:
        from .optim import clip_grad_norm

        indices = self.batch_indices(self.step)
        x0 = self.xp.asarray(to_model_range(self.images[indices]))
        y = self.labels[indices]
        step_rng = np.random.default_rng([self.config["seed"], 1, self.step])
        t = step_rng.integers(0, self.diffusion.num_timesteps, size=len(indices))
        noise = self.xp.asarray(step_rng.standard_normal(x0.shape, dtype=np.float32))
        self.model.label_dropout_rng = np.random.default_rng([self.config["seed"], 2, self.step])
        self.model.train()
        losses = self.diffusion.training_losses(self.model, Tensor(x0), t, noise=noise, y=y)
        loss = losses["loss"]
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):
            where = (f"the last good checkpoint is {self.last_good_checkpoint[0]} (step {self.last_good_checkpoint[1]})"
                     if self.last_good_checkpoint else "no checkpoint was written yet")
            raise TrainingError(f"loss became {loss_value} at step {self.step}; training stopped and {where}; "
                                "lower --lr or set --grad-clip, then --resume")
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = clip_grad_norm(self.model.parameters(), self.config["grad_clip"]) if self.config.get("grad_clip") else None
        self.optimizer.lr = self.learning_rate(self.step)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        record = {"step": self.step, "loss": loss_value, "lr": self.optimizer.lr}
        for name in ("mse", "vb"):
            if name in losses:
                record[name] = float(np.mean(backend.to_numpy(getattr(losses[name], "data", losses[name]))))
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        return record

    # ----- outputs -----
    def sample_grid(self, name: str) -> Path:
        from .sample import generate

        labels = np.arange(64) % self.model.num_classes
        training_weights = None
        if self.ema is not None:  # sample with the averaged weights, then put the trained ones back
            training_weights = self.model.state_dict()
            self.ema.copy_to(self.model)
        images = generate(self.diffusion, self.model, labels, sampler="ddpm", steps=self.config["sample_steps"],
                          seed=self.config["seed"], cfg_scale=self.config["cfg_scale"])
        if training_weights is not None:
            self.model.load_state_dict(training_weights)
        return save_grid(to_uint8(images), self.out / name)

    def plot_losses(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(line) for line in (self.out / "log.jsonl").read_text().splitlines() if line.strip()]
        records = [r for r in records if "loss" in r]
        if not records:
            return
        steps = np.array([r["step"] for r in records])
        losses = np.array([r["loss"] for r in records])
        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot(steps, losses, alpha=0.35, label="loss")
        window = max(1, len(losses) // 20)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1:], smooth, label=f"mean of {window}")
        axis.set_xlabel("step")
        axis.set_ylabel("loss (eps-MSE + L_vb)")
        axis.set_yscale("log")
        axis.legend()
        axis.set_title(f"{self.config['dataset']}, preset {self.config['preset']}")
        figure.tight_layout()
        figure.savefig(self.out / "loss.png", dpi=100)
        plt.close(figure)

    # ----- the loop -----
    def train(self) -> int:
        from tqdm import tqdm

        config = self.config
        log = open(self.out / "log.jsonl", "a")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True)
        print(f"training {config['preset']} ({self.model.num_parameters():,} parameters) on {config['dataset']} "
              f"({len(self.images)} images) for {self.total_steps} steps of {config['batch_size']}; run folder {self.out}",
              flush=True)
        interrupted = False
        previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        started, started_step = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps:
                record = self.train_step()
                elapsed = time.perf_counter() - started
                images_per_second = (self.step - started_step) * config["batch_size"] / max(elapsed, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_second:.0f}")
                if self.step % config["log_every"] == 0 or self.step == self.total_steps:
                    record.update(images_per_second=images_per_second, elapsed_s=elapsed)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if self.step % config["ckpt_every"] == 0:
                    self.save()
                if self.step % config["sample_every"] == 0:
                    self.sample_grid(f"samples_step{self.step:07d}.png")
                    self.plot_losses()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            log.close()
            signal.signal(signal.SIGTERM, previous_handler)
        path = self.save()
        self.plot_losses()
        if interrupted:
            print(f"interrupted: saved step {self.step} to {path}; continue with --resume --out {self.out}", flush=True)
            return 130
        grid = self.sample_grid("samples_final.png")
        print(f"done: {self.step} steps; checkpoint {path}; samples {grid}; loss curve {self.out / 'loss.png'}", flush=True)
        return 0
