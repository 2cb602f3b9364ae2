"""Gradient checking: compare every hand-written backward with central differences, in float64.

``gradcheck(fn, inputs)`` builds the scalar loss L = <P, fn(inputs)> with a fixed random
projection P (a sum would hide errors that cancel across entries), runs the backward pass, and
compares the analytic gradient with

    dL/dx . d  ~  (L(x + eps d) - L(x - eps d)) / (2 eps)

for every coordinate direction d when the input is small, or for ``num_directions`` random unit
directions when it is large.  It returns a report with the worst entry and raises
``GradcheckError`` when the error exceeds ``atol + rtol * |numerical|`` (or is not finite).

``reference=`` takes the central differences of another function than ``fn``: one that computes
the same output differently (an O(L^2) definition of a recurrence, a neuron with its reset spikes
held fixed to model a detached reset), so that the backward of ``fn`` is checked against it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic and the numerical gradient disagree."""


@dataclass
class GradcheckReport:
    worst_input: int
    worst_entry: str
    analytic: float
    numerical: float
    abs_error: float
    checks: int

    def __str__(self):
        return (f"worst: input {self.worst_input} {self.worst_entry}: analytic {self.analytic:.10g} vs "
                f"numerical {self.numerical:.10g} (|error| {self.abs_error:.3g}, {self.checks} checks)")


def _as_float64_leaf(value) -> Tensor:
    data = value.data if isinstance(value, Tensor) else value
    data = data.astype(np.float64) if hasattr(data, "astype") else np.asarray(data, dtype=np.float64)
    return Tensor(data, requires_grad=True)


def gradcheck(fn, inputs, *, reference=None, eps: float = 1e-6, atol: float = 1e-7, rtol: float = 1e-5,
              max_dense: int = 64, num_directions: int = 8, check: tuple | None = None,
              seed: int = 0, raise_on_failure: bool = True) -> GradcheckReport:
    """Check the gradient of ``fn(*inputs)`` with respect to every input (or those in ``check``).

    ``fn`` maps Tensors to one Tensor; its backward gives the analytic gradient.  The numerical
    gradient is that of ``reference(*arrays)`` when given (float64 arrays in, an array or Tensor of
    ``fn``'s output shape out), else of ``fn``.  Inputs are copied to float64 leaves.  An input with
    at most ``max_dense`` entries is checked entry by entry; a larger one along random directions.
    """
    rng = np.random.default_rng(seed)
    leaves = [_as_float64_leaf(x) for x in inputs]
    indices = range(len(leaves)) if check is None else check
    xp = leaves[0].xp

    output = fn(*leaves)
    projection = xp.asarray(rng.standard_normal(output.shape))

    def evaluate(arrays):
        if reference is not None:
            value = reference(*arrays)
            return value.data if isinstance(value, Tensor) else value
        with no_grad():
            return fn(*[Tensor(a) for a in arrays]).data

    def loss_of(arrays) -> float:
        return float((evaluate(arrays) * projection).sum())

    if reference is not None:
        reference_shape = tuple(evaluate([leaf.data for leaf in leaves]).shape)
        if reference_shape != output.shape:
            raise ValueError(f"gradcheck's reference returned shape {reference_shape} but fn returned "
                             f"{output.shape}; both must compute the same output")

    loss = (output * Tensor(projection)).sum()
    loss.backward()

    worst = None
    checks = 0
    base = [leaf.data for leaf in leaves]
    for i in indices:
        analytic_grad = leaves[i].grad
        if analytic_grad is None:
            analytic_grad = xp.zeros_like(base[i])
        size = base[i].size
        if size <= max_dense:
            directions = []
            for flat in range(size):
                d = np.zeros(size)
                d[flat] = 1.0
                directions.append((f"entry {tuple(int(j) for j in np.unravel_index(flat, base[i].shape))}", d))
        else:
            directions = []
            for k in range(num_directions):
                d = rng.standard_normal(size)
                directions.append((f"random direction {k}", d / np.linalg.norm(d)))
        for label, direction in directions:
            d = xp.asarray(direction.reshape(base[i].shape))
            plus = list(base)
            minus = list(base)
            plus[i] = base[i] + eps * d
            minus[i] = base[i] - eps * d
            numerical = (loss_of(plus) - loss_of(minus)) / (2 * eps)
            analytic = float((analytic_grad * d).sum())
            error = abs(analytic - numerical)
            checks += 1
            allowed = atol + rtol * abs(numerical)
            excess = error / allowed
            if not np.isfinite(excess):
                excess = np.inf  # a NaN or infinite gradient is the worst failure, never a pass
            if worst is None or excess > worst[0]:
                worst = (excess, GradcheckReport(i, label, analytic, numerical, error, 0))
    report = worst[1]
    report.checks = checks
    if raise_on_failure and worst[0] > 1.0:
        raise GradcheckError(f"gradient check failed: {report}")
    return report


def gradcheck_module(module, inputs, forward=None, **options) -> GradcheckReport:
    """``gradcheck`` over (*inputs, *parameters of module).

    While it runs, the module's parameters are swapped for gradcheck's float64 leaves, so the
    module's own forward is differentiated with respect to every parameter.  ``forward(*inputs)``
    defaults to ``module(*inputs)``; pass it to supply non-differentiable arguments (t, y).
    """
    forward = forward or module
    inputs = list(inputs)
    owners = []
    for name, _ in module.named_parameters():
        *path, attribute = name.split(".")
        owner = module
        for step in path:
            owner = getattr(owner, step)
        owners.append((owner, attribute, getattr(owner, attribute)))

    def run(*values):
        try:
            for (owner, attribute, _), value in zip(owners, values[len(inputs):]):
                object.__setattr__(owner, attribute, value)
            return forward(*values[:len(inputs)])
        finally:
            for owner, attribute, original in owners:
                object.__setattr__(owner, attribute, original)

    return gradcheck(run, inputs + [original for _, _, original in owners], **options)
