"""The densities of the variational bound (docs/DESIGN.md §4): the Gaussian KL, the discretised
Gaussian decoder likelihood, and L_vb per sample in bits per dimension.  Written with
differentiable ops, so that the learned variance trains through them."""
from __future__ import annotations

import math

from ..autograd import functional as F
from ..autograd.tensor import Tensor
from .arguments import as_tensors


def normal_kl(mean1, log_var1, mean2, log_var2) -> Tensor:
    """KL(N(μ1, σ1²) ‖ N(μ2, σ2²)) elementwise, in nats:
    ½ (−1 + log σ2² − log σ1² + σ1²/σ2² + (μ1 − μ2)²/σ2²).  Inputs broadcast."""
    mean1, log_var1, mean2, log_var2 = as_tensors(mean1, log_var1, mean2, log_var2)
    return 0.5 * (-1.0 + log_var2 - log_var1 + F.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * F.exp(-log_var2))


def approx_standard_normal_cdf(x) -> Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³)))  (max error 1.8e-4; the one DDPM/IDDPM use)."""
    (x,) = as_tensors(x)
    return 0.5 * (1.0 + F.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> Tensor:
    """log P(x) elementwise for data x in [−1, 1] quantised to 256 levels under N(mean, e^{2 log_scale}).

    P(x) = Φ((x − μ + 1/255)/σ) − Φ((x − μ − 1/255)/σ); the bin is open below for x < −0.999
    (P = Φ(upper)) and open above for x > 0.999 (P = 1 − Φ(lower)); each log's argument is clamped
    at 1e-12.  Φ is the tanh approximation.  Differentiable in ``means`` and ``log_scales``.
    """
    x, means, log_scales = as_tensors(x, means, log_scales)
    centred = x - means
    inverse_std = F.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inverse_std * (centred + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inverse_std * (centred - 1.0 / 255.0))
    log_cdf_upper = F.log(F.maximum(cdf_upper, 1e-12))
    log_one_minus_cdf_lower = F.log(F.maximum(1.0 - cdf_lower, 1e-12))
    log_bin = F.log(F.maximum(cdf_upper - cdf_lower, 1e-12))
    x_values = x.data
    return F.where(x_values < -0.999, log_cdf_upper, F.where(x_values > 0.999, log_one_minus_cdf_lower, log_bin))


def mean_over_pixels(x: Tensor) -> Tensor:
    """The per-sample mean over every axis but the first."""
    return F.mean(x, axis=tuple(range(1, x.ndim)))


def vb_bits_per_dim(x0, posterior_mean, posterior_log_variance, mean, log_variance, first_step,
                    first_step_here) -> Tensor:
    """L_vb per sample (N,) in bits per dimension, for q(x_{t−1}|x_t,x_0) = N(posterior) and
    p(x_{t−1}|x_t) = N(mean, e^{log_variance}):

        t > 0:  mean_{C,H,W} KL(q ‖ p) / ln 2
        t = 0:  mean_{C,H,W} −log p(x_0 | x_1) / ln 2      (the discretised Gaussian decoder)

    ``first_step`` says where t = 0 as a NumPy bool array (N,) (to skip a term no sample needs),
    ``first_step_here`` the same on x0's device (to pick per sample without a copy).
    """
    terms = []
    if not first_step.all():
        kl = normal_kl(posterior_mean, posterior_log_variance, mean, log_variance)
        terms.append(mean_over_pixels(kl) / math.log(2.0))
    if first_step.any():
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance)
        terms.append(mean_over_pixels(nll) / math.log(2.0))
    if len(terms) == 1:
        return terms[0]
    kl_bits, nll_bits = terms
    return F.where(first_step_here, nll_bits, kl_bits)
