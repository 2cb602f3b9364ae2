"""Models: the SDiT noise predictor and its presets."""
from .sdit import PRESETS, SDiT, sdit_from_preset

__all__ = ["SDiT", "sdit_from_preset", "PRESETS"]
