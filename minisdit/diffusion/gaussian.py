"""Gaussian diffusion: DDPM with learned variance ("learned range"), IDDPM semantics (DESIGN.md §4).

Forward process, β_t for t = 0..T−1, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s:

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)            x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),  β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),
    μ̃_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t) · x_0 + (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t) · x_t      (ᾱ_{−1} = 1)

Reverse process p(x_{t−1} | x_t) = N(μ_θ, σ²_t I): the model predicts ε̂ and v,
x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂, μ_θ = μ̃_t(x̂_0, x_t) and
log σ²_t = f log β_t + (1 − f) log β̃_t with f = (v + 1)/2 (v is not clamped; log β̃_0 is
replaced by log β̃_1 because β̃_0 = 0).

Loss per sample ("hybrid"): mean_{C,H,W} (ε − ε̂)² + L_vb, where L_vb (ε̂ detached, so only v learns
from it) is KL(q(x_{t−1}|x_t,x_0) ‖ p(x_{t−1}|x_t)) / ln 2 averaged over C·H·W for t > 0 and the
discretised Gaussian decoder NLL −log p(x_0 | x_1) / ln 2 averaged over C·H·W at t = 0.

Respacing to the kept steps t_0 < ... < t_{K−1}: β'_i = 1 − ᾱ_{t_i} / ᾱ_{t_{i−1}} (ᾱ before the first
kept step = 1), so the respaced chain has the same ᾱ at the kept steps; the model still receives
the original t_i.  Every method's ``t`` indexes this diffusion's own steps (0..K−1 after
respacing); ``timestep_map[t]`` is what the model sees.

The training hot path runs minisdit/kernels/ddpm_loss.cu on CuPy arrays and the NumPy references below on
NumPy arrays: x_t comes from ``fused_q_sample`` (one elementwise kernel; x_t needs no gradient), and
the ε-MSE from the Function ``EpsilonMSE`` (an elementwise kernel for (ε̂ − ε)², the array module's
per-sample mean, and a hand-written backward kernel).  Schedules are float64 NumPy arrays; the
per-sample coefficients are read from copies cast to the data's dtype and kept on the data's device
(made once per device and dtype), so a step copies only its t to the device.
"""
from __future__ import annotations

import contextlib
import math
import re

import numpy as np

from ..autograd import backend
from ..autograd import functional as F
from ..autograd.tensor import Tensor, as_tensor, no_grad
from .fused_ops import _per_sample_column, epsilon_mse, fused_q_sample

BETA_SCHEDULES = ("linear", "cosine")
LOSSES = ("hybrid", "mse")
MSE_WEIGHTINGS = ("uniform", "truncated-snr")
FIXED_VARIANCES = ("large", "small")


# --------------------------------------------------------------------------------------------
# noise schedules
# --------------------------------------------------------------------------------------------
def linear_beta_schedule(num_timesteps: int) -> np.ndarray:
    """β linear from 1e-4 to 0.02 at 1000 steps; both ends scale with 1000/T for other T (IDDPM)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_beta_schedule(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """IDDPM's cosine schedule: ᾱ(s) = cos²((s + 0.008)/1.008 · π/2), β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999)."""
    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def get_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown beta_schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}")


# --------------------------------------------------------------------------------------------
# respacing
# --------------------------------------------------------------------------------------------
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def _parse_section_counts(section_counts) -> list[int] | tuple[str, int]:
    """section_counts as a list of ints, or ("ddim", N) for "ddimN"; one clear error for anything else."""
    def bad_input():
        return ValueError("section_counts must be an int, a list, a comma string like '10,15' or 'ddimN'; "
                          f"got {section_counts!r}")

    def is_integer(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

    if isinstance(section_counts, str):
        text = section_counts.strip()
        is_ddim = text.startswith("ddim")
        parts = [text[len("ddim"):]] if is_ddim else text.split(",")
        if not all(_INTEGER_TEXT.fullmatch(part.strip()) for part in parts):
            raise bad_input()
        counts = [int(part) for part in parts]
        return ("ddim", counts[0]) if is_ddim else counts
    if is_integer(section_counts):
        return [int(section_counts)]
    if isinstance(section_counts, (list, tuple, np.ndarray)) and all(is_integer(count) for count in section_counts):
        return [int(count) for count in section_counts]
    raise bad_input()


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The steps kept when respacing ``num_timesteps`` steps, by IDDPM's rule (sorted list).

    ``section_counts`` is an int K (one section), a list of counts, a comma string ("10,15,20"), or
    "ddimN": the steps range(0, T, s) for the smallest integer stride s giving exactly N steps.
    The T steps are cut into len(counts) sections of T // n steps (the remainder goes one each to
    the first sections); a section of `size` steps keeping `count` of them takes
    start + round(cur) for cur = 0, frac, 2 frac, ... (accumulated in float), with
    frac = (size − 1)/(count − 1) (1 when count ≤ 1).  For K = 250 of 1000: round(i · 999/249).
    """
    section_counts = _parse_section_counts(section_counts)
    if isinstance(section_counts, tuple):  # ("ddim", N)
        desired = section_counts[1]
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"no integer stride gives exactly {desired} of {num_timesteps} steps; pick another ddimN")
    if not section_counts or any(count < 1 for count in section_counts):
        raise ValueError(f"section counts must be positive integers, got {section_counts}")
    base_size, remainder = divmod(num_timesteps, len(section_counts))
    kept, start = [], 0
    for section, count in enumerate(section_counts):
        size = base_size + (1 if section < remainder else 0)
        if count > size:
            raise ValueError(f"cannot keep {count} steps of a section of {size}; ask for at most {size}")
        frac = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += frac
        start += size
    return sorted(set(kept))


# --------------------------------------------------------------------------------------------
# Gaussian log-densities used by L_vb (written with differentiable ops)
# --------------------------------------------------------------------------------------------
def _as_tensors(*values):
    reference = next((v for v in values if isinstance(v, Tensor)), None)
    if reference is None:
        reference = Tensor(values[0])
    return tuple(as_tensor(v, like=reference) for v in values)


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def normal_kl(mean1, log_var1, mean2, log_var2) -> Tensor:
    """KL(N(μ1, σ1²) ‖ N(μ2, σ2²)) elementwise, in nats:
    ½ (−1 + log σ2² − log σ1² + σ1²/σ2² + (μ1 − μ2)²/σ2²).  Inputs broadcast."""
    mean1, log_var1, mean2, log_var2 = _as_tensors(mean1, log_var1, mean2, log_var2)
    return 0.5 * (-1.0 + log_var2 - log_var1 + F.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * F.exp(-log_var2))


def approx_standard_normal_cdf(x) -> Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³)))  (max error 1.8e-4; the one DDPM/IDDPM use)."""
    (x,) = _as_tensors(x)
    return 0.5 * (1.0 + F.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> Tensor:
    """log P(x) elementwise for data x in [−1, 1] quantised to 256 levels under N(mean, e^{2 log_scale}).

    P(x) = Φ((x − μ + 1/255)/σ) − Φ((x − μ − 1/255)/σ); the bin is open below for x < −0.999
    (P = Φ(upper)) and open above for x > 0.999 (P = 1 − Φ(lower)); each log's argument is clamped
    at 1e-12.  Φ is the tanh approximation.  Differentiable in ``means`` and ``log_scales``.
    """
    x, means, log_scales = _as_tensors(x, means, log_scales)
    centred = x - means
    inverse_std = F.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inverse_std * (centred + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inverse_std * (centred - 1.0 / 255.0))
    log_cdf_upper = F.log(F.maximum(cdf_upper, 1e-12))
    log_one_minus_cdf_lower = F.log(F.maximum(1.0 - cdf_lower, 1e-12))
    log_bin = F.log(F.maximum(cdf_upper - cdf_lower, 1e-12))
    x_values = x.data
    return F.where(x_values < -0.999, log_cdf_upper, F.where(x_values > 0.999, log_one_minus_cdf_lower, log_bin))


def _mean_over_pixels(x: Tensor) -> Tensor:
    return F.mean(x, axis=tuple(range(1, x.ndim)))


# --------------------------------------------------------------------------------------------
# helpers for models, generators and time steps
# --------------------------------------------------------------------------------------------
def _generator(rng=None, seed=None) -> np.random.Generator:
    if rng is not None and seed is not None:
        raise ValueError("pass either rng or seed, not both")
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(seed if rng is None else rng)


@contextlib.contextmanager
def _evaluation_mode(model):
    """Sample with the model in eval mode (no label dropout), then restore its mode."""
    was_training = getattr(model, "training", False)
    if was_training and hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)


def _model_device_and_dtype(model, noise=None):
    device = getattr(model, "device", "cpu")
    if noise is not None:
        return backend.device_of(_data(noise)), _data(noise).dtype
    return device, np.dtype(getattr(model, "dtype", np.float32))


def _labels(y, batch: int):
    """Class labels as a NumPy int64 array (N,) (an int is repeated); None stays None."""
    if y is None:
        return None
    labels = np.asarray(backend.to_numpy(_data(y)) if backend.is_gpu_array(_data(y)) else _data(y))
    if labels.ndim == 0:
        labels = np.full(batch, int(labels))
    if labels.shape != (batch,):
        raise ValueError(f"y must hold one class label per sample, shape ({batch},), got {labels.shape}")
    return labels.astype(np.int64)


def _num_classes(model, num_classes):
    if num_classes is not None:
        return int(num_classes)
    found = getattr(model, "num_classes", None)
    return None if found is None else int(found)


# --------------------------------------------------------------------------------------------
# the diffusion
# --------------------------------------------------------------------------------------------
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
                 mse_weighting: str = "uniform", max_mse_weight: float = 30.0):
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

        # schedules cast to a dtype on a device: {(name, device, dtype): (float64 source, copy)}
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

    def _for_sampling(self, steps) -> "GaussianDiffusion":
        if steps is None or (isinstance(steps, (int, np.integer)) and int(steps) == self.num_timesteps):
            return self
        return self.respaced(space_timesteps(self.num_timesteps, steps))

    # ----- small helpers -----
    def _check_timesteps(self, t, batch: int) -> np.ndarray:
        """t as a NumPy int64 array (N,) of step indices in [0, num_timesteps)."""
        raw = _data(t)
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

    def _schedule(self, name: str, like):
        """The schedule ``self.<name>`` (float64, host) cast to ``like``'s dtype on ``like``'s device.

        Made once per (device, dtype) and kept, so that a sampling or training step indexes it where
        the data lives instead of copying coefficients to the device.  The copy is remade if the
        attribute is replaced by another array."""
        source = getattr(self, name)
        key = (name, backend.device_of(like), np.dtype(like.dtype))
        cached = self._schedule_copies.get(key)
        if cached is None or cached[0] is not source:
            copy = backend.array_module_of(like).asarray(source.astype(like.dtype))
            cached = self._schedule_copies[key] = (source, copy)
        return cached[1]

    def _steps_on_device_of(self, t: np.ndarray, like):
        """t (NumPy int64) on ``like``'s device.  The last copy is kept, so the dozen coefficients of
        one step share one small transfer; it is reused only when the values of t are the same."""
        if not backend.is_gpu_array(like):
            return t
        last = self._last_device_steps
        if last is None or last[0].shape != t.shape or not np.array_equal(last[0], t):
            last = self._last_device_steps = (t.copy(), backend.array_module_of(like).asarray(t))
        return last[1]

    def _per_sample(self, name: str, t: np.ndarray, like):
        """self.<name>[t] (N,) in ``like``'s dtype on its device."""
        return self._schedule(name, like)[self._steps_on_device_of(t, like)]

    def _coefficient(self, name: str, t: np.ndarray, like):
        """self.<name>[t] as (N, 1, ..., 1) in ``like``'s dtype and on its device."""
        return _per_sample_column(self._per_sample(name, t, like), like.ndim)

    def _call_model(self, model, x, t: np.ndarray, y) -> Tensor:
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

    # ----- forward process -----
    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (no gradient); returns the kind (array or Tensor) of x0."""
        x0_data, noise_data = _data(x0), _data(noise)
        t = self._check_timesteps(t, x0_data.shape[0])
        a = self._per_sample("sqrt_alphas_cumprod", t, x0_data)
        b = self._per_sample("sqrt_one_minus_alphas_cumprod", t, x0_data)
        x_t = fused_q_sample(x0_data, noise_data, a, b)
        return Tensor(x_t) if isinstance(x0, Tensor) else x_t

    def q_posterior_mean_variance(self, x0, x_t, t):
        """(μ̃_t, β̃_t, log β̃_t clipped) of q(x_{t−1} | x_t, x_0); the variances as (N, 1, ..., 1)."""
        x0, x_t = _data(x0), _data(x_t)
        t = self._check_timesteps(t, x0.shape[0])
        mean = (self._coefficient("posterior_mean_coef1", t, x0) * x0
                + self._coefficient("posterior_mean_coef2", t, x0) * x_t)
        variance = self._coefficient("posterior_variance", t, x0)
        log_variance = self._coefficient("posterior_log_variance_clipped", t, x0)
        return mean, variance, log_variance

    # ----- reverse process -----
    def predict_x0(self, x_t, t, eps):
        """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂ (a Tensor when eps is one, differentiable in eps)."""
        like = _data(x_t)
        t = self._check_timesteps(t, like.shape[0])
        return (self._coefficient("sqrt_recip_alphas_cumprod", t, like) * x_t
                - self._coefficient("sqrt_recipm1_alphas_cumprod", t, like) * eps)

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (√(1/ᾱ_t) x_t − x̂_0) / √(1/ᾱ_t − 1)."""
        like = _data(x_t)
        t = self._check_timesteps(t, like.shape[0])
        return ((self._coefficient("sqrt_recip_alphas_cumprod", t, like) * x_t - x0)
                / self._coefficient("sqrt_recipm1_alphas_cumprod", t, like))

    def _p_mean_variance_from_parts(self, eps: Tensor, v: Tensor | None, x_t, t: np.ndarray, clip_denoised: bool) -> dict:
        """μ_θ, σ², log σ², x̂_0 from ε̂ and v (Tensors): log σ² = f log β_t + (1 − f) log β̃_t, f = (v+1)/2."""
        x_t = _data(x_t)
        if self.learn_sigma:
            max_log = self._coefficient("log_betas", t, x_t)
            min_log = self._coefficient("posterior_log_variance_clipped", t, x_t)
            fraction = (v + 1.0) / 2.0
            log_variance = fraction * max_log + (1.0 - fraction) * min_log
        else:
            log_variance = Tensor(self._coefficient("fixed_log_variance", t, x_t))
        pred_x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            pred_x0 = F.where(pred_x0.data > 1, 1.0, F.where(pred_x0.data < -1, -1.0, pred_x0))
        mean = (self._coefficient("posterior_mean_coef1", t, x_t) * pred_x0
                + self._coefficient("posterior_mean_coef2", t, x_t) * x_t)
        return {"mean": mean, "variance": F.exp(log_variance), "log_variance": log_variance,
                "pred_x0": pred_x0, "eps": eps}

    def _split_output(self, output: Tensor, channels: int):
        if not self.learn_sigma:
            return output, None
        eps, v = F.split(output, [channels, channels], axis=1)
        return eps, v

    def p_mean_variance(self, model, x_t, t, y=None, clip_denoised: bool = False, cfg_scale: float = 1.0,
                        num_classes: int | None = None, model_output=None) -> dict:
        """p(x_{t−1} | x_t) = N(μ_θ, σ²): dict of Tensors "mean", "variance", "log_variance",
        "pred_x0", "eps" (differentiable in the model output when no guidance is used)."""
        x_data = _data(x_t)
        t = self._check_timesteps(t, x_data.shape[0])
        if model_output is None:
            model_output = self._guided_or_plain_output(model, x_data, t, _labels(y, x_data.shape[0]),
                                                        cfg_scale, num_classes)
        eps, v = self._split_output(model_output, x_data.shape[1])
        return self._p_mean_variance_from_parts(eps, v, x_data, t, clip_denoised)

    # ----- classifier-free guidance -----
    def guided_model_output(self, model, x, t, y, cfg_scale: float, num_classes: int | None = None) -> Tensor:
        """Classifier-free guidance: the model runs on [x, x] with labels [y, ∅] (∅ = num_classes);
        ε = ε_∅ + s (ε_y − ε_∅) on channels [0, C), v from the conditional half.  Sampling only
        (no gradient); always runs both halves, even for s = 1."""
        x = _data(x)
        batch, channels = x.shape[0], x.shape[1]
        t = self._check_timesteps(t, batch)
        labels = _labels(y, batch)
        null_label = _num_classes(model, num_classes)
        if null_label is None:
            raise ValueError("classifier-free guidance needs the null label: pass num_classes= "
                             "or give the model a num_classes attribute")
        if labels is None:
            raise ValueError("classifier-free guidance needs class labels y")
        xp = backend.array_module_of(x)
        doubled = self._call_model(model, xp.concatenate([x, x], axis=0), np.concatenate([t, t]),
                                   np.concatenate([labels, np.full(batch, null_label, dtype=np.int64)])).data
        conditional, unconditional = doubled[:batch], doubled[batch:]
        eps = unconditional[:, :channels] + cfg_scale * (conditional[:, :channels] - unconditional[:, :channels])
        return Tensor(xp.concatenate([eps, conditional[:, channels:]], axis=1))

    def _guided_or_plain_output(self, model, x, t, labels, cfg_scale, num_classes) -> Tensor:
        if cfg_scale == 1.0:
            return self._call_model(model, x, t, labels)
        return self.guided_model_output(model, x, t, labels, cfg_scale, num_classes)

    # ----- training -----
    def vb_terms_bpd(self, model_output, x0, x_t, t) -> Tensor:
        """L_vb per sample in bits/dim, with ε̂ detached (gradients reach only v):
        t > 0: mean_{C,H,W} KL(q(x_{t−1}|x_t,x_0) ‖ p(x_{t−1}|x_t)) / ln 2;
        t = 0: mean_{C,H,W} −log p(x_0|x_1) / ln 2 (discretised Gaussian decoder).  No clipping of x̂_0."""
        x0, x_t = _data(x0), _data(x_t)
        t = self._check_timesteps(t, x0.shape[0])
        model_output = model_output if isinstance(model_output, Tensor) else Tensor(model_output)
        eps, v = self._split_output(model_output, x0.shape[1])
        return self._vb_from_parts(eps.detach(), v, x0, x_t, t)

    def _vb_from_parts(self, eps: Tensor, v: Tensor | None, x0, x_t, t: np.ndarray) -> Tensor:
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self._p_mean_variance_from_parts(eps, v, x_t, t, clip_denoised=False)
        is_first = t == 0
        terms = []
        if not is_first.all():
            kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
            terms.append(_mean_over_pixels(kl) / math.log(2.0))
        if is_first.any():
            nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
            terms.append(_mean_over_pixels(nll) / math.log(2.0))
        if len(terms) == 1:
            return terms[0]
        kl_bits, nll_bits = terms
        condition = self._steps_on_device_of(t, x0) == 0
        return F.where(condition, nll_bits, kl_bits)

    def training_losses(self, model, x0, t, noise=None, y=None, rng=None) -> dict:
        """The DDPM loss for a batch x_0 at step indices t (N,).

        x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (ε drawn from ``rng`` unless given); the model predicts
        [ε̂, v].  Returns a dict:
          "loss": Tensor scalar, mean_n(mse_n + vb_n) ("hybrid") or mean_n mse_n ("mse");
          "mse": array (N,) of mse_n on x0's device (the model's), in the model output's dtype, detached;
          "vb": (hybrid only) array (N,) of vb_n in bits/dim, likewise on the device, detached;
          "t": the steps, a NumPy int64 array (N,).
        "mse" and "vb" stay on the device so that no step waits for a copy; fetch them for logging
        together with the loss (e.g. one ``backend.to_numpy`` of a stacked array).
        """
        x0_data = _data(x0)
        if x0_data.ndim < 2:
            raise ValueError(f"x0 must be a batch (N, C, ...), got shape {x0_data.shape}")
        batch = x0_data.shape[0]
        t = self._check_timesteps(t, batch)
        xp = backend.array_module_of(x0_data)
        if noise is None:
            noise = xp.asarray(_generator(rng).standard_normal(x0_data.shape).astype(x0_data.dtype))
        noise = _data(noise)
        if backend.device_of(noise) != backend.device_of(x0_data):
            noise = backend.to_device(noise, backend.device_of(x0_data))
        x_t = self.q_sample(x0_data, t, noise)
        output = self._call_model(model, x_t, t, _labels(y, batch))
        eps, v = self._split_output(output, x0_data.shape[1])
        mse = epsilon_mse(eps, noise)
        terms = {"mse": mse.data, "t": t}
        per_sample = mse
        if self.mse_weighting != "uniform":
            weights = self.mse_weights(t).astype(mse.data.dtype)
            per_sample = mse * Tensor(backend.to_device(weights, backend.device_of(mse.data)))
        if self.loss == "hybrid":
            vb = self._vb_from_parts(eps.detach(), v, x0_data, x_t, t)
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
        """
        t = np.asarray(t)
        if self.mse_weighting == "uniform":
            return np.ones(t.shape)
        alpha_bar = self.alphas_cumprod[t]
        inverse_snr = (1.0 - alpha_bar) / alpha_bar
        return np.clip(inverse_snr, 1.0, self.max_mse_weight)

    # ----- ancestral sampling -----
    def p_sample_loop(self, model, shape, y=None, steps=None, rng=None, seed=None, cfg_scale: float = 1.0,
                      num_classes: int | None = None, progress: bool = False, clip_denoised: bool = False,
                      return_intermediates: bool = False, noise=None):
        """Ancestral sampling x_{T} ~ N(0, I) → x_0 on the model's device (an array of ``shape``).

        For i = K−1..0: x ← μ_θ(x, t_i) + σ_{t_i} z, z ~ N(0, I), with no noise at the last step.
        ``steps``: None (every step of this diffusion) or a respacing (int K, "ddimN", list, comma
        string; the authors use K = 250, no clipping).  Noise comes from a NumPy Generator
        (``rng``, or ``seed``), so a seed fixes the samples on any device.  ``cfg_scale`` ≠ 1 turns
        on classifier-free guidance.  ``y`` None uses the null label when the model has
        ``num_classes``.  ``return_intermediates``: also a dict of lists "x" (x_T first) and
        "pred_x0", and "t" (the original steps).
        """
        return self._sample(model, shape, y, steps, rng, seed, cfg_scale, num_classes, progress, clip_denoised,
                            return_intermediates, noise, eta=None)

    # ----- DDIM -----
    def ddim_sample_loop(self, model, shape, y=None, steps=None, rng=None, seed=None, cfg_scale: float = 1.0,
                         num_classes: int | None = None, progress: bool = False, clip_denoised: bool = False,
                         return_intermediates: bool = False, noise=None, eta: float = 0.0):
        """DDIM sampling on the same spacing: with ᾱ = ᾱ_{t_i}, ᾱ' = ᾱ before it,
        σ = η √((1 − ᾱ')/(1 − ᾱ)) √(1 − ᾱ/ᾱ'),
        x ← √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z (no noise at the last step); η = 0 is deterministic
        given the starting noise.  Arguments as ``p_sample_loop``."""
        if eta < 0:
            raise ValueError(f"eta must be non-negative, got {eta}")
        return self._sample(model, shape, y, steps, rng, seed, cfg_scale, num_classes, progress, clip_denoised,
                            return_intermediates, noise, eta=float(eta))

    def _sample(self, model, shape, y, steps, rng, seed, cfg_scale, num_classes, progress, clip_denoised,
                return_intermediates, noise, eta):
        diffusion = self._for_sampling(steps)
        generator = _generator(rng, seed)
        shape = tuple(int(s) for s in shape)
        device, dtype = _model_device_and_dtype(model, noise)
        xp = backend.get_array_module(device)
        labels = _labels(y, shape[0])
        if labels is None:
            null_label = _num_classes(model, num_classes)
            if cfg_scale != 1.0:
                raise ValueError("classifier-free guidance (cfg_scale != 1) needs class labels y")
            if null_label is not None:
                labels = np.full(shape[0], null_label, dtype=np.int64)

        def gaussian():
            return xp.asarray(generator.standard_normal(shape).astype(dtype))

        if noise is None:
            x = gaussian()
        else:
            x = _data(noise)
            if tuple(x.shape) != shape:
                raise ValueError(f"noise has shape {tuple(x.shape)}, expected {shape}")
        trajectory = {"x": [x], "pred_x0": [], "t": []}
        indices = range(diffusion.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc="DDPM" if eta is None else "DDIM")
        with no_grad(), _evaluation_mode(model):
            for i in indices:
                t = np.full(shape[0], i, dtype=np.int64)
                out = diffusion.p_mean_variance(model, x, t, labels, clip_denoised, cfg_scale, num_classes)
                if eta is None:
                    x = out["mean"].data
                    if i > 0:
                        x = x + xp.exp(0.5 * out["log_variance"].data) * gaussian()
                else:
                    x = diffusion._ddim_step(x, t, out, eta, gaussian)
                if return_intermediates:
                    trajectory["x"].append(x)
                    trajectory["pred_x0"].append(out["pred_x0"].data)
                    trajectory["t"].append(int(diffusion.timestep_map[i]))
        return (x, trajectory) if return_intermediates else x

    def _ddim_step(self, x, t: np.ndarray, out: dict, eta: float, gaussian):
        pred_x0 = out["pred_x0"].data
        eps = self.predict_eps_from_x0(x, t, pred_x0)  # equals ε̂ unless x̂_0 was clipped
        alpha_bar = self._coefficient("alphas_cumprod", t, x)
        alpha_bar_prev = self._coefficient("alphas_cumprod_prev", t, x)
        xp = backend.array_module_of(x)
        sigma = eta * xp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * xp.sqrt(1 - alpha_bar / alpha_bar_prev)
        x_prev = pred_x0 * xp.sqrt(alpha_bar_prev) + xp.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        if eta > 0 and t[0] > 0:
            x_prev = x_prev + sigma * gaussian()
        return x_prev

    def ddim_reverse_sample(self, model, x, t, y=None, clip_denoised: bool = False, cfg_scale: float = 1.0,
                            num_classes: int | None = None):
        """One DDIM inversion step, the inverse of the η = 0 step at index t: from x at level ᾱ' = ᾱ_{t−1}
        to level ᾱ_t, x ← √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂ with x̂_0 = (x − √(1 − ᾱ') ε̂)/√ᾱ' and ε̂ = ε̂(x, t)
        (the model is evaluated at the input, the usual DDIM-inversion approximation).
        (IDDPM's helper of this name steps from ᾱ_t to ᾱ_{t+1} instead.)"""
        x = _data(x)
        t = self._check_timesteps(t, x.shape[0])
        with no_grad(), _evaluation_mode(model):
            output = self._guided_or_plain_output(model, x, t, _labels(y, x.shape[0]), cfg_scale, num_classes)
        eps = output.data[:, :x.shape[1]]
        xp = backend.array_module_of(x)
        alpha_bar = self._coefficient("alphas_cumprod", t, x)
        alpha_bar_prev = self._coefficient("alphas_cumprod_prev", t, x)
        pred_x0 = (x - xp.sqrt(1 - alpha_bar_prev) * eps) / xp.sqrt(alpha_bar_prev)
        if clip_denoised:
            pred_x0 = xp.clip(pred_x0, -1, 1)
        return xp.sqrt(alpha_bar) * pred_x0 + xp.sqrt(1 - alpha_bar) * eps

    def ddim_reverse_sample_loop(self, model, x0, y=None, steps=None, clip_denoised: bool = False,
                                 cfg_scale: float = 1.0, num_classes: int | None = None, progress: bool = False):
        """DDIM inversion x_0 → x_T on the spacing ``steps``: ``ddim_sample_loop(noise=x_T)`` with the
        same steps gives x_0 back up to the step-size error of the approximation."""
        diffusion = self._for_sampling(steps)
        x = _data(x0)
        labels = _labels(y, x.shape[0])
        if labels is None and _num_classes(model, num_classes) is not None:
            labels = np.full(x.shape[0], _num_classes(model, num_classes), dtype=np.int64)
        indices = range(diffusion.num_timesteps)
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc="DDIM inversion")
        for i in indices:
            x = diffusion.ddim_reverse_sample(model, x, np.full(x.shape[0], i, dtype=np.int64), labels,
                                              clip_denoised, cfg_scale, num_classes)
        return x


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that keeps only the steps ``use_timesteps`` of ``base`` (IDDPM respacing).

    β'_i = 1 − ᾱ_{t_i} / ᾱ_{t_{i−1}} with ᾱ before the first kept step = 1, so ᾱ'_i = ᾱ_{t_i}; the
    learned range then interpolates between log β'_i and log β̃'_i.  ``timestep_map[i]`` is the
    original step t_i that the model receives.
    """

    def __init__(self, base: GaussianDiffusion, use_timesteps):
        kept = sorted({int(s) for s in use_timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= base.num_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty set of steps in [0, {base.num_timesteps}), got {kept[:5]}...")
        previous_alpha_bar, betas = 1.0, []
        for step in kept:
            betas.append(1.0 - base.alphas_cumprod[step] / previous_alpha_bar)
            previous_alpha_bar = base.alphas_cumprod[step]
        super().__init__(learn_sigma=base.learn_sigma, loss=base.loss, fixed_variance=base.fixed_variance,
                         betas=np.array(betas))
        self.beta_schedule = base.beta_schedule
        self.base_num_timesteps = base.num_timesteps
        self.use_timesteps = kept
        self.timestep_map = base.timestep_map[np.array(kept, dtype=np.int64)]
