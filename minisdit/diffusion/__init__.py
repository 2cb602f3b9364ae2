"""DDPM for SDiT (docs/DESIGN.md §4): beta schedules and respacing (schedules.py), the Gaussian
diffusion with learned-range variance and its hybrid loss (gaussian.py, losses.py), the fused
training op (fused_ops.py) the samplers (samplers.py) and
``generate`` over forked CPU workers (sampling_workers.py)."""
from .fused_ops import (EpsilonMSE, epsilon_mse, epsilon_mse_backward_reference, epsilon_mse_reference, fused_q_sample,
                        q_sample_reference, squared_error_reference)
from .gaussian import GaussianDiffusion, SpacedDiffusion
from .losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl, vb_bits_per_dim
from .samplers import SAMPLERS, VARIANCES, AncestralStep, DDIMStep, ddim_sigma, generate
from .sampling_workers import generate_in_workers, progress_line
from .schedules import BETA_SCHEDULES, get_beta_schedule, respaced_betas, space_timesteps

__all__ = ["GaussianDiffusion", "SpacedDiffusion", "space_timesteps", "get_beta_schedule", "BETA_SCHEDULES",
           "respaced_betas", "normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood",
           "vb_bits_per_dim", "EpsilonMSE", "epsilon_mse", "fused_q_sample", "q_sample_reference",
           "squared_error_reference", "epsilon_mse_reference", "epsilon_mse_backward_reference", "generate",
           "generate_in_workers", "progress_line",
           "SAMPLERS", "AncestralStep", "DDIMStep", "ddim_sigma"]
