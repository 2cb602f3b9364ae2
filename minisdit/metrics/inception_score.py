"""Inception Score from a classifier's class probabilities.

    IS = exp( E_x KL( p(y|x) ‖ p(y) ) ),   p(y) = E_x p(y|x),
    KL(p ‖ q) = Σ_y p_y (log p_y − log q_y)   (terms with p_y = 0 contribute 0).

It is 1 when every sample gets the same prediction and at most K (the number of classes) when the
predictions are confident and the classes balanced.  With ``splits`` > 1 the samples are cut into
that many consecutive parts, the score is computed on each, and the mean and standard deviation
over the parts are returned (the convention of the original Inception Score code).
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend


def _score(probabilities: np.ndarray) -> float:
    marginal = probabilities.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = probabilities * (np.log(probabilities) - np.log(marginal))
    kl = np.where(probabilities > 0, terms, 0.0).sum(axis=1)
    return float(np.exp(kl.mean()))


def inception_score(probabilities, splits: int = 1) -> tuple[float, float]:
    """(mean, std) of the Inception Score of class probabilities (n, K) over ``splits`` parts."""
    probabilities = np.asarray(backend.to_numpy(probabilities), dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"inception_score expects probabilities of shape (n, K), got {probabilities.shape}")
    if np.any(probabilities < 0) or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("inception_score expects rows of probabilities (non-negative, summing to 1); apply softmax to logits first")
    if not 1 <= splits <= probabilities.shape[0]:
        raise ValueError(f"splits must be between 1 and the number of samples ({probabilities.shape[0]}), got {splits}")
    scores = [_score(part) for part in np.array_split(probabilities, splits)]
    return float(np.mean(scores)), float(np.std(scores))
