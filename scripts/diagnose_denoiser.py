"""Where along the diffusion does a trained SDiT fall short?  (CPU, about a minute for `tiny`.)

    python scripts/diagnose_denoiser.py --ckpt runs/mnist-tiny/checkpoint.safetensors [--oracle-above 300]

1. A table over noise levels t, on 256 test images: the ε-MSE; the MSE of the clipped estimate
   x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t next to that of the dataset's mean image (a model that knows
   nothing about the image); x̂_0's MSE with the true, the null and a wrong class label (does the
   model use the label?); and the ε-MSE when the model is told t − 200 (does it use t?).
2. With --oracle-above T: a sample grid where steps above T use the exact denoiser of 2,000 training
   images (E[x_0 | x_t] as a softmax-weighted average of them) and steps at or below T use the model.
   If the grid shows digits, the model's failure lies above T.

This is how the 15-minute CPU run was diagnosed (docs/decisions.md): its x̂_0 at t = 450 is barely
better than the mean image, the label changes nothing, and with the oracle above t = 300 the model
finishes recognisable digits, while with the oracle above t = 600 it still draws fragments.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from minisdit import Tensor, backend, data, no_grad  # noqa: E402
from minisdit.cli.common import configure_cpu_runtime  # noqa: E402
from minisdit.training.checkpoint import CheckpointError  # noqa: E402
from minisdit.training.config import TrainConfig  # noqa: E402
from minisdit.data import to_model_range  # noqa: E402
from minisdit.diffusion import GaussianDiffusion  # noqa: E402
from minisdit.data.images import save_grid, to_uint8  # noqa: E402
from minisdit.diffusion import generate  # noqa: E402
from minisdit.training.checkpoint import load_model  # noqa: E402


def noise_level_table(model, diffusion, images, labels, rng, steps=(50, 150, 300, 450, 600, 750, 900)):
    x0 = to_model_range(images).astype(np.float32)
    mean_image_mse = float(((x0.mean(0, keepdims=True) - x0) ** 2).mean())
    print(f"{'t':>4} {'eps-MSE':>8} {'x0-MSE':>7} {'mean img':>8} {'null y':>7} {'wrong y':>7} {'eps-MSE@t-200':>13}")
    for t_value in steps:
        t = np.full(len(x0), t_value)
        eps = rng.standard_normal(x0.shape).astype(np.float32)
        x_t = diffusion.q_sample(x0, t, eps)

        def predict(step, y):
            with no_grad():
                return backend.to_numpy(model(Tensor(x_t), np.full(len(x0), step), y).data)[:, :x0.shape[1]]

        eps_hat = predict(t_value, labels)
        x0_mse = [float(((np.clip(diffusion.predict_x0(x_t, t, predict(t_value, y)), -1, 1) - x0) ** 2).mean())
                  for y in (labels, np.full(len(x0), model.num_classes), (labels + 3) % 10)]
        shifted = float(((predict(max(t_value - 200, 0), labels) - eps) ** 2).mean())
        print(f"{t_value:>4} {float(((eps_hat - eps) ** 2).mean()):>8.4f} {x0_mse[0]:>7.3f} {mean_image_mse:>8.3f} "
              f"{x0_mse[1]:>7.3f} {x0_mse[2]:>7.3f} {shifted:>13.4f}")


class OracleAbove:
    """Steps above ``threshold``: the exact denoiser of ``reference`` images; the rest: ``model``."""

    def __init__(self, model, diffusion, reference, threshold):
        self.model, self.diffusion, self.threshold = model, diffusion, threshold
        self.flat = to_model_range(reference).astype(np.float64).reshape(len(reference), -1)
        self.num_classes, self.in_channels, self.input_size = model.num_classes, model.in_channels, model.input_size
        self.training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, x, t, y):
        t = np.asarray(t)
        if int(t[0]) <= self.threshold:
            return self.model(x, t, y)
        x_flat = backend.to_numpy(getattr(x, "data", x)).reshape(len(t), -1).astype(np.float64)
        alpha_bar = self.diffusion.alphas_cumprod[t][:, None]
        squared = ((x_flat[:, None, :] - np.sqrt(alpha_bar)[:, :, None] * self.flat[None]) ** 2).sum(-1)
        logits = -squared / (2 * (1 - alpha_bar))
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        eps = (x_flat - np.sqrt(alpha_bar) * (weights @ self.flat)) / np.sqrt(1 - alpha_bar)
        v = -np.ones_like(eps)  # the posterior variance
        out = np.concatenate([eps, v], axis=1).reshape(len(t), 2 * self.in_channels, self.input_size, self.input_size)
        return Tensor(out.astype(np.float32))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--oracle-above", type=int, default=None, metavar="T")
    parser.add_argument("--out", default="diagnosis_grid.png")
    args = parser.parse_args(argv)
    configure_cpu_runtime(1)
    try:
        model, checkpoint = load_model(args.ckpt)
        config = TrainConfig.from_dict(checkpoint["config"], source=f"checkpoint {args.ckpt}")
    except (CheckpointError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    diffusion = GaussianDiffusion(num_timesteps=config.num_timesteps)  # the ε-MSE table needs no loss weighting
    rng = np.random.default_rng(0)
    images, labels = data.load_dataset(args.dataset, split="test")
    chosen = rng.choice(len(images), 256, replace=False)
    noise_level_table(model, diffusion, images[chosen], labels[chosen], rng)
    if args.oracle_above is not None:
        train_images, _ = data.load_dataset(args.dataset, split="train")
        hybrid = OracleAbove(model, diffusion, train_images[:2000], args.oracle_above)
        samples = generate(diffusion, hybrid, np.arange(20) % 10, sampler="ddpm", steps=50, seed=1)
        path = save_grid(to_uint8(samples), args.out, columns=10)
        print(f"oracle above t = {args.oracle_above}, model below: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
