"""Optimisers: AdamW (PyTorch's exact update), an exponential moving average of the weights, and
global-norm gradient clipping.

Every update runs in place on the parameter's own arrays with the parameter's own array module
(NumPy or CuPy), so nothing moves between devices during training.  The parameters, gradients,
AdamW's moments and the EMA weights are flat buffers of one layout (autograd/flat.py), so a step
of the whole model is one call of ``adamw_step_reference`` (or, given ``fused``, of the one
kernel of minisdit/kernels/optim.cu), an EMA update one more, and clipping one reduction.  State dicts are flat
``{name: NumPy array}`` dicts (0-d arrays for scalars): they round-trip through ``np.savez`` and
safetensors, no pickle involved.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import backend
from .flat import FlatParameters
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


# NumPy evaluates ``adamw_step_reference`` one operation at a time, each over the whole array with
# a temporary as large; over a flat buffer of millions of entries those temporaries are fresh
# memory (page faults) and every pass leaves the cache.  Blocks of CPU_BLOCK entries (128 KiB of
# float32) keep the temporaries and the four operands in the L2 cache: an AdamW step of the
# ``small`` preset's 3.2 M parameters took 15.7 ms whole and 10.0 ms in blocks (one core), and
# the bits are the same, since every entry is updated on its own.
CPU_BLOCK = 1 << 15


def in_cpu_blocks(*arrays):
    """The flat NumPy ``arrays`` as matching slices of CPU_BLOCK entries; anything else (CuPy
    arrays, which one launch covers, or a parameter's n-d view) as it is."""
    first = arrays[0]
    if backend.is_gpu_array(first) or first.ndim != 1 or first.size <= CPU_BLOCK:
        return [arrays]
    return [tuple(a[start:start + CPU_BLOCK] for a in arrays) for start in range(0, first.size, CPU_BLOCK)]


def adamw_step_blocked(param, grad, exp_avg, exp_avg_sq, *hyperparameters) -> None:
    """``adamw_step_reference`` over CPU blocks (``in_cpu_blocks``); the same bits."""
    for block in in_cpu_blocks(param, grad, exp_avg, exp_avg_sq):
        adamw_step_reference(*block, *hyperparameters)


def ema_update_blocked(shadow, param, decay: float) -> None:
    """``ema_update_reference`` over CPU blocks (``in_cpu_blocks``); the same bits."""
    for block in in_cpu_blocks(shadow, param):
        ema_update_reference(*block, decay)


def adamw_step_reference(param, grad, exp_avg, exp_avg_sq, lr: float, beta1: float, beta2: float, eps: float,
                         weight_decay: float, step: int) -> None:
    """One AdamW step at step count ``step`` (t >= 1), in place on ``param``, ``exp_avg`` (m) and
    ``exp_avg_sq`` (v), in PyTorch's order of operations (the equations are AdamW's docstring).
    Every Python scalar meets a float32 array as float32, so the per-step numbers are rounded
    once: the kernel adamw_step (minisdit/kernels/optim.cu) receives exactly these."""
    xp = backend.array_module_of(param)
    if weight_decay:
        param *= 1.0 - lr * weight_decay
    exp_avg *= beta1
    exp_avg += (1.0 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1.0 - beta2) * (grad * grad)
    step_size = lr / (1.0 - beta1 ** step)
    denominator = xp.sqrt(exp_avg_sq) / math.sqrt(1.0 - beta2 ** step) + eps
    param -= step_size * (exp_avg / denominator)


def ema_update_reference(shadow, param, decay: float) -> None:
    """θ̄ ← decay · θ̄ + (1 − decay) · θ, in place on ``shadow``."""
    shadow *= decay
    shadow += (1.0 - decay) * param


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

    The parameters become views of one flat buffer (``self.flat``, autograd/flat.py), m and v are
    two more.  When every parameter has a gradient and all are at the same step t (every step of
    training; and ε > 0), the update is one call over the whole buffers; otherwise it runs parameter by
    parameter over the views.  ``fused`` (minisdit.kernels.optim.FUSED, which the trainer passes)
    supplies ``adamw_step``/``ema_update`` with the references' signatures that launch the kernels
    of minisdit/kernels/optim.cu where kernels run; without it, the references.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, fused=None):
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
        self.fused = fused
        self.flat = FlatParameters.of(self.params)
        self.exp_avg_buffer, self.exp_avg_sq_buffer = self.flat.zeros(), self.flat.zeros()
        self._exp_avg_views = self.flat.views(self.exp_avg_buffer)
        self._exp_avg_sq_views = self.flat.views(self.exp_avg_sq_buffer)
        # per parameter, as in PyTorch: created (a view of the zero buffers) at its first update
        self.steps: list[int] = [0] * len(self.params)
        self.exp_avg: list = [None] * len(self.params)
        self.exp_avg_sq: list = [None] * len(self.params)

    def zero_grad(self):
        self.flat.attach()
        self.flat.zero_grad()

    def _update(self, param, grad, exp_avg, exp_avg_sq, step):
        update = self.fused.adamw_step if self.fused is not None else adamw_step_blocked
        update(param, grad, exp_avg, exp_avg_sq, self.lr, *self.betas, self.eps, self.weight_decay, step)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is not None and p.grad.shape != p.data.shape:
                raise ValueError(f"parameter {i} has shape {p.data.shape} but its gradient {p.grad.shape}")
        self.flat.attach()
        with_grad = [p.grad is not None for p in self.params]
        every = self.flat.gather_grads()
        for i, has in enumerate(with_grad):
            if has and self.exp_avg[i] is None:
                self.exp_avg[i], self.exp_avg_sq[i] = self._exp_avg_views[i], self._exp_avg_sq_views[i]
        if every and len(set(self.steps)) == 1 and self.eps > 0:
            # the whole model at once: the padding between the views is 0 and AdamW keeps it 0
            # (with eps = 0 it would be 0 / 0, so that case goes parameter by parameter)
            self.steps = [t + 1 for t in self.steps]
            self._update(self.flat.data, self.flat.grad, self.exp_avg_buffer, self.exp_avg_sq_buffer, self.steps[0])
            return
        for i, p in enumerate(self.params):
            if not with_grad[i]:
                continue
            self.steps[i] += 1
            self._update(p.data, p.grad, self.exp_avg[i], self.exp_avg_sq[i], self.steps[i])

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
            m, v = self._exp_avg_views[i], self._exp_avg_sq_views[i]
            if f"state.{i}.step" not in state:
                m.fill(0)
                v.fill(0)
                self.steps[i], self.exp_avg[i], self.exp_avg_sq[i] = 0, None, None
                continue
            self.steps[i] = int(state[f"state.{i}.step"])
            m[...] = _to_parameter(state[f"state.{i}.exp_avg"], p, f"state.{i}.exp_avg")
            v[...] = _to_parameter(state[f"state.{i}.exp_avg_sq"], p, f"state.{i}.exp_avg_sq")
            self.exp_avg[i], self.exp_avg_sq[i] = m, v
        return self


def ema_decay_at(decay: float, step: int, warmup: bool) -> float:
    """The EMA decay used at optimizer step ``step`` (0-based): ``decay``, or with ``warmup``

        β_n = min(decay, (1 + n) / (10 + n)),

    which averages over about the last n/10 + 1 steps early on (β_0 = 0.1, β_90 = 0.91, β_990 = 0.991)
    and reaches ``decay`` after (10·decay − 1)/(1 − decay) steps.  Why: with a fixed β the average
    keeps the random initial weights for ~1/(1 − β) steps, which a short run cannot afford
    (docs/decisions.md measures it)."""
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """Exponential moving average of the weights (the "EMA model" that diffusion models sample with).

    For every parameter θ a shadow copy θ̄ starts equal to θ and, at each ``update()``,

        θ̄ ← decay · θ̄ + (1 − decay) · θ.

    The shadow weights are one flat buffer in the layout of the parameters' (autograd/flat.py;
    shared with an AdamW over the same parameters), so an update is one call over the whole model
    (``fused`` as for AdamW).  Built from a Module, its state dict uses the model's parameter names,
    so ``model.load_state_dict(ema.state_dict())`` also works; built from a list, the names are
    "0", "1", ...
    """

    def __init__(self, model_or_params, decay: float = 0.9999, *, fused=None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.fused = fused
        if hasattr(model_or_params, "named_parameters"):
            named = list(model_or_params.named_parameters())
            if not named:
                raise ValueError("EMA got a model without parameters")
        else:
            named = [(str(i), p) for i, p in enumerate(_parameter_list(model_or_params, "EMA"))]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.flat = FlatParameters.of(self.params)
        self.flat.attach()
        self.shadow_buffer = self.flat.data.copy()
        self.shadow = self.flat.views(self.shadow_buffer)

    def update(self, decay: float | None = None):
        """One averaging step with ``decay`` (default: the EMA's own; see ``ema_decay_at`` for a warm-up)."""
        self.flat.attach()
        update = self.fused.ema_update if self.fused is not None else ema_update_blocked
        update(self.shadow_buffer, self.flat.data, self.decay if decay is None else float(decay))

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
        for name, shadow, p in zip(self.names, self.shadow, self.params):
            shadow[...] = _to_parameter(state[name], p, name)
        return self


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    ‖g‖ = sqrt(Σ_p Σ_i g_{p,i}²) over every parameter with a gradient; when ‖g‖ > max_norm each
    gradient is multiplied by max_norm / (‖g‖ + 1e-6) (PyTorch's ``clip_grad_norm_``).  Returns
    ‖g‖ before clipping: a float, or on a GPU a 0-d device array (read it when it is logged).

    ``params`` a ``FlatParameters`` (``optimizer.flat``, what the trainer passes): on a GPU one
    float64 reduction over the flat gradient buffer and a multiply by min(1, scale), nothing read on the host; on NumPy the same sum taken parameter view by
    parameter view (blocks of the buffer small enough for the cache; their partial sums added in
    the parameters' order, as before flat buffers); then one in-place multiply of the buffer.  A Module or a list: the partial sums of its gradients, which are replaced, not scaled
    in place, because outside a flat buffer autograd may hand the same array to two parameters
    (the backward of ``a + b``).
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm needs max_norm > 0, got {max_norm}")
    if isinstance(params, FlatParameters):
        params.gather_grads()
        buffer = params.grad
        xp = backend.array_module_of(buffer)
        if xp is not np:
            # on the device throughout, nothing read on the host (a read would wait for the GPU):
            # the factor min(1, max_norm / (‖g‖ + 1e-6)), and a multiply by 1 changes no gradient
            total = xp.sqrt((buffer.astype(np.float64) ** 2).sum())
            buffer *= xp.minimum(max_norm / (total + 1e-6), 1.0).astype(buffer.dtype)
            return total
        total = math.sqrt(sum(_sum_of_squares(view) for view in params.grad_views))
        scale = max_norm / (total + 1e-6)
        if scale < 1.0:
            buffer *= buffer.dtype.type(scale)
        return total
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    total = math.sqrt(sum(_sum_of_squares(p.grad) for p in with_grad))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for p in with_grad:
            p.grad = p.grad * p.grad.dtype.type(scale)
    return total


def _sum_of_squares(array) -> float:
    """Σ a_i² in float64 (a float32 square would lose the small gradients' share)."""
    return float((array.astype(np.float64) ** 2).sum())
