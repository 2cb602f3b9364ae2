"""Surrogate gradients: a smooth stand-in for the derivative of the spike function.

A spiking neuron fires s = Theta(x) with x = h - v_threshold and Theta the Heaviside step
(Theta(0) = 1).  Its true derivative is zero almost everywhere, so training replaces dTheta/dx by
the derivative g'(x) of a smooth "primitive" g that rises from 0 to 1 around x = 0.  The formulas
and default alphas are SpikingJelly's (``spikingjelly.activation_based.surrogate``); a larger
alpha makes g steeper and g' narrower and taller.

Each surrogate has
  * ``primitive(x)``: g(x), used in place of Theta when a neuron runs with ``spiking=False`` (a
    smooth network whose gradient can be checked against finite differences);
  * ``derivative(x)``: g'(x), the surrogate gradient used in every backward pass;
  * ``id`` and ``name``: select the variant of ``minisdit/kernels/lif.cu`` (the ``SURROGATE`` define).

Calling a surrogate on a Tensor gives the spikes with the surrogate gradient attached:
``ATan()(x)`` is Theta(x) forward and g'(x) backward (``spiking=False``: g(x) forward).
"""
from __future__ import annotations

import math

from ..autograd import backend
from ..autograd.tensor import Function, Tensor


def _erf(x):
    """The error function on NumPy or CuPy arrays (NumPy itself has none)."""
    if backend.is_gpu_array(x):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    import scipy.special

    return scipy.special.erf(x)


def _sigmoid(x):
    """1 / (1 + e^-x), split by sign so that exp never overflows."""
    xp = backend.array_module_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class Surrogate:
    """Base class: a primitive g, its derivative g', and the kernel variant id.  Immutable."""

    id: int = -1
    name: str = ""
    default_alpha: float = 1.0

    def __init__(self, alpha: float | None = None):
        alpha = self.default_alpha if alpha is None else float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"{type(self).__name__} needs a finite alpha > 0, got {alpha}")
        object.__setattr__(self, "alpha", alpha)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; make a new one, e.g. {type(self).__name__}(alpha=...)")

    def primitive(self, x):
        raise NotImplementedError

    def derivative(self, x):
        raise NotImplementedError

    def heaviside(self, x):
        """Theta(x) = 1 where x >= 0, else 0, in the dtype of x."""
        return (x >= 0).astype(x.dtype)

    def __call__(self, x: Tensor, spiking: bool = True) -> Tensor:
        """Spikes Theta(x) (or g(x) when not spiking) with g'(x) as the backward."""
        return SurrogateSpike.apply(x, surrogate=self, spiking=spiking)

    def __repr__(self):
        return f"{type(self).__name__}(alpha={self.alpha})"

    def __eq__(self, other):
        return type(self) is type(other) and self.alpha == other.alpha

    def __hash__(self):
        return hash((type(self).__name__, self.alpha))


class ATan(Surrogate):
    """Arc tangent (the SDiT authors' choice, alpha = 2).

        g(x)  = arctan(pi alpha x / 2) / pi + 1/2
        g'(x) = (alpha / 2) / (1 + (pi alpha x / 2)^2)
    """

    id, name, default_alpha = 0, "ATan", 2.0

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def primitive(self, x):
        xp = backend.array_module_of(x)
        return xp.arctan(math.pi / 2 * self.alpha * x) / math.pi + 0.5

    def derivative(self, x):
        z = math.pi / 2 * self.alpha * x
        return self.alpha / 2 / (1 + z * z)


class Sigmoid(Surrogate):
    """Logistic sigmoid (SpikingJelly's default surrogate, alpha = 4).

        g(x)  = sigma(alpha x) = 1 / (1 + e^(-alpha x))
        g'(x) = alpha sigma(alpha x) (1 - sigma(alpha x))
    """

    id, name, default_alpha = 1, "Sigmoid", 4.0

    def __init__(self, alpha: float = 4.0):
        super().__init__(alpha)

    def primitive(self, x):
        return _sigmoid(self.alpha * x)

    def derivative(self, x):
        sigma = _sigmoid(self.alpha * x)
        return self.alpha * sigma * (1 - sigma)


class PiecewiseQuadratic(Surrogate):
    """Piecewise quadratic: a triangle-shaped gradient of width 2 / alpha (alpha = 1).

        g(x)  = 0                                  for x < -1/alpha
                -alpha^2 |x| x / 2 + alpha x + 1/2   for |x| <= 1/alpha
                1                                  for x > 1/alpha
        g'(x) = alpha - alpha^2 |x| for |x| <= 1/alpha, else 0
    """

    id, name, default_alpha = 2, "PiecewiseQuadratic", 1.0

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def primitive(self, x):
        xp = backend.array_module_of(x)
        a = self.alpha
        middle = -a * a / 2 * xp.abs(x) * x + a * x + 0.5
        return xp.where(x > 1 / a, 1.0, xp.where(x < -1 / a, 0.0, middle)).astype(x.dtype, copy=False)

    def derivative(self, x):
        xp = backend.array_module_of(x)
        a = self.alpha
        magnitude = xp.abs(x)
        return xp.where(magnitude > 1 / a, 0.0, a - a * a * magnitude).astype(x.dtype, copy=False)


class SoftSign(Surrogate):
    """Soft sign (alpha = 2).

        g(x)  = (alpha x / (1 + |alpha x|) + 1) / 2
        g'(x) = alpha / (2 (1 + |alpha x|)^2)
    """

    id, name, default_alpha = 3, "SoftSign", 2.0

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def primitive(self, x):
        xp = backend.array_module_of(x)
        ax = self.alpha * x
        return (ax / (1 + xp.abs(ax)) + 1) / 2

    def derivative(self, x):
        xp = backend.array_module_of(x)
        denominator = 1 + xp.abs(self.alpha * x)
        return self.alpha / (2 * denominator * denominator)


class Erf(Surrogate):
    """Gaussian error function (alpha = 2).

        g(x)  = erfc(-alpha x) / 2 = (1 + erf(alpha x)) / 2
        g'(x) = alpha / sqrt(pi) exp(-(alpha x)^2)
    """

    id, name, default_alpha = 4, "Erf", 2.0

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def primitive(self, x):
        return ((1 + _erf(self.alpha * x)) / 2).astype(x.dtype, copy=False)

    def derivative(self, x):
        xp = backend.array_module_of(x)
        ax = self.alpha * x
        return self.alpha / math.sqrt(math.pi) * xp.exp(-ax * ax)


SURROGATES = (ATan, Sigmoid, PiecewiseQuadratic, SoftSign, Erf)


def check_surrogate(surrogate) -> Surrogate:
    """Return ``surrogate`` if it is a surrogate instance; otherwise raise a one-line error."""
    if isinstance(surrogate, type) and issubclass(surrogate, Surrogate):
        raise TypeError(f"surrogate must be an instance, e.g. {surrogate.__name__}(), not the class {surrogate.__name__}")
    if not isinstance(surrogate, Surrogate):
        names = ", ".join(f"{cls.__name__}()" for cls in SURROGATES)
        raise TypeError(f"surrogate must be one of minisdit.snn.surrogate's {names}; got {surrogate!r}")
    return surrogate


class SurrogateSpike(Function):
    """s = Theta(x), or g(x) when not ``spiking``;  dL/dx = g'(x) dL/ds in both cases."""

    surrogate: Surrogate
    spiking = True

    def forward(self, x):
        self.x = x
        return self.surrogate.heaviside(x) if self.spiking else self.surrogate.primitive(x)

    def backward(self, grad):
        return grad * self.surrogate.derivative(self.x)
