"""Firing-rate statistics: while ``record_firing_rates()`` is active, every spiking module counts
its spikes and neuron-steps; ``firing_rates(model)`` reads them as spikes per neuron-step."""
from __future__ import annotations

import contextlib

from ..autograd.nn import Module

_recording_depth = 0


class record_firing_rates(contextlib.ContextDecorator):
    """While active, every LIF / SpikeRate module adds its spikes to ``spike_count`` and ``neuron_steps``."""

    def __enter__(self):
        global _recording_depth
        _recording_depth += 1
        return self

    def __exit__(self, *exc):
        global _recording_depth
        _recording_depth -= 1
        return False


def is_recording_firing_rates() -> bool:
    return _recording_depth > 0


class SpikeCounter:
    """What a spiking module keeps for the statistics: the spikes it emitted and the neuron-steps."""

    def reset_spike_count(self) -> None:
        self.spike_count = 0.0
        self.neuron_steps = 0

    def record_spikes(self, spike_total, neuron_steps: int) -> None:
        """Add a spike total (a 0-d array, left on its device until read) and its neuron-steps."""
        self.spike_count = self.spike_count + spike_total
        self.neuron_steps += int(neuron_steps)


def _named_modules(module: Module, prefix: str = ""):
    yield prefix, module
    for name, child in module.named_children():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name)


def firing_rates(model: Module) -> dict[str, float]:
    """{dotted module name: spikes / neuron-steps} of every spiking module that recorded something.

    The root module is named "".  Record with ``with minisdit.snn.record_firing_rates(): model(...)``.
    """
    rates = {}
    for name, module in _named_modules(model):
        if isinstance(module, SpikeCounter) and module.neuron_steps > 0:
            rates[name] = float(module.spike_count) / module.neuron_steps
    return rates


def reset_firing_rates(model: Module) -> None:
    """Zero the spike counters of every spiking module in ``model``."""
    for _, module in _named_modules(model):
        if isinstance(module, SpikeCounter):
            module.reset_spike_count()
