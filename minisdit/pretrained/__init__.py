"""Trained models shipped with the package: ``load_pretrained("mnist-tiny")``.

A pretrained model is two files in this folder, written by ``scripts/export_pretrained.py`` from a
training checkpoint:

  * ``<name>.safetensors``: a minisdit checkpoint (the format of ``minisdit/training/checkpoint.py``,
    checksummed, no pickle) holding the model's float32 weights only, the EMA copy when the run kept
    one, and no optimizer state, so that it stays small (the ``tiny`` preset: about 0.9 MB);
  * ``<name>.json``: what the weights are: the command that trained them (``recipe``), the step,
    which weights were kept (``"ema"`` or ``"model"``), the run's config, the scores that
    ``python -m minisdit.evaluate`` measured (``scores``, with its own settings), and
    ``"placeholder": true`` while the file is a stand-in from a short run.

Loading goes through ``minisdit.training.load_model``, the loader of ``python -m minisdit.sample``, so
a shipped model is rebuilt exactly as its run built it (preset, variant, diffusion).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ..training import load_model
from ..training.config import TrainConfig, build_diffusion

FOLDER = Path(__file__).resolve().parent


class Pretrained(NamedTuple):
    """What ``load_pretrained`` returns: the model (eval mode), its diffusion, its run's config and
    the description ``<name>.json`` (recipe, step, weights, scores, placeholder)."""

    model: object
    diffusion: object
    config: TrainConfig
    info: dict


def available() -> list[str]:
    """The names of the shipped models (each a ``<name>.safetensors`` with its ``<name>.json``)."""
    return sorted(path.stem for path in FOLDER.glob("*.safetensors") if path.with_suffix(".json").exists())


def weights_path(name: str) -> Path:
    """The ``.safetensors`` file of a shipped model; a one-line error names the known ones."""
    path = FOLDER / f"{name}.safetensors"
    if not path.exists() or not path.with_suffix(".json").exists():
        known = ", ".join(available()) or "none"
        raise ValueError(f"no pretrained model {name!r} (shipped: {known}); pass one of those names")
    return path


def load_pretrained(name: str = "mnist-tiny", device: str = "cpu") -> Pretrained:
    """The shipped model ``name`` on ``device``, in eval mode, with its diffusion, config and info.

    >>> model, diffusion, config, info = load_pretrained("mnist-tiny")
    """
    path = weights_path(name)
    info = json.loads(path.with_suffix(".json").read_text())
    model, checkpoint = load_model(path, device=device)
    config = checkpoint["train_config"]
    return Pretrained(model=model, diffusion=build_diffusion(config), config=config, info=info)


__all__ = ["Pretrained", "load_pretrained", "available", "weights_path", "FOLDER"]
