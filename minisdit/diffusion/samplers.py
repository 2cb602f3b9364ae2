"""Drawing images from a trained model: ``generate`` over the DDPM and DDIM samplers of
``GaussianDiffusion`` (docs/DESIGN.md §4), batch by batch, reproducible from a seed."""
from __future__ import annotations

import numpy as np

from ..autograd import backend

SAMPLERS = ("ddpm", "ddim")


def generate(diffusion, model, labels, *, sampler: str = "ddpm", steps: int = 250, seed: int = 0,
             cfg_scale: float = 1.0, eta: float = 0.0, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as a NumPy array, one per label, reproducible from ``seed``.

    Batch b draws its noise from default_rng([seed, b]), so the same seed (and batch size) gives
    the same images whatever else ran before.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    labels = np.asarray(labels, dtype=np.int64)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for b, start in enumerate(range(0, len(labels), batch_size)):
            y = labels[start:start + batch_size]
            shape = (len(y), model.in_channels, model.input_size, model.input_size)
            rng = np.random.default_rng([seed, b])
            if sampler == "ddpm":
                images = diffusion.p_sample_loop(model, shape, y=y, steps=steps, rng=rng, cfg_scale=cfg_scale,
                                                 progress=progress)
            else:
                images = diffusion.ddim_sample_loop(model, shape, y=y, steps=steps, rng=rng, cfg_scale=cfg_scale,
                                                    eta=eta, progress=progress)
            chunks.append(backend.to_numpy(getattr(images, "data", images)))
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)
