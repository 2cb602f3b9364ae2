"""Optimisers: AdamW (PyTorch's exact update), an exponential moving average of the weights, and
global-norm gradient clipping.

Every update runs in place on the parameter's own arrays with the parameter's own array module
(NumPy or CuPy), so nothing moves between devices during training.  State dicts are flat
``{name: NumPy array}`` dicts (0-d arrays for scalars): they round-trip through ``np.savez`` and
safetensors, no pickle involved.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import backend
from .tensor import Tensor


def _parameter_list(params, who: str) -> list:
    """Accept a Module (its ``parameters()``), or any iterable of Tensors; refuse an empty one."""
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    params = list(params)
    if not params:
        raise ValueError(f"{who} got an empty parameter list; pass model.parameters()")
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{who} takes Tensors (model.parameters()), got a {type(p).__name__}")
    return params


def _to_parameter(value, parameter: Tensor, name: str):
    """A checkpoint array as a copy on the parameter's device and dtype, after a shape check."""
    value = np.asarray(backend.to_numpy(value))
    if value.shape != parameter.shape:
        raise ValueError(f"shape mismatch for {name}: checkpoint has {value.shape}, parameter has {parameter.shape}")
    return backend.to_device(value.astype(parameter.dtype), parameter.device)


class AdamW:
    """Adam with decoupled weight decay, step for step the update of ``torch.optim.AdamW``.

    For each parameter θ with gradient g (parameters whose ``.grad`` is None are skipped, decay
    included), at its step t = 1, 2, ...:

        θ ← θ (1 − lr·λ)                                  (decoupled weight decay)
        m ← β1 m + (1 − β1) g                             (first moment)
        v ← β2 v + (1 − β2) g²                            (second moment)
        θ ← θ − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)

    with m = v = 0 before the first step.  The last line is Adam's bias-corrected step
    m̂ / (sqrt(v̂) + ε), m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t), arranged as PyTorch does it
    (ε is added after the square-root bias correction).  ``lr`` may be changed between steps
    (warm-up schedules set ``optimizer.lr``).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        if lr < 0:
            raise ValueError(f"AdamW needs lr >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW needs two betas in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"AdamW needs eps >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"AdamW needs weight_decay >= 0, got {weight_decay}")
        self.params = _parameter_list(params, "AdamW")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(float(b) for b in betas), float(eps), float(weight_decay)
        # per parameter, as in PyTorch: created at its first update
        self.steps: list[int] = [0] * len(self.params)
        self.exp_avg: list = [None] * len(self.params)
        self.exp_avg_sq: list = [None] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.shape != p.data.shape:
                raise ValueError(f"parameter {i} has shape {p.data.shape} but its gradient {g.shape}")
            xp = backend.array_module_of(p.data)
            if self.exp_avg[i] is None:
                self.exp_avg[i] = xp.zeros_like(p.data)
                self.exp_avg_sq[i] = xp.zeros_like(p.data)
            self.steps[i] += 1
            t = self.steps[i]
            m, v = self.exp_avg[i], self.exp_avg_sq[i]

            if self.weight_decay:
                p.data *= 1.0 - self.lr * self.weight_decay
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            step_size = self.lr / (1.0 - beta1 ** t)
            denominator = xp.sqrt(v) / math.sqrt(1.0 - beta2 ** t) + self.eps
            p.data -= step_size * (m / denominator)

    # ----- checkpoints -----
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Hyperparameters and, for every updated parameter i, ``state.{i}.step`` (int64),
        ``state.{i}.exp_avg`` and ``state.{i}.exp_avg_sq`` (the parameter's dtype), all NumPy."""
        state = OrderedDict([
            ("lr", np.array(self.lr)), ("beta1", np.array(self.betas[0])), ("beta2", np.array(self.betas[1])),
            ("eps", np.array(self.eps)), ("weight_decay", np.array(self.weight_decay)),
            ("num_params", np.array(len(self.params), dtype=np.int64)),
        ])
        for i in range(len(self.params)):
            if self.exp_avg[i] is None:
                continue
            state[f"state.{i}.step"] = np.array(self.steps[i], dtype=np.int64)
            state[f"state.{i}.exp_avg"] = backend.to_numpy(self.exp_avg[i]).copy()
            state[f"state.{i}.exp_avg_sq"] = backend.to_numpy(self.exp_avg_sq[i]).copy()
        return state

    def load_state_dict(self, state: dict):
        """Restore what ``state_dict`` saved (hyperparameters included, as PyTorch does)."""
        if "num_params" not in state:
            raise KeyError("not an AdamW state dict (it has no 'num_params'); pass what AdamW.state_dict() returned")
        count = int(state["num_params"])
        if count != len(self.params):
            raise ValueError(f"optimizer state is for {count} parameters but this optimizer has {len(self.params)}; "
                             "build it with the same model.parameters()")
        self.lr = float(state["lr"])
        self.betas = (float(state["beta1"]), float(state["beta2"]))
        self.eps, self.weight_decay = float(state["eps"]), float(state["weight_decay"])
        for i, p in enumerate(self.params):
            if f"state.{i}.step" not in state:
                self.steps[i], self.exp_avg[i], self.exp_avg_sq[i] = 0, None, None
                continue
            self.steps[i] = int(state[f"state.{i}.step"])
            self.exp_avg[i] = _to_parameter(state[f"state.{i}.exp_avg"], p, f"state.{i}.exp_avg")
            self.exp_avg_sq[i] = _to_parameter(state[f"state.{i}.exp_avg_sq"], p, f"state.{i}.exp_avg_sq")
        return self


class EMA:
    """Exponential moving average of the weights (the "EMA model" that diffusion models sample with).

    For every parameter θ a shadow copy θ̄ starts equal to θ and, at each ``update()``,

        θ̄ ← decay · θ̄ + (1 − decay) · θ.

    Built from a Module, its state dict uses the model's parameter names, so
    ``model.load_state_dict(ema.state_dict())`` also works; built from a list, the names are
    "0", "1", ...
    """

    def __init__(self, model_or_params, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        if hasattr(model_or_params, "named_parameters"):
            named = list(model_or_params.named_parameters())
            if not named:
                raise ValueError("EMA got a model without parameters")
        else:
            named = [(str(i), p) for i, p in enumerate(_parameter_list(model_or_params, "EMA"))]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.data.copy() for p in self.params]

    def update(self):
        for shadow, p in zip(self.shadow, self.params):
            shadow *= self.decay
            shadow += (1.0 - self.decay) * p.data

    def _targets(self, model_or_params) -> list:
        if model_or_params is None:
            return self.params
        if hasattr(model_or_params, "named_parameters"):
            own = dict(model_or_params.named_parameters())
            if set(own) == set(self.names):
                return [own[name] for name in self.names]
            targets = list(own.values())
        else:
            targets = list(model_or_params)
        if len(targets) != len(self.shadow):
            raise ValueError(f"EMA holds {len(self.shadow)} parameters but the target has {len(targets)}")
        return targets

    def copy_to(self, model_or_params=None):
        """Write the averaged weights into ``model_or_params`` (default: the tracked parameters)."""
        for name, shadow, p in zip(self.names, self.shadow, self._targets(model_or_params)):
            if shadow.shape != p.data.shape:
                raise ValueError(f"shape mismatch for {name}: EMA has {shadow.shape}, target has {p.data.shape}")
            if backend.device_of(shadow) != p.device:
                shadow = backend.to_device(shadow, p.device)
            p.data = shadow.astype(p.dtype, copy=True)
            p.grad = None

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((name, backend.to_numpy(shadow).copy()) for name, shadow in zip(self.names, self.shadow))

    def load_state_dict(self, state: dict):
        missing = [name for name in self.names if name not in state]
        unexpected = [name for name in state if name not in self.names]
        if missing or unexpected:
            raise KeyError(f"EMA state does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.shadow = [_to_parameter(state[name], p, name) for name, p in zip(self.names, self.params)]
        return self


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    ‖g‖ = sqrt(Σ_p Σ_i g_{p,i}²) over every parameter with a gradient; when ‖g‖ > max_norm each
    gradient is multiplied by max_norm / (‖g‖ + 1e-6) (PyTorch's ``clip_grad_norm_``).  Returns
    ‖g‖ before clipping.  Gradients are replaced, not scaled in place, because autograd may hand
    the same array to two parameters (the backward of ``a + b``).
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm needs max_norm > 0, got {max_norm}")
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    total = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in with_grad))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for p in with_grad:
            p.grad = p.grad * p.grad.dtype.type(scale)
    return total
