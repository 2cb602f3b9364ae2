"""Noise schedules and respacing (docs/DESIGN.md §4): the β_t of a named schedule, the steps kept by
IDDPM's ``space_timesteps``, and the β' of the chain that keeps only those steps.

Every schedule is a float64 NumPy array over the steps t = 0..T−1.
"""
from __future__ import annotations

import math
import re

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


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
    """β_t, t = 0..num_timesteps−1, of the schedule ``name`` (one of BETA_SCHEDULES)."""
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


def respaced_betas(alphas_cumprod: np.ndarray, kept) -> np.ndarray:
    """β' of the chain keeping the steps t_0 < ... < t_{K−1}: β'_i = 1 − ᾱ_{t_i} / ᾱ_{t_{i−1}}, with
    ᾱ before the first kept step = 1, so that the respaced chain has ᾱ'_i = ᾱ_{t_i}."""
    previous_alpha_bar, betas = 1.0, []
    for step in kept:
        betas.append(1.0 - alphas_cumprod[step] / previous_alpha_bar)
        previous_alpha_bar = alphas_cumprod[step]
    return np.array(betas)
