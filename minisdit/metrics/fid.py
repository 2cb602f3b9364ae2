"""Fréchet distance between two Gaussians fitted to network features (FID).

With feature means μ1, μ2 and covariances Σ1, Σ2 of two image sets,

    d² = ||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}).

Only the trace of the square root is needed, and it is computed without forming (Σ1 Σ2)^{1/2}:
with A = Σ1^{1/2} (symmetric), Σ1 Σ2 = A (A Σ2 A) A^{-1} is similar to the symmetric positive
semi-definite S = A Σ2 A (for singular Σ1 too: AB and BA share their non-zero eigenvalues), so

    Tr (Σ1 Σ2)^{1/2} = Σ_i sqrt(λ_i(S)).

Two symmetric eigen-decompositions give this with no complex arithmetic and no iteration that can
fail to converge.  An eigen-decomposition resolves eigenvalues only down to its round-off level,
about d·ε·max|λ| (ε the float64 machine epsilon); below that a computed λ_i (possibly negative)
is indistinguishable from 0, and its square root (≈ 1e-8 for a round-off 1e-16) would add pure
noise, so such eigenvalues are set to 0 -- this keeps singular covariances (fewer samples than
dimensions) exact.  The covariance is the unbiased one (divided by n − 1), as in the reference FID code.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend


def _resolved(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues below the decomposition's round-off level d·ε·max|λ| (or negative) set to 0."""
    floor = eigenvalues.size * np.finfo(np.float64).eps * np.abs(eigenvalues).max(initial=0.0)
    return np.where(eigenvalues > floor, eigenvalues, 0.0)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root V diag(sqrt(λ)) Vᵀ of a symmetric PSD matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(_resolved(eigenvalues))) @ eigenvectors.T


def _check_gaussian(mu, sigma, which: str):
    mu = np.asarray(backend.to_numpy(mu), dtype=np.float64)
    sigma = np.asarray(backend.to_numpy(sigma), dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"frechet_distance: mu{which} must be (d,) and sigma{which} (d, d); got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"frechet_distance: mu{which} or sigma{which} has NaN or infinite entries; check the features")
    return mu, (sigma + sigma.T) / 2  # symmetrise away round-off asymmetry of the accumulated covariance


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) for two Gaussians (float64 throughout)."""
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "1")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: the two Gaussians have different dimensions {mu1.size} and {mu2.size}")
    root1 = _symmetric_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(_resolved(eigenvalues)).sum()
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


class FeatureStatistics:
    """Streaming mean and covariance of feature vectors, in float64.

    ``update(features)`` takes a batch (n, d) on the CPU or the GPU.  Batches are merged with
    Chan et al.'s pairwise rule instead of a raw sum of outer products, which loses digits when
    the mean is large next to the spread: with counts n_a, n_b, means m_a, m_b and centred scatter
    matrices M_a = Σ (x − m_a)(x − m_a)ᵀ (likewise M_b), the union has n = n_a + n_b and

        m = m_a + (m_b − m_a) n_b / n,   M = M_a + M_b + (m_b − m_a)(m_b − m_a)ᵀ n_a n_b / n.

    covariance = M / (n − 1).
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self._mean = None
        self._scatter = None

    def update(self, features) -> "FeatureStatistics":
        xp = backend.array_module_of(features)
        features = xp.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise ValueError(f"FeatureStatistics.update expects features of shape (n, d), got {tuple(features.shape)}")
        if self.dim is None:
            self.dim = int(features.shape[1])
        if features.shape[1] != self.dim:
            raise ValueError(f"FeatureStatistics.update: features have {features.shape[1]} dimensions, expected {self.dim}")
        count = int(features.shape[0])
        if count == 0:
            return self
        batch_mean = features.mean(axis=0)
        centred = features - batch_mean
        batch_mean = backend.to_numpy(batch_mean)
        batch_scatter = backend.to_numpy(centred.T @ centred)
        if self.count == 0:
            self._mean, self._scatter = batch_mean, batch_scatter
        else:
            total = self.count + count
            delta = batch_mean - self._mean
            self._scatter = self._scatter + batch_scatter + np.outer(delta, delta) * (self.count * count / total)
            self._mean = self._mean + delta * (count / total)
        self.count += count
        return self

    @classmethod
    def from_features(cls, features) -> "FeatureStatistics":
        return cls().update(features)

    @classmethod
    def from_moments(cls, mean, covariance, count: int) -> "FeatureStatistics":
        """Statistics restored from a saved mean, covariance and count (they can be updated further)."""
        mean = np.asarray(mean, dtype=np.float64)
        covariance = np.asarray(covariance, dtype=np.float64)
        if mean.ndim != 1 or covariance.shape != (mean.size, mean.size) or count < 2:
            raise ValueError(f"from_moments needs mean (d,), covariance (d, d) and count >= 2; got {mean.shape}, {covariance.shape}, {count}")
        statistics = cls(mean.size)
        statistics.count, statistics._mean, statistics._scatter = int(count), mean.copy(), covariance * (count - 1)
        return statistics

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("FeatureStatistics has seen no features yet; call update() first")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        return self._scatter / (self.count - 1)

    def frechet_distance(self, other: "FeatureStatistics") -> float:
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance)


def fid_from_features(features1, features2) -> float:
    """FID between two feature sets (n1, d) and (n2, d)."""
    return FeatureStatistics.from_features(features1).frechet_distance(FeatureStatistics.from_features(features2))
