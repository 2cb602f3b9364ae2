"""Sampling from a trained model (docs/DESIGN.md §4): the ancestral (DDPM) and DDIM steps, the loop
that walks a (respaced) chain with either, classifier-free guidance, DDIM inversion, and
``generate``, which draws images batch by batch, reproducible from a seed.

Every function takes the diffusion (a ``GaussianDiffusion``) as its first argument; the chain is
``diffusion.for_sampling(steps)``, whose step index i the model sees as ``timestep_map[i]``.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..autograd.tensor import Tensor, no_grad
from .arguments import data_of, device_and_dtype, evaluation_mode, generator, labels_of, null_label_of

SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("learned", "posterior")


# --------------------------------------------------------------------------------------------
# classifier-free guidance
# --------------------------------------------------------------------------------------------
def guided_model_output(diffusion, model, x, t, y, cfg_scale: float, num_classes: int | None = None) -> Tensor:
    """Classifier-free guidance: the model runs on [x, x] with labels [y, ∅] (∅ = num_classes);
    ε = ε_∅ + s (ε_y − ε_∅) on channels [0, C), v from the conditional half.  Sampling only
    (no gradient); always runs both halves, even for s = 1."""
    x = data_of(x)
    batch, channels = x.shape[0], x.shape[1]
    t = diffusion.check_timesteps(t, batch)
    labels = labels_of(y, batch)
    null_label = null_label_of(model, num_classes)
    if null_label is None:
        raise ValueError("classifier-free guidance needs the null label: pass num_classes= "
                         "or give the model a num_classes attribute")
    if labels is None:
        raise ValueError("classifier-free guidance needs class labels y")
    xp = backend.array_module_of(x)
    doubled = diffusion.call_model(model, xp.concatenate([x, x], axis=0), np.concatenate([t, t]),
                                   np.concatenate([labels, np.full(batch, null_label, dtype=np.int64)])).data
    conditional, unconditional = doubled[:batch], doubled[batch:]
    eps = unconditional[:, :channels] + cfg_scale * (conditional[:, :channels] - unconditional[:, :channels])
    return Tensor(xp.concatenate([eps, conditional[:, channels:]], axis=1))


def model_output(diffusion, model, x, t, labels, cfg_scale: float, num_classes) -> Tensor:
    """The model's [ε̂, v] at x: guided for cfg_scale ≠ 1, else one plain call (no null batch)."""
    if cfg_scale == 1.0:
        return diffusion.call_model(model, x, t, labels)
    return guided_model_output(diffusion, model, x, t, labels, cfg_scale, num_classes)


# --------------------------------------------------------------------------------------------
# one reverse step x_t -> x_{t-1}
# --------------------------------------------------------------------------------------------
class AncestralStep:
    """DDPM: x_{t−1} = μ_θ(x_t, t) + σ_t z, z ~ N(0, I), with no noise at the last step (t = 0).

    ``variance`` "learned": σ_t² is the model's exp(f log β_t + (1 − f) log β̃_t), f = (v + 1)/2;
    "posterior": σ_t² = β̃_t, the forward posterior's variance (the lower of DDPM's two fixed
    choices).  β̃ leaves less fresh noise at low t, where the CPU preset's ε̂ removes it only partly
    (docs/decisions.md, session 8: the background speckle halves)."""

    name = "DDPM"

    def __init__(self, variance: str = "learned"):
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        self.variance = variance

    def __call__(self, chain, x, t: np.ndarray, out: dict, gaussian):
        x_prev = out["mean"].data
        if t[0] > 0:
            xp = backend.array_module_of(x_prev)
            if self.variance == "learned":
                sigma = xp.exp(0.5 * out["log_variance"].data)
            else:
                sigma = xp.sqrt(chain.at(t, x_prev)(chain.posterior_variance))
            x_prev = x_prev + sigma * gaussian()
        return x_prev


def ddim_sigma(alpha_bar, alpha_bar_prev, eta: float, xp=np):
    """DDIM's noise scale σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}); η = 1 gives the
    DDPM posterior's β̃_t = σ_t², η = 0 a deterministic step."""
    return eta * xp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * xp.sqrt(1 - alpha_bar / alpha_bar_prev)


class DDIMStep:
    """DDIM with ᾱ = ᾱ_t, ᾱ' = ᾱ_{t−1} and σ = ``ddim_sigma``:

        x_{t−1} = √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z      (no noise at the last step, none for η = 0)

    with ε̂ recomputed from x̂_0 (equal to the model's unless x̂_0 was clipped)."""

    name = "DDIM"

    def __init__(self, eta: float = 0.0):
        if not eta >= 0:
            raise ValueError(f"eta must be non-negative, got {eta}")
        self.eta = float(eta)

    def __call__(self, chain, x, t: np.ndarray, out: dict, gaussian):
        pred_x0 = out["pred_x0"].data
        eps = chain.predict_eps_from_x0(x, t, pred_x0)
        at = chain.at(t, x)
        alpha_bar, alpha_bar_prev = at(chain.alphas_cumprod), at(chain.alphas_cumprod_prev)
        xp = backend.array_module_of(x)
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, self.eta, xp)
        x_prev = pred_x0 * xp.sqrt(alpha_bar_prev) + xp.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        if self.eta > 0 and t[0] > 0:
            x_prev = x_prev + sigma * gaussian()
        return x_prev


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def sample_loop(diffusion, model, shape, step, *, y=None, steps=None, rng=None, seed=None, cfg_scale: float = 1.0,
                num_classes: int | None = None, progress: bool = False, clip_denoised: bool = False,
                return_intermediates: bool = False, noise=None, guidance_min_t: int = 0):
    """x_T ~ N(0, I) → x_0 on the model's device (an array of ``shape``), one ``step``
    (``AncestralStep()`` or ``DDIMStep(eta)``) per kept step, from the last to the first.

    ``steps``: None (every step of the diffusion) or a respacing (int K, "ddimN", list, comma
    string; the authors use K = 250, no clipping).  Noise comes from a NumPy Generator (``rng``, or
    ``seed``), so a seed fixes the samples on any device; ``noise`` gives x_T instead.
    ``cfg_scale`` ≠ 1 turns on classifier-free guidance, at the steps whose original timestep is at
    least ``guidance_min_t`` (below it scale 1: one plain model call; a guidance interval cut at the
    low-noise end, where guidance amplifies the leftover noise).  ``y`` None uses the null label when the
    model has ``num_classes``.  ``return_intermediates``: also a dict of lists "x" (x_T first),
    "pred_x0", and "t" (the original steps).
    """
    chain = diffusion.for_sampling(steps)
    draws = generator(rng, seed)
    shape = tuple(int(s) for s in shape)
    device, dtype = device_and_dtype(model, noise)
    xp = backend.get_array_module(device)
    labels = labels_of(y, shape[0])
    if labels is None:
        if cfg_scale != 1.0:
            raise ValueError("classifier-free guidance (cfg_scale != 1) needs class labels y")
        null_label = null_label_of(model, num_classes)
        if null_label is not None:
            labels = np.full(shape[0], null_label, dtype=np.int64)

    def gaussian():
        return xp.asarray(draws.standard_normal(shape).astype(dtype))

    if noise is None:
        x = gaussian()
    else:
        x = data_of(noise)
        if tuple(x.shape) != shape:
            raise ValueError(f"noise has shape {tuple(x.shape)}, expected {shape}")
    trajectory = {"x": [x], "pred_x0": [], "t": []}
    indices = range(chain.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=step.name)
    with no_grad(), evaluation_mode(model):
        for i in indices:
            t = np.full(shape[0], i, dtype=np.int64)
            scale = cfg_scale if chain.timestep_map[i] >= guidance_min_t else 1.0
            output = model_output(chain, model, x, t, labels, scale, num_classes)
            out = chain.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_output=output)
            x = step(chain, x, t, out, gaussian)
            if return_intermediates:
                trajectory["x"].append(x)
                trajectory["pred_x0"].append(out["pred_x0"].data)
                trajectory["t"].append(int(chain.timestep_map[i]))
    return (x, trajectory) if return_intermediates else x


# --------------------------------------------------------------------------------------------
# DDIM inversion
# --------------------------------------------------------------------------------------------
def ddim_reverse_step(diffusion, model, x, t, y=None, clip_denoised: bool = False, cfg_scale: float = 1.0,
                      num_classes: int | None = None):
    """One DDIM inversion step, the inverse of the η = 0 step at index t: from x at level ᾱ' = ᾱ_{t−1}
    to level ᾱ_t, x ← √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂ with x̂_0 = (x − √(1 − ᾱ') ε̂)/√ᾱ' and ε̂ = ε̂(x, t)
    (the model is evaluated at the input, the usual DDIM-inversion approximation).
    (IDDPM's helper of this name steps from ᾱ_t to ᾱ_{t+1} instead.)"""
    x = data_of(x)
    t = diffusion.check_timesteps(t, x.shape[0])
    with no_grad(), evaluation_mode(model):
        output = model_output(diffusion, model, x, t, labels_of(y, x.shape[0]), cfg_scale, num_classes)
    eps = output.data[:, :x.shape[1]]
    xp = backend.array_module_of(x)
    at = diffusion.at(t, x)
    alpha_bar, alpha_bar_prev = at(diffusion.alphas_cumprod), at(diffusion.alphas_cumprod_prev)
    pred_x0 = (x - xp.sqrt(1 - alpha_bar_prev) * eps) / xp.sqrt(alpha_bar_prev)
    if clip_denoised:
        pred_x0 = xp.clip(pred_x0, -1, 1)
    return xp.sqrt(alpha_bar) * pred_x0 + xp.sqrt(1 - alpha_bar) * eps


def ddim_reverse_loop(diffusion, model, x0, y=None, steps=None, clip_denoised: bool = False,
                      cfg_scale: float = 1.0, num_classes: int | None = None, progress: bool = False):
    """DDIM inversion x_0 → x_T on the spacing ``steps``: ``ddim_sample_loop(noise=x_T)`` with the
    same steps gives x_0 back up to the step-size error of the approximation."""
    chain = diffusion.for_sampling(steps)
    x = data_of(x0)
    labels = labels_of(y, x.shape[0])
    if labels is None and null_label_of(model, num_classes) is not None:
        labels = np.full(x.shape[0], null_label_of(model, num_classes), dtype=np.int64)
    indices = range(chain.num_timesteps)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="DDIM inversion")
    for i in indices:
        x = ddim_reverse_step(chain, model, x, np.full(x.shape[0], i, dtype=np.int64), labels,
                              clip_denoised, cfg_scale, num_classes)
    return x


# --------------------------------------------------------------------------------------------
# images from a trained model
# --------------------------------------------------------------------------------------------
def generate(diffusion, model, labels, *, sampler: str = "ddpm", steps: int = 250, seed: int = 0,
             cfg_scale: float = 1.0, eta: float = 0.0, batch_size: int = 256, progress: bool = False,
             clip_denoised: bool = False, first_batch: int = 0, variance: str = "learned",
             guidance_min_t: int = 0) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as a NumPy array, one per label, reproducible from ``seed``.

    ``sampler`` "ddpm" (ancestral; ``eta`` must stay 0) or "ddim" (with ``eta``).  Batch b draws
    its noise from default_rng([seed, b]), so the same seed (and batch size) gives the same images
    whatever else ran before.  ``first_batch``: the index b of the first batch (for batches drawn
    elsewhere, sampling_workers.py).  ``clip_denoised``: clip x̂_0 to [-1, 1] at every step.
    ``variance``: the DDPM step's σ² ("learned" or "posterior", ``AncestralStep``); ``guidance_min_t``:
    guidance only at original timesteps ≥ it (``sample_loop``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "ddpm" and eta != 0:
        raise ValueError(f"eta={eta} applies to the DDIM sampler only; use sampler='ddim' or leave eta at 0")
    if sampler == "ddim" and variance != "learned":
        raise ValueError(f"variance={variance!r} applies to the DDPM sampler only; use sampler='ddpm' or leave it at 'learned'")
    if not int(guidance_min_t) >= 0:
        raise ValueError(f"guidance_min_t must be zero or positive, got {guidance_min_t}")
    step = AncestralStep(variance) if sampler == "ddpm" else DDIMStep(eta)
    labels = np.asarray(labels, dtype=np.int64)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for b, start in enumerate(range(0, len(labels), batch_size), start=first_batch):
            y = labels[start:start + batch_size]
            shape = (len(y), model.in_channels, model.input_size, model.input_size)
            images = sample_loop(diffusion, model, shape, step, y=y, steps=steps, rng=np.random.default_rng([seed, b]),
                                 cfg_scale=cfg_scale, progress=progress, clip_denoised=clip_denoised,
                                 guidance_min_t=int(guidance_min_t))
            chunks.append(backend.to_numpy(getattr(images, "data", images)))
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)
