"""Spiking neurons: multi-step LIF with surrogate gradients, and SDiT's spike-rate neuron.

* ``LIF(*, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=False,
  surrogate=ATan(alpha=2.0))``: spikes (T, ...) for an input (T, ...); ``lif(x, ...)`` is the
  functional form.
* ``SpikeRate(T=4, **lif options)`` / ``spike_rate(x, T=4, neuron=None)``: the mean spike count
  when the same x is presented for T steps (SDiT's SN).
* ``surrogate``: ATan, Sigmoid, PiecewiseQuadratic, SoftSign, Erf.
* Spike statistics: ``with record_firing_rates(): model(...)``, then ``firing_rates(model)`` and
  ``reset_firing_rates(model)``.
"""
from . import surrogate
from .lif import LIF, LIFKernels, LIFOptions, SpikeRate, lif, lif_unrolled, spike_rate
from .monitor import firing_rates, is_recording_firing_rates, record_firing_rates, reset_firing_rates

__all__ = [
    "LIF", "LIFKernels", "LIFOptions", "SpikeRate", "firing_rates", "is_recording_firing_rates", "lif",
    "lif_unrolled", "record_firing_rates", "reset_firing_rates", "spike_rate", "surrogate",
]
