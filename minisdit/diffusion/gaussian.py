"""Gaussian diffusion: DDPM with learned variance ("learned range"), IDDPM semantics (docs/DESIGN.md §4).

Forward process, β_t for t = 0..T−1, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s:

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)            x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),  β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),
    μ̃_t = coef1_t · x_0 + coef2_t · x_t,  coef1_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t),
                                          coef2_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)      (ᾱ_{−1} = 1)

Reverse process p(x_{t−1} | x_t) = N(μ_θ, σ²_t I): the model predicts ε̂ and v,
x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂, μ_θ = μ̃_t(x̂_0, x_t) and
log σ²_t = f log β_t + (1 − f) log β̃_t with f = (v + 1)/2 (v is not clamped; log β̃_0 is
replaced by log β̃_1 because β̃_0 = 0).

Loss per sample ("hybrid"): mean_{C,H,W} (ε − ε̂)² + L_vb (diffusion/losses.py), L_vb with ε̂
detached, so that only v learns from it.

Respacing (diffusion/schedules.py) keeps steps t_0 < ... < t_{K−1} with the same ᾱ; every method's
``t`` indexes this diffusion's own steps (0..K−1 after respacing) and ``timestep_map[t]`` is what
the model sees.  The samplers (DDPM, DDIM, guidance) are in diffusion/samplers.py; the methods
``p_sample_loop`` and ``ddim_sample_loop`` here call them.

The training hot path runs minisdit/kernels/ddpm_loss.cu on CuPy arrays (and on NumPy arrays inside
``kernels.runtime.cpu_kernels()``, as the command-line tools run), else the NumPy references
(diffusion/fused_ops.py): x_t from ``fused_q_sample`` (x_t needs no gradient) and the
ε-MSE from ``epsilon_mse``.  Schedules are float64 NumPy arrays; ``at(t, like)`` reads them at
steps t from copies cast to the data's dtype and kept on the data's device (made once per device
and dtype), so a step copies only its t to the device.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..autograd import functional as F
from ..autograd.tensor import Tensor
from . import samplers
from .arguments import data_of, generator, labels_of
from .fused_ops import _per_sample_column, epsilon_mse, fused_q_sample
from .losses import vb_bits_per_dim
from .schedules import get_beta_schedule, respaced_betas, space_timesteps

LOSSES = ("hybrid", "mse")
MSE_WEIGHTINGS = ("uniform", "truncated-snr", "min-snr")
MAX_MSE_WEIGHT = 10.0  # the default cap of the "truncated-snr" weights (docs/decisions.md: 30 until session 6)
MIN_SNR_GAMMA = 5.0  # γ of the "min-snr" weighting (Hang et al. 2023's default)
FIXED_VARIANCES = ("large", "small")


class GaussianDiffusion:
    """DDPM with ε-prediction and (by default) learned-range variance, IDDPM semantics.

    ``learn_sigma``: the model outputs (N, 2C, H, W) = [ε̂, v]; otherwise (N, C, H, W) = ε̂ with a
    fixed variance ("large": σ² = β_t with σ²_0 = β̃_1, IDDPM's default; "small": σ² = β̃_t).
    ``loss``: "hybrid" (ε-MSE + L_vb, needs learn_sigma) or "mse" (plain ε-MSE, needs a fixed
    variance); the default picks the one that fits ``learn_sigma``.
    ``betas``: an explicit β array instead of a named schedule (used by respacing).
    ``mse_weighting``: "uniform" (the authors' loss) or "truncated-snr" (see ``mse_weights``), with
    weights capped at ``max_mse_weight``.
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear", learn_sigma: bool = True,
                 loss: str | None = None, fixed_variance: str = "large", betas=None,
                 mse_weighting: str = "uniform", max_mse_weight: float = MAX_MSE_WEIGHT):
        if mse_weighting not in MSE_WEIGHTINGS:
            raise ValueError(f"unknown mse_weighting {mse_weighting!r}; choose one of {', '.join(MSE_WEIGHTINGS)}")
        if not max_mse_weight >= 1:
            raise ValueError(f"max_mse_weight must be at least 1 (weights start at 1), got {max_mse_weight}")
        self.mse_weighting, self.max_mse_weight = mse_weighting, float(max_mse_weight)
        if loss is None:
            loss = "hybrid" if learn_sigma else "mse"
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if loss == "hybrid" and not learn_sigma:
            raise ValueError("loss='hybrid' trains the variance through L_vb; use learn_sigma=True, or loss='mse'")
        if loss == "mse" and learn_sigma:
            raise ValueError("loss='mse' leaves the learned variance untrained; use loss='hybrid', or learn_sigma=False")
        if fixed_variance not in FIXED_VARIANCES:
            raise ValueError(f"unknown fixed_variance {fixed_variance!r}; choose one of {', '.join(FIXED_VARIANCES)}")
        if betas is None:
            if int(num_timesteps) < 1:
                raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")
            betas = get_beta_schedule(beta_schedule, int(num_timesteps))
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a non-empty 1-D array with every entry in (0, 1]")
        self.learn_sigma, self.loss, self.fixed_variance = bool(learn_sigma), loss, fixed_variance
        self.beta_schedule = beta_schedule
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(self.num_timesteps, dtype=np.int64)

        # the per-step arrays of the formulas above (float64, host), named as in IDDPM
        self.betas = betas
        self.log_betas = np.log(betas)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # q(x_{t-1} | x_t, x_0): β̃_t and the two mean coefficients
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0, so its log is replaced by log β̃_1 (with a single step there is no β̃_1: use log β_0)
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

        if fixed_variance == "large":
            large = np.append(first, betas[1:])
            self.fixed_log_variance = np.log(large)
        else:
            self.fixed_log_variance = self.posterior_log_variance_clipped

        # schedules cast to a dtype on a device: {(id(schedule), device, dtype): (schedule, copy)}
        self._schedule_copies = {}
        # the step indices t last copied to the device: (host t, device t)
        self._last_device_steps = None

    def __repr__(self):
        return (f"{type(self).__name__}(num_timesteps={self.num_timesteps}, learn_sigma={self.learn_sigma}, "
                f"loss={self.loss!r})")

    # ----- respacing -----
    def respaced(self, use_timesteps) -> "SpacedDiffusion":
        """This diffusion restricted to the kept steps ``use_timesteps`` (see ``space_timesteps``)."""
        return SpacedDiffusion(self, use_timesteps)

    def for_sampling(self, steps) -> "GaussianDiffusion":
        """The chain a sampler walks: this one for ``steps`` None (or all of them), else the respacing
        ``space_timesteps(num_timesteps, steps)``."""
        if steps is None or (isinstance(steps, (int, np.integer)) and int(steps) == self.num_timesteps):
            return self
        return self.respaced(space_timesteps(self.num_timesteps, steps))

    # ----- the per-step arrays at steps t, where the data lives -----
    def check_timesteps(self, t, batch: int) -> np.ndarray:
        """t as a NumPy int64 array (N,) of step indices in [0, num_timesteps)."""
        raw = data_of(t)
        t = np.asarray(backend.to_numpy(raw) if backend.is_gpu_array(raw) else raw)
        if t.ndim == 0:
            t = np.full(batch, t)
        if t.dtype.kind not in "iu":
            raise TypeError(f"t must hold integer step indices, got dtype {t.dtype}")
        if t.shape != (batch,):
            raise ValueError(f"t must hold one step per sample, shape ({batch},), got {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got values {t.min()}..{t.max()}")
        return t.astype(np.int64)

    def _schedule_like(self, schedule: np.ndarray, like):
        """``schedule`` (float64, host) cast to ``like``'s dtype on ``like``'s device.

        Made once per (schedule, device, dtype) and kept, so that a sampling or training step indexes
        it where the data lives instead of copying coefficients to the device; a schedule attribute
        replaced by another array gets its own copy."""
        key = (id(schedule), backend.device_of(like), np.dtype(like.dtype))
        cached = self._schedule_copies.get(key)
        if cached is None or cached[0] is not schedule:
            copy = backend.array_module_of(like).asarray(schedule.astype(like.dtype))
            cached = self._schedule_copies[key] = (schedule, copy)
        return cached[1]

    def _steps_like(self, t: np.ndarray, like):
        """t (NumPy int64) on ``like``'s device.  The last copy is kept, so the dozen coefficients of
        one step share one small transfer; it is reused only when the values of t are the same."""
        if not backend.is_gpu_array(like):
            return t
        last = self._last_device_steps
        if last is None or last[0].shape != t.shape or not np.array_equal(last[0], t):
            last = self._last_device_steps = (t.copy(), backend.array_module_of(like).asarray(t))
        return last[1]

    def values_at(self, t: np.ndarray, like):
        """A function schedule -> schedule[t] (N,) in ``like``'s dtype on ``like``'s device."""
        steps = self._steps_like(t, like)
        return lambda schedule: self._schedule_like(schedule, like)[steps]

    def at(self, t: np.ndarray, like):
        """A function schedule -> schedule[t] as an (N, 1, ..., 1) column that broadcasts over ``like``
        (its dtype, its device): ``at = self.at(t, x); at(self.betas) * x``."""
        values = self.values_at(t, like)
        return lambda schedule: _per_sample_column(values(schedule), like.ndim)

    # ----- the model -----
    def call_model(self, model, x, t: np.ndarray, y) -> Tensor:
        """The model's output for x at step indices t: it receives the original steps timestep_map[t]."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        output = model(x, self.timestep_map[t], y)
        output = output if isinstance(output, Tensor) else Tensor(output)
        expected = 2 * x.shape[1] if self.learn_sigma else x.shape[1]
        if output.ndim != x.ndim or output.shape[0] != x.shape[0] or output.shape[1] != expected \
                or output.shape[2:] != x.shape[2:]:
            what = "[ε, v] (learn_sigma=True)" if self.learn_sigma else "ε (learn_sigma=False)"
            raise ValueError(f"the model returned shape {output.shape}; expected {what} of shape "
                             f"{(x.shape[0], expected) + x.shape[2:]}; match the model's learn_sigma to the diffusion's")
        return output

    def split_output(self, output: Tensor, channels: int):
        """(ε̂, v) from the model output; v is None for a fixed variance."""
        if not self.learn_sigma:
            return output, None
        eps, v = F.split(output, [channels, channels], axis=1)
        return eps, v

    # ----- forward process -----
    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (no gradient); returns the kind (array or Tensor) of x0."""
        x0_data, noise_data = data_of(x0), data_of(noise)
        t = self.check_timesteps(t, x0_data.shape[0])
        at = self.values_at(t, x0_data)
        x_t = fused_q_sample(x0_data, noise_data, at(self.sqrt_alphas_cumprod), at(self.sqrt_one_minus_alphas_cumprod))
        return Tensor(x_t) if isinstance(x0, Tensor) else x_t

    def q_posterior_mean_variance(self, x0, x_t, t):
        """(μ̃_t, β̃_t, log β̃_t clipped) of q(x_{t−1} | x_t, x_0); the variances as (N, 1, ..., 1)."""
        x0, x_t = data_of(x0), data_of(x_t)
        t = self.check_timesteps(t, x0.shape[0])
        at = self.at(t, x0)
        mean = at(self.posterior_mean_coef1) * x0 + at(self.posterior_mean_coef2) * x_t
        return mean, at(self.posterior_variance), at(self.posterior_log_variance_clipped)

    # ----- reverse process -----
    def predict_x0(self, x_t, t, eps):
        """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂ (a Tensor when eps is one, differentiable in eps)."""
        like = data_of(x_t)
        at = self.at(self.check_timesteps(t, like.shape[0]), like)
        return at(self.sqrt_recip_alphas_cumprod) * x_t - at(self.sqrt_recipm1_alphas_cumprod) * eps

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (√(1/ᾱ_t) x_t − x̂_0) / √(1/ᾱ_t − 1)."""
        like = data_of(x_t)
        at = self.at(self.check_timesteps(t, like.shape[0]), like)
        return (at(self.sqrt_recip_alphas_cumprod) * x_t - x0) / at(self.sqrt_recipm1_alphas_cumprod)

    def model_log_variance(self, v: Tensor | None, t: np.ndarray, x_t):
        """log σ²_t: learned range f log β_t + (1 − f) log β̃_t with f = (v + 1)/2, or the fixed one."""
        at = self.at(t, x_t)
        if not self.learn_sigma:
            return Tensor(at(self.fixed_log_variance))
        fraction = (v + 1.0) / 2.0
        return fraction * at(self.log_betas) + (1.0 - fraction) * at(self.posterior_log_variance_clipped)

    def p_mean_variance_from_output(self, eps: Tensor, v: Tensor | None, x_t, t: np.ndarray,
                                    clip_denoised: bool = False) -> dict:
        """μ_θ = coef1_t x̂_0 + coef2_t x_t, σ², log σ², x̂_0 from ε̂ and v (Tensors)."""
        x_t = data_of(x_t)
        log_variance = self.model_log_variance(v, t, x_t)
        pred_x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            pred_x0 = F.where(pred_x0.data > 1, 1.0, F.where(pred_x0.data < -1, -1.0, pred_x0))
        at = self.at(t, x_t)
        mean = at(self.posterior_mean_coef1) * pred_x0 + at(self.posterior_mean_coef2) * x_t
        return {"mean": mean, "variance": F.exp(log_variance), "log_variance": log_variance,
                "pred_x0": pred_x0, "eps": eps}

    def p_mean_variance(self, model, x_t, t, y=None, clip_denoised: bool = False, model_output=None) -> dict:
        """p(x_{t−1} | x_t) = N(μ_θ, σ²): dict of Tensors "mean", "variance", "log_variance",
        "pred_x0", "eps", differentiable in the model output.  ``model_output`` (e.g. a guided one,
        see samplers.guided_model_output) replaces the call of the model."""
        x_data = data_of(x_t)
        t = self.check_timesteps(t, x_data.shape[0])
        if model_output is None:
            model_output = self.call_model(model, x_data, t, labels_of(y, x_data.shape[0]))
        eps, v = self.split_output(model_output, x_data.shape[1])
        return self.p_mean_variance_from_output(eps, v, x_data, t, clip_denoised)

    # ----- training -----
    def vb_terms_bpd(self, model_output, x0, x_t, t) -> Tensor:
        """L_vb per sample in bits/dim (diffusion/losses.py) with ε̂ detached, so that gradients reach
        only v.  No clipping of x̂_0."""
        x0, x_t = data_of(x0), data_of(x_t)
        t = self.check_timesteps(t, x0.shape[0])
        model_output = model_output if isinstance(model_output, Tensor) else Tensor(model_output)
        eps, v = self.split_output(model_output, x0.shape[1])
        return self._vb(eps.detach(), v, x0, x_t, t)

    def _vb(self, eps: Tensor, v: Tensor | None, x0, x_t, t: np.ndarray) -> Tensor:
        posterior_mean, _, posterior_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        model = self.p_mean_variance_from_output(eps, v, x_t, t)
        return vb_bits_per_dim(x0, posterior_mean, posterior_log_variance, model["mean"], model["log_variance"],
                               first_step=t == 0, first_step_here=self._steps_like(t, x0) == 0)

    def training_losses(self, model, x0, t, noise=None, y=None, rng=None) -> dict:
        """The DDPM loss for a batch x_0 at step indices t (N,).

        x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (ε drawn from ``rng`` unless given); the model predicts
        [ε̂, v].  Returns a dict:
          "loss": Tensor scalar, mean_n(λ_t mse_n + vb_n) ("hybrid") or mean_n λ_t mse_n ("mse");
          "mse": array (N,) of mse_n on x0's device (the model's), in the model output's dtype, detached;
          "vb": (hybrid only) array (N,) of vb_n in bits/dim, likewise on the device, detached;
          "t": the steps, a NumPy int64 array (N,).
        "mse" and "vb" stay on the device so that no step waits for a copy; fetch them for logging
        together with the loss (e.g. one ``backend.to_numpy`` of a stacked array).
        """
        x0_data = data_of(x0)
        if x0_data.ndim < 2:
            raise ValueError(f"x0 must be a batch (N, C, ...), got shape {x0_data.shape}")
        batch = x0_data.shape[0]
        t = self.check_timesteps(t, batch)
        xp = backend.array_module_of(x0_data)
        if noise is None:
            noise = xp.asarray(generator(rng).standard_normal(x0_data.shape).astype(x0_data.dtype))
        noise = data_of(noise)
        if backend.device_of(noise) != backend.device_of(x0_data):
            noise = backend.to_device(noise, backend.device_of(x0_data))
        x_t = self.q_sample(x0_data, t, noise)
        output = self.call_model(model, x_t, t, labels_of(y, batch))
        eps, v = self.split_output(output, x0_data.shape[1])
        mse = epsilon_mse(eps, noise)
        terms = {"mse": mse.data, "t": t}
        per_sample = mse
        if self.mse_weighting != "uniform":
            weights = self.mse_weights(t).astype(mse.data.dtype)
            per_sample = mse * Tensor(backend.to_device(weights, backend.device_of(mse.data)))
        if self.loss == "hybrid":
            vb = self._vb(eps.detach(), v, x0_data, x_t, t)
            terms["vb"] = vb.data
            per_sample = per_sample + vb
        terms["loss"] = F.mean(per_sample)
        return terms

    def mse_weights(self, t) -> np.ndarray:
        """λ_t for the ε-MSE of samples at steps t (a float64 NumPy array like t).

        "uniform": λ_t = 1.  "truncated-snr": λ_t = min(max(1/SNR_t, 1), max_mse_weight) with
        SNR_t = ᾱ_t/(1 − ᾱ_t).  Why: x̂_0 − x_0 = −(ε̂ − ε)/√SNR_t, so the x̂_0 error is the ε error
        divided by SNR_t, and λ_t·MSE_ε = max(MSE_ε, MSE_x̂0) (Salimans & Ho's "truncated SNR"),
        capped.  At low SNR the image is a small part of x_t, so plain ε-MSE hardly depends on the
        digit's shape or class, and a small model learns them slowly (docs/decisions.md measures it);
        this weighting gives those steps the weight of their x̂_0 error, at most ``max_mse_weight``.
        "min-snr": λ_t = min(SNR_t, γ)/SNR_t = min(1, γ/SNR_t), γ = 5 (Hang et al., "Min-SNR
        weighting"): the steps of little noise, whose ε error barely moves x̂_0, weigh less.
        """
        t = np.asarray(t)
        if self.mse_weighting == "uniform":
            return np.ones(t.shape)
        alpha_bar = self.alphas_cumprod[t]
        inverse_snr = (1.0 - alpha_bar) / alpha_bar
        if self.mse_weighting == "min-snr":
            return np.minimum(1.0, MIN_SNR_GAMMA * inverse_snr)
        return np.clip(inverse_snr, 1.0, self.max_mse_weight)

    # ----- sampling (diffusion/samplers.py) -----
    def guided_model_output(self, model, x, t, y, cfg_scale: float, num_classes: int | None = None) -> Tensor:
        """Classifier-free guidance; see ``samplers.guided_model_output``."""
        return samplers.guided_model_output(self, model, x, t, y, cfg_scale, num_classes)

    def p_sample_loop(self, model, shape, y=None, steps=None, rng=None, seed=None, cfg_scale: float = 1.0,
                      num_classes: int | None = None, progress: bool = False, clip_denoised: bool = False,
                      return_intermediates: bool = False, noise=None):
        """Ancestral (DDPM) sampling x_T ~ N(0, I) → x_0; see ``samplers.sample_loop`` for the arguments."""
        return samplers.sample_loop(self, model, shape, samplers.AncestralStep(), y=y, steps=steps, rng=rng,
                                    seed=seed, cfg_scale=cfg_scale, num_classes=num_classes, progress=progress,
                                    clip_denoised=clip_denoised, return_intermediates=return_intermediates,
                                    noise=noise)

    def ddim_sample_loop(self, model, shape, y=None, steps=None, rng=None, seed=None, cfg_scale: float = 1.0,
                         num_classes: int | None = None, progress: bool = False, clip_denoised: bool = False,
                         return_intermediates: bool = False, noise=None, eta: float = 0.0):
        """DDIM sampling with ``eta`` (0: deterministic given the noise); arguments as ``p_sample_loop``."""
        return samplers.sample_loop(self, model, shape, samplers.DDIMStep(eta), y=y, steps=steps, rng=rng,
                                    seed=seed, cfg_scale=cfg_scale, num_classes=num_classes, progress=progress,
                                    clip_denoised=clip_denoised, return_intermediates=return_intermediates,
                                    noise=noise)

    def ddim_reverse_sample(self, model, x, t, y=None, clip_denoised: bool = False, cfg_scale: float = 1.0,
                            num_classes: int | None = None):
        """One DDIM inversion step; see ``samplers.ddim_reverse_step``."""
        return samplers.ddim_reverse_step(self, model, x, t, y, clip_denoised, cfg_scale, num_classes)

    def ddim_reverse_sample_loop(self, model, x0, y=None, steps=None, clip_denoised: bool = False,
                                 cfg_scale: float = 1.0, num_classes: int | None = None, progress: bool = False):
        """DDIM inversion x_0 → x_T; see ``samplers.ddim_reverse_loop``."""
        return samplers.ddim_reverse_loop(self, model, x0, y, steps, clip_denoised, cfg_scale, num_classes, progress)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that keeps only the steps ``use_timesteps`` of ``base`` (IDDPM respacing).

    β'_i = 1 − ᾱ_{t_i} / ᾱ_{t_{i−1}} (``schedules.respaced_betas``), so ᾱ'_i = ᾱ_{t_i}; the
    learned range then interpolates between log β'_i and log β̃'_i.  ``timestep_map[i]`` is the
    original step t_i that the model receives.
    """

    def __init__(self, base: GaussianDiffusion, use_timesteps):
        kept = sorted({int(s) for s in use_timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= base.num_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty set of steps in [0, {base.num_timesteps}), got {kept[:5]}...")
        super().__init__(learn_sigma=base.learn_sigma, loss=base.loss, fixed_variance=base.fixed_variance,
                         betas=respaced_betas(base.alphas_cumprod, kept))
        self.beta_schedule = base.beta_schedule
        self.base_num_timesteps = base.num_timesteps
        self.use_timesteps = kept
        self.timestep_map = base.timestep_map[np.array(kept, dtype=np.int64)]
