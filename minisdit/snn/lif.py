"""Multi-step Leaky Integrate-and-Fire (LIF) neurons, SpikingJelly's ``LIFNode`` semantics.

Input x of shape (T, ...): one value per time step t = 1..T for every neuron.  With
v_r = v_reset (or 0 for a soft reset, v_reset=None) and v_0 = v_r at every call:

    charge  h_t = v_{t-1} + (x_t - (v_{t-1} - v_r)) / tau        (decay_input)
            h_t = v_{t-1} - (v_{t-1} - v_r) / tau + x_t          (not decay_input)
    fire    s_t = Theta(h_t - v_threshold),  Theta(0) = 1
    reset   v_t = h_t (1 - s_t) + v_reset s_t                    (hard)
            v_t = h_t - v_threshold s_t                          (soft)

Backward (backpropagation through time), given dL/ds_t for every t and dL/dv_T = 0:

    dL/dh_t     = dL/ds_t ds_t/dh_t + dL/dv_t dv_t/dh_t
    dL/dx_t     = dL/dh_t dh_t/dx_t,    dh_t/dx_t = 1/tau (decay_input) or 1
    dL/dv_{t-1} = dL/dh_t (1 - 1/tau)

with ds_t/dh_t = g'(h_t - v_threshold) (the surrogate) and dv_t/dh_t = 1 - s_t + (v_reset - h_t) ds_t/dh_t
(hard) or 1 - v_threshold ds_t/dh_t (soft); detach_reset drops the ds_t/dh_t term of the reset.
Only h is saved for the backward pass; the spikes are recomputed from it.

With ``spiking=False`` the step Theta is replaced by the surrogate's smooth primitive g (in the
forward pass and in the s_t of dv_t/dh_t), which makes the whole recurrence differentiable, so
the same backward can be checked against finite differences.

The spike rate (what SDiT's spiking neuron "SN" computes) presents the same x at every one of the
T steps and returns r = (1/T) sum_t s_t.  Because x is one number per neuron, the backward
dL/dx = sum_t dL/dh_t dh_t/dx is evaluated in forward mode: the derivative of the state with
respect to x is carried along the time loop next to the state,

    dh_t/dx = (1 - 1/tau) dv_{t-1}/dx + dh/dx,   dv_t/dx = dv_t/dh_t dh_t/dx,   dv_0/dx = 0,
    dr/dx   = (1/T) sum_t g'(h_t - v_threshold) dh_t/dx,

so neither pass builds a (T, ...) array and the backward needs nothing but x.

Every operation exists three times, and tests keep them equal: the array reference below (NumPy or
CuPy, vectorised over neurons, a loop over T), the CUDA kernels in ``minisdit/kernels/lif.cu`` (used for
CuPy arrays, and for NumPy arrays inside ``minisdit.kernels.runtime.cpu_kernels()``), and ``lif_unrolled``, an autograd composition of ``minisdit.functional`` ops.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..autograd import backend
from ..kernels import runtime
from ..autograd import functional as F
from ..autograd.nn import Module
from ..autograd.tensor import Function, Tensor
from .monitor import SpikeCounter, is_recording_firing_rates
from .surrogate import SURROGATES, ATan, Surrogate, check_surrogate

KERNEL_FILE = "lif.cu"
THREADS_PER_BLOCK = 256
SUPPORTED_DTYPES = tuple(runtime.SCALAR_TYPES)  # float32 and float64, as the kernels


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LIFOptions:
    """The settings of one LIF neuron (validated on construction)."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: Surrogate = ATan(alpha=2.0)
    spiking: bool = True

    def __post_init__(self):
        tau = float(self.tau)
        if not (math.isfinite(tau) and tau > 1.0):
            raise ValueError(f"LIF needs a membrane time constant tau > 1 (in time steps), got tau={self.tau}")
        if not math.isfinite(float(self.v_threshold)):
            raise ValueError(f"LIF needs a finite v_threshold, got {self.v_threshold}")
        if self.v_reset is not None and not math.isfinite(float(self.v_reset)):
            raise ValueError(f"LIF needs a finite v_reset (or None for a soft reset), got {self.v_reset}")
        check_surrogate(self.surrogate)
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "v_threshold", float(self.v_threshold))
        object.__setattr__(self, "v_reset", None if self.v_reset is None else float(self.v_reset))
        object.__setattr__(self, "decay_input", bool(self.decay_input))
        object.__setattr__(self, "detach_reset", bool(self.detach_reset))
        object.__setattr__(self, "spiking", bool(self.spiking))

    @property
    def hard_reset(self) -> bool:
        return self.v_reset is not None

    @property
    def v_rest(self) -> float:
        """v_r: the potential the neuron starts at and leaks towards (v_reset, or 0 for a soft reset)."""
        return 0.0 if self.v_reset is None else self.v_reset

    @property
    def input_gain(self) -> float:
        """dh_t/dx_t."""
        return 1.0 / self.tau if self.decay_input else 1.0

    @property
    def leak(self) -> float:
        """dh_t/dv_{t-1} = 1 - 1/tau."""
        return 1.0 - 1.0 / self.tau

    def kernel_defines(self, dtype) -> dict:
        """The preprocessor defines that select this neuron's variant of minisdit/kernels/lif.cu."""
        return kernel_defines(self.surrogate, self.hard_reset, self.detach_reset, self.decay_input, dtype)


def kernel_defines(surrogate: Surrogate, hard_reset: bool, detach_reset: bool, decay_input: bool, dtype) -> dict:
    return {
        "scalar_t": runtime.scalar_type(dtype),
        "SURROGATE": surrogate.id,
        "HARD_RESET": int(hard_reset),
        "DETACH_RESET": int(detach_reset),
        "DECAY_INPUT": int(decay_input),
    }


def kernel_variants():
    """Every set of defines that the library can ask minisdit/kernels/lif.cu for."""
    for surrogate_class, hard, detach, decay, dtype in itertools.product(
            SURROGATES, (True, False), (False, True), (True, False), SUPPORTED_DTYPES):
        yield kernel_defines(surrogate_class(), hard, detach, decay, dtype)


def check_input(x: Tensor, what: str, min_ndim: int = 0) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} takes a minisdit.Tensor, got {type(x).__name__}; wrap it with minisdit.Tensor(array)")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what} needs a float32 or float64 input, got {x.dtype}; convert it with x.astype(np.float32)")
    if x.ndim < min_ndim or (min_ndim and x.shape[0] < 1):
        raise ValueError(f"{what} needs an input of shape (T, ...) with T >= 1 time steps, got shape {x.shape}")
    return x


def check_time_steps(T) -> int:
    if isinstance(T, bool) or int(T) != T or T < 1:
        raise ValueError(f"the number of time steps T must be a positive integer, got {T!r}")
    return int(T)


# ---------------------------------------------------------------------------------------------
# the array reference (NumPy or CuPy): vectorised over neurons, a loop over time
# ---------------------------------------------------------------------------------------------
def _charge(v, x, o: LIFOptions):
    if o.decay_input:
        return v + (x - (v - o.v_rest)) / o.tau
    return v - (v - o.v_rest) / o.tau + x


def _fire(h, o: LIFOptions):
    over = h - o.v_threshold
    return o.surrogate.heaviside(over) if o.spiking else o.surrogate.primitive(over)


def _reset(h, s, o: LIFOptions):
    if o.hard_reset:
        return h * (1 - s) + o.v_reset * s
    return h - o.v_threshold * s


def _reset_derivative(h, s, spike_derivative, o: LIFOptions):
    """dv_t/dh_t given s_t and ds_t/dh_t."""
    if o.hard_reset:
        return 1 - s if o.detach_reset else 1 - s + (o.v_reset - h) * spike_derivative
    return 1.0 if o.detach_reset else 1 - o.v_threshold * spike_derivative


def lif_forward_reference(x, o: LIFOptions):
    """x (T, ...) -> spikes (T, ...), h (T, ...)."""
    xp = backend.array_module_of(x)
    spikes, h = xp.empty_like(x), xp.empty_like(x)
    v = xp.full(x.shape[1:], o.v_rest, dtype=x.dtype)
    for t in range(x.shape[0]):
        h[t] = _charge(v, x[t], o)
        spikes[t] = _fire(h[t], o)
        v = _reset(h[t], spikes[t], o)
    return spikes, h


def lif_backward_reference(h, grad_spikes, o: LIFOptions):
    """h (T, ...), dL/ds (T, ...) -> dL/dx (T, ...), backpropagation through time."""
    xp = backend.array_module_of(h)
    grad_x = xp.empty_like(h)
    grad_v = xp.zeros(h.shape[1:], dtype=h.dtype)
    for t in reversed(range(h.shape[0])):
        s = _fire(h[t], o)
        spike_derivative = o.surrogate.derivative(h[t] - o.v_threshold)
        grad_h = grad_spikes[t] * spike_derivative + grad_v * _reset_derivative(h[t], s, spike_derivative, o)
        grad_x[t] = grad_h * o.input_gain
        grad_v = grad_h * o.leak
    return grad_x


def spike_rate_forward_reference(x, T: int, o: LIFOptions):
    """x (...) presented T times -> the mean spike count (...)."""
    xp = backend.array_module_of(x)
    v = xp.full(x.shape, o.v_rest, dtype=x.dtype)
    count = xp.zeros_like(x)
    for _ in range(T):
        h = _charge(v, x, o)
        s = _fire(h, o)
        count = count + s
        v = _reset(h, s, o)
    return count / T


def spike_rate_backward_reference(x, grad_rate, T: int, o: LIFOptions):
    """x (...), dL/drate (...) -> dL/dx (...), the derivative carried forward in time."""
    xp = backend.array_module_of(x)
    v = xp.full(x.shape, o.v_rest, dtype=x.dtype)
    dv_dx = xp.zeros_like(x)
    dcount_dx = xp.zeros_like(x)
    for _ in range(T):
        h = _charge(v, x, o)
        dh_dx = o.leak * dv_dx + o.input_gain
        s = _fire(h, o)
        spike_derivative = o.surrogate.derivative(h - o.v_threshold)
        dcount_dx = dcount_dx + spike_derivative * dh_dx
        dv_dx = _reset_derivative(h, s, spike_derivative, o) * dh_dx
        v = _reset(h, s, o)
    return grad_rate * dcount_dx / T


# ---------------------------------------------------------------------------------------------
# the CUDA kernels (minisdit/kernels/lif.cu)
# ---------------------------------------------------------------------------------------------
class LIFKernels:
    """The kernels of minisdit/kernels/lif.cu for one neuron variant and dtype.

    Each method runs on the device of its arrays (``runtime.Kernels``): CuPy arrays on the GPU, NumPy
    arrays as the same source compiled for the CPU.  ``block`` and ``max_blocks`` as in
    ``runtime.launch``: by default one CPU thread (the fast way on a CPU) or ``THREADS_PER_BLOCK`` on
    a GPU; tests pass a block size to run several blocks on the CPU, and ``max_blocks`` to make
    the kernels' grid-stride loop wrap.
    """

    def __init__(self, options: LIFOptions, dtype, *, block: int | None = None, max_blocks: int | None = None):
        if not options.spiking:
            raise ValueError("minisdit/kernels/lif.cu implements spiking neurons only; spiking=False runs the array reference")
        self.options, self.dtype = options, np.dtype(dtype)
        self.block, self.max_blocks = block, max_blocks
        # raises for dtypes other than float32 / float64
        self.kernels = runtime.Kernels(KERNEL_FILE, options.kernel_defines(self.dtype), gpu_block=THREADS_PER_BLOCK)

    def _run(self, name: str, neurons: int, arrays, T: int, with_alpha: bool):
        o = self.options
        scalars = [o.tau, o.v_threshold, o.v_rest] + ([o.surrogate.alpha] if with_alpha else [])
        self.kernels.run(name, neurons, *arrays, neurons, T, *scalars, block=self.block, max_blocks=self.max_blocks)

    def _prepare(self, array):
        xp = backend.array_module_of(array)
        return xp.ascontiguousarray(array, dtype=self.dtype)

    def forward(self, x):
        """x (T, N) -> spikes (T, N), h (T, N)."""
        x = self._prepare(x)
        xp = backend.array_module_of(x)
        spikes, h = xp.empty_like(x), xp.empty_like(x)
        self._run("lif_forward", x.shape[1], (x, spikes, h), x.shape[0], with_alpha=False)
        return spikes, h

    def backward(self, h, grad_spikes):
        """h (T, N), dL/ds (T, N) -> dL/dx (T, N)."""
        h, grad_spikes = self._prepare(h), self._prepare(grad_spikes)
        grad_x = backend.array_module_of(h).empty_like(h)
        self._run("lif_backward", h.shape[1], (h, grad_spikes, grad_x), h.shape[0], with_alpha=True)
        return grad_x

    def spike_rate_forward(self, x, T: int):
        """x (N) -> rate (N)."""
        x = self._prepare(x)
        rate = backend.array_module_of(x).empty_like(x)
        self._run("spike_rate_forward", x.size, (x, rate), T, with_alpha=False)
        return rate

    def spike_rate_backward(self, x, grad_rate, T: int):
        """x (N), dL/drate (N) -> dL/dx (N)."""
        x, grad_rate = self._prepare(x), self._prepare(grad_rate)
        grad_x = backend.array_module_of(x).empty_like(x)
        self._run("spike_rate_backward", x.size, (x, grad_rate, grad_x), T, with_alpha=True)
        return grad_x


def _kernels_for(array, o: LIFOptions) -> LIFKernels | None:
    """The kernels that run this neuron on ``array``, or None where the array reference runs."""
    if o.spiking and runtime.kernels_run_on(array):
        return LIFKernels(o, array.dtype)
    return None


# ---------------------------------------------------------------------------------------------
# fused autograd Functions: one node for the whole time loop
# ---------------------------------------------------------------------------------------------
class LIFFunction(Function):
    """x (T, ...) -> spikes (T, ...); forward and BPTT backward as one node (see module docstring)."""

    options: LIFOptions

    def forward(self, x):
        self.kernels = _kernels_for(x, self.options)
        if self.kernels is not None:
            spikes, self.h = self.kernels.forward(x.reshape(x.shape[0], -1))
            return spikes.reshape(x.shape)
        spikes, self.h = lif_forward_reference(x, self.options)
        return spikes

    def backward(self, grad):
        grad = grad.astype(self.h.dtype, copy=False)
        if self.kernels is not None:
            return self.kernels.backward(self.h, grad.reshape(self.h.shape)).reshape(grad.shape)
        return lif_backward_reference(self.h, grad, self.options)


class SpikeRateFunction(Function):
    """x (...) -> the mean over T steps of the spikes of an LIF neuron fed x at every step."""

    options: LIFOptions
    T: int

    def forward(self, x):
        self.x = x
        self.kernels = _kernels_for(x, self.options)
        if self.kernels is not None:
            return self.kernels.spike_rate_forward(x.reshape(-1), self.T).reshape(x.shape)
        return spike_rate_forward_reference(x, self.T, self.options)

    def backward(self, grad):
        grad = grad.astype(self.x.dtype, copy=False)
        if self.kernels is not None:
            return self.kernels.spike_rate_backward(self.x.reshape(-1), grad.reshape(-1), self.T).reshape(grad.shape)
        return spike_rate_backward_reference(self.x, grad, self.T, self.options)


# ---------------------------------------------------------------------------------------------
# functional API
# ---------------------------------------------------------------------------------------------
def lif(x: Tensor, *, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
        decay_input: bool = True, detach_reset: bool = False, surrogate: Surrogate = ATan(alpha=2.0),
        spiking: bool = True) -> Tensor:
    """Spikes (T, ...) of multi-step LIF neurons for the input x (T, ...), one fused autograd node."""
    options = LIFOptions(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, spiking)
    return LIFFunction.apply(check_input(x, "lif", min_ndim=1), options=options)


def spike_rate(x: Tensor, *, T: int = 4, neuron: "LIF | None" = None, spiking: bool = True) -> Tensor:
    """Mean over T steps of the spikes of LIF neurons given the same x at every step.

    Equals ``lif(stack([x] * T)).mean(axis=0)`` without building the (T, ...) copy.  ``neuron`` is
    an ``LIF`` (or ``SpikeRate``) module whose settings are used (default ``LIF()``).
    """
    if neuron is None:
        options = LIFOptions(spiking=spiking)
    elif isinstance(neuron, LIF):
        options = neuron.options if spiking else dataclasses.replace(neuron.options, spiking=False)
    else:
        raise TypeError(f"neuron must be a minisdit.snn.LIF module (or None for LIF()), got {type(neuron).__name__}")
    return SpikeRateFunction.apply(check_input(x, "spike_rate"), options=options, T=check_time_steps(T))


def lif_unrolled(x: Tensor, *, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: Surrogate = ATan(alpha=2.0),
                 spiking: bool = True) -> Tensor:
    """The same neuron as ``lif``, written as charge/fire/reset over T with ``minisdit.functional`` ops.

    Autograd records every step, so this is slow and memory-hungry; it is the readable version of
    the equations and the reference the fused ``lif`` is tested against.  The fire step is the
    surrogate's ``SurrogateSpike`` node: Theta (or the smooth g when not ``spiking``) forward, g' backward.
    """
    o = LIFOptions(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, spiking)
    check_input(x, "lif_unrolled", min_ndim=1)
    v = o.v_rest
    spikes = []
    for t in range(x.shape[0]):
        x_t = x[t]
        if o.decay_input:
            h = v + (x_t - (v - o.v_rest)) / o.tau
        else:
            h = v - (v - o.v_rest) / o.tau + x_t
        s = o.surrogate(h - o.v_threshold, spiking=o.spiking)
        s_in_reset = s.detach() if o.detach_reset else s
        if o.hard_reset:
            v = h * (1 - s_in_reset) + o.v_reset * s_in_reset
        else:
            v = h - o.v_threshold * s_in_reset
        spikes.append(s)
    return F.stack(spikes, axis=0)


# ---------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------
class LIF(SpikeCounter, Module):
    """Multi-step LIF neurons (no parameters): spikes (T, ...) for an input Tensor (T, ...).

    Keyword-only arguments as SpikingJelly's ``LIFNode`` (whose surrogate argument is
    ``surrogate_function``); v_reset=None is a soft reset.  The state starts at v_r on every call.
    """

    def __init__(self, *, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: Surrogate = ATan(alpha=2.0)):
        super().__init__()
        self.options = LIFOptions(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate)
        self.reset_spike_count()

    tau = property(lambda self: self.options.tau)
    v_threshold = property(lambda self: self.options.v_threshold)
    v_reset = property(lambda self: self.options.v_reset)
    decay_input = property(lambda self: self.options.decay_input)
    detach_reset = property(lambda self: self.options.detach_reset)
    surrogate = property(lambda self: self.options.surrogate)

    def forward(self, x: Tensor) -> Tensor:
        spikes = LIFFunction.apply(check_input(x, type(self).__name__, min_ndim=1), options=self.options)
        if is_recording_firing_rates():
            self.record_spikes(spikes.data.sum(dtype=np.float64), spikes.size)
        return spikes

    def extra_repr(self) -> str:
        o = self.options
        return (f"tau={o.tau}, v_threshold={o.v_threshold}, v_reset={o.v_reset}, decay_input={o.decay_input}, "
                f"detach_reset={o.detach_reset}, surrogate={o.surrogate!r}")

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class SpikeRate(LIF):
    """SDiT's spiking neuron SN(a): the same a for T steps into LIF neurons, output the mean spike count.

    Shape in = shape out.  No parameters; options as ``LIF``.
    """

    def __init__(self, T: int = 4, **lif_options):
        super().__init__(**lif_options)
        self.T = check_time_steps(T)

    def forward(self, x: Tensor) -> Tensor:
        rate = spike_rate(x, T=self.T, neuron=self)
        if is_recording_firing_rates():
            # every rate is (number of spikes) / T, so the spike total is T times the sum of rates
            self.record_spikes(rate.data.sum(dtype=np.float64) * self.T, rate.size * self.T)
        return rate

    def extra_repr(self) -> str:
        return f"T={self.T}, " + super().extra_repr()
