"""Energy estimate of a spiking network against the same network with real-valued activations.

The usual 45 nm CMOS figures (Horowitz, ISSCC 2014), as used by the SNN literature (Spikformer,
SDiT): a 32-bit float multiply-accumulate (MAC) costs E_MAC = 4.6 pJ, an accumulate (AC) costs
E_AC = 0.9 pJ.  A layer whose input is binary spikes needs no multiplications: each spike adds one
weight column, so over T time steps it performs

    ACs = T · r · MACs        (synaptic operations, SOPs)

where MACs is what the layer costs on a real-valued input and r is the firing rate of the spiking
neurons feeding it (mean spikes per neuron per time step, between 0 and 1).  Layers fed by real
values (the patch embedding, layers after a residual add, ...) keep their MACs.  Then

    E_SNN = E_AC · Σ ACs + E_MAC · (MACs of the layers fed by real values),
    E_ANN = E_MAC · (MACs of all layers).

The energy functions are pure (no model), so the numbers can be checked by hand; the model side
only has to supply (name, firing rate, MACs of the layer its spikes feed).  ``forward_macs`` counts
a model's MACs from its own Linear and Conv2d modules, by recording one forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..autograd import nn
from ..autograd.tensor import no_grad
from ..models.attention import SelfAttention

ENERGY_PER_MAC_PJ = 4.6
ENERGY_PER_AC_PJ = 0.9


def linear_macs(tokens: int, in_features: int, out_features: int) -> int:
    """MACs of a Linear layer applied to ``tokens`` vectors (one sample)."""
    return int(tokens) * int(in_features) * int(out_features)


def conv2d_macs(out_height: int, out_width: int, in_channels: int, out_channels: int, kernel_h: int, kernel_w: int) -> int:
    """MACs of a Conv2d layer for one sample: every output value is a dot product of C·kh·kw terms."""
    return int(out_height) * int(out_width) * int(out_channels) * int(in_channels) * int(kernel_h) * int(kernel_w)


def forward_macs(model, *inputs) -> int:
    """MACs of ``model(*inputs)`` per sample: the sum over every call of a Linear or Conv2d module in
    that forward pass, each counted with the shapes it really saw (``linear_macs`` with its number
    of input vectors, ``conv2d_macs`` with its output size), and of every softmax ``SelfAttention`` the
    two products Q K^T and P V (2 L^2 D for L tokens of width D: the heads split D), divided by the
    batch size.  (RWKV's WKV recurrence is elementwise, O(L D): no MACs of this kind.)

    Why a recorded pass: the tokens each layer sees (the doubled sequence of a block with the
    Reconstruction Token, one vector for the timestep MLP, ...) are then the model's own, not a
    second copy of its shapes.  The model runs in eval mode without gradients; its mode is restored.
    """
    counted = []

    def recording(module, forward):
        def forward_and_count(x, *args, **kwargs):
            out = forward(x, *args, **kwargs)
            if isinstance(module, SelfAttention):
                batch, length, dim = x.shape
                counted.append(2 * batch * length * length * dim)
            elif isinstance(module, nn.Linear):
                counted.append(linear_macs(np.prod(x.shape[:-1], dtype=np.int64), module.in_features,
                                           module.out_features))
            else:
                out_channels, in_channels, kernel_h, kernel_w = module.weight.shape
                counted.append(out.shape[0] * conv2d_macs(out.shape[2], out.shape[3], in_channels, out_channels,
                                                          kernel_h, kernel_w))
            return out
        return forward_and_count

    layers = [module for module in model.modules() if isinstance(module, (nn.Linear, nn.Conv2d, SelfAttention))]
    was_training = model.training
    try:
        for module in layers:  # an instance attribute shadows the class's forward for this pass only
            object.__setattr__(module, "forward", recording(module, module.forward))
        model.eval()
        with no_grad():
            out = model(*inputs)
    finally:
        for module in layers:
            module.__dict__.pop("forward", None)
        model.train(was_training)
    return int(sum(counted) // out.shape[0])


@dataclass
class SpikingLayerEnergy:
    name: str
    firing_rate: float
    macs: float          # MACs of the layer fed by these spikes, on a real-valued input
    acs: float           # T · r · MACs


@dataclass
class EnergyReport:
    layers: list = field(default_factory=list)
    time_steps: int = 4
    spike_fed_macs: float = 0.0
    real_fed_macs: float = 0.0
    total_acs: float = 0.0
    snn_energy_pj: float = 0.0
    ann_energy_pj: float = 0.0

    @property
    def ann_macs(self) -> float:
        return self.spike_fed_macs + self.real_fed_macs

    @property
    def energy_ratio(self) -> float:
        """E_SNN / E_ANN (below 1 means the spiking network is cheaper)."""
        return self.snn_energy_pj / self.ann_energy_pj if self.ann_energy_pj else float("nan")

    def __str__(self):
        return (f"SNN {self.snn_energy_pj / 1e6:.4g} uJ ({self.total_acs:.4g} ACs over T={self.time_steps} + "
                f"{self.real_fed_macs:.4g} MACs) vs ANN {self.ann_energy_pj / 1e6:.4g} uJ ({self.ann_macs:.4g} MACs): "
                f"ratio {self.energy_ratio:.3f}")


def estimate_energy(spiking_layers, real_fed_macs: float = 0.0, *, time_steps: int = 4,
                    energy_per_ac_pj: float = ENERGY_PER_AC_PJ,
                    energy_per_mac_pj: float = ENERGY_PER_MAC_PJ) -> EnergyReport:
    """Energy per sample from [(name, firing_rate, macs_of_next_layer), ...] and the MACs fed by real values."""
    if time_steps < 1:
        raise ValueError(f"time_steps must be at least 1, got {time_steps}")
    if real_fed_macs < 0:
        raise ValueError(f"real_fed_macs must be non-negative, got {real_fed_macs}")
    report = EnergyReport(time_steps=int(time_steps), real_fed_macs=float(real_fed_macs))
    for entry in spiking_layers:
        if len(entry) != 3:
            raise ValueError(f"each spiking layer is (name, firing_rate, macs_of_next_layer), got {entry!r}")
        name, rate, macs = entry
        rate, macs = float(rate), float(macs)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"firing rate of {name!r} must be in [0, 1] (spikes per neuron per time step), got {rate}")
        if macs < 0:
            raise ValueError(f"MACs of the layer fed by {name!r} must be non-negative, got {macs}")
        acs = time_steps * rate * macs
        report.layers.append(SpikingLayerEnergy(name, rate, macs, acs))
        report.spike_fed_macs += macs
        report.total_acs += acs
    report.snn_energy_pj = energy_per_ac_pj * report.total_acs + energy_per_mac_pj * report.real_fed_macs
    report.ann_energy_pj = energy_per_mac_pj * report.ann_macs
    return report
