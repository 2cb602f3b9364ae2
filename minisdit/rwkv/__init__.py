"""RWKV-4 for SDiT: the WKV operator (``wkv_operator``) and the TimeMix / ChannelMix layers (``layers``)."""
from .layers import ChannelMix, TimeMix, layer_ratios, time_mix_init, token_shift
from .wkv_operator import WKV, wkv, wkv_backward_numpy, wkv_forward_numpy, wkv_quadratic_numpy

__all__ = ["wkv", "WKV", "wkv_forward_numpy", "wkv_backward_numpy", "wkv_quadratic_numpy", "TimeMix", "ChannelMix",
           "token_shift", "layer_ratios", "time_mix_init"]
