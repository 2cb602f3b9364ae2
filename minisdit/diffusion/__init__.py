"""DDPM for SDiT (docs/DESIGN.md §4): beta schedules and respacing, the Gaussian diffusion with
learned-range variance and its hybrid loss, and the samplers."""
from .fused_ops import (EpsilonMSE, epsilon_mse, epsilon_mse_backward_reference, epsilon_mse_reference, fused_q_sample,
                        q_sample_reference, squared_error_reference)
from .gaussian import (BETA_SCHEDULES, GaussianDiffusion, SpacedDiffusion, approx_standard_normal_cdf,
                       discretized_gaussian_log_likelihood, get_beta_schedule, normal_kl, space_timesteps)
from .samplers import SAMPLERS, generate

__all__ = ["GaussianDiffusion", "SpacedDiffusion", "space_timesteps", "get_beta_schedule", "BETA_SCHEDULES",
           "normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "EpsilonMSE",
           "epsilon_mse", "fused_q_sample", "q_sample_reference", "squared_error_reference", "epsilon_mse_reference",
           "epsilon_mse_backward_reference", "generate", "SAMPLERS"]
