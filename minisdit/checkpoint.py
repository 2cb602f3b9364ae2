"""Checkpoints: safetensors files written atomically, holding everything a run needs to resume exactly.

One checkpoint file holds
  * ``model.<name>``      the model's state dict (PyTorch-style names),
  * ``ema.<name>``        the EMA copy of the weights, when EMA is on,
  * ``optimizer.<key>``   the optimizer's moments and step count,
and, in the safetensors metadata (text), the step, the run config, and the states of every random
generator as JSON.  No pickle anywhere: a checkpoint is data, never code.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the old
file; a rename is atomic, so a crash or Ctrl-C in the middle leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMAT_VERSION = "minisdit-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


def _flatten(prefix: str, arrays: dict) -> dict:
    return {f"{prefix}.{name}": np.ascontiguousarray(np.asarray(value)) for name, value in arrays.items()}


def _unflatten(prefix: str, tensors: dict) -> dict:
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def save_checkpoint(path, *, model_state: dict, optimizer_state: dict | None = None, ema_state: dict | None = None,
                    step: int, config: dict, rng_states: dict, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file + fsync + rename) and return its path."""
    from safetensors.numpy import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _flatten("model", model_state)
    if optimizer_state is not None:
        tensors.update(_flatten("optimizer", optimizer_state))
    if ema_state is not None:
        tensors.update(_flatten("ema", ema_state))
    metadata = {
        "format": FORMAT_VERSION,
        "step": str(int(step)),
        "config": json.dumps(config, sort_keys=True),
        "rng_states": json.dumps(rng_states),
        "extra": json.dumps(extra or {}),
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint; raise ``CheckpointError`` with a one-line reason when it is unusable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .safetensors file written by minisdit.train")
    try:
        tensors = {}
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({error}); "
                              "use an earlier checkpoint or start a new run") from error
    if metadata.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} was not written by minisdit.train (format {metadata.get('format')!r})")
    return {
        "model": _unflatten("model", tensors),
        "optimizer": _unflatten("optimizer", tensors) or None,
        "ema": _unflatten("ema", tensors) or None,
        "step": int(metadata["step"]),
        "config": json.loads(metadata["config"]),
        "rng_states": json.loads(metadata["rng_states"]),
        "extra": json.loads(metadata.get("extra", "{}")),
    }


def check_compatible(checkpoint: dict, model, path) -> None:
    """Raise a one-line error when the checkpoint's weights do not fit ``model``."""
    own = {name: p.shape for name, p in model.named_parameters()}
    saved = {name: tuple(a.shape) for name, a in checkpoint["model"].items()}
    if own == saved:
        return
    preset = checkpoint["config"].get("preset")
    different = sorted(set(own) ^ set(saved)) or [n for n in own if own[n] != saved[n]]
    raise CheckpointError(f"checkpoint {path} holds a different model (preset {preset!r}; first mismatch: "
                          f"{different[0]}); build the model with the checkpoint's preset and dataset")
