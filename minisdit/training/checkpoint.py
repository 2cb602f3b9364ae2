"""Checkpoints: safetensors files written atomically, holding everything a run needs to resume exactly.

One checkpoint file holds
  * ``model.<name>``      the model's state dict (PyTorch-style names),
  * ``ema.<name>``        the EMA copy of the weights, when EMA is on,
  * ``optimizer.<key>``   the optimizer's moments and step count,
and, in the safetensors metadata (text), the step, the run config, the description of the random
streams (the trainer derives every random draw from (seed, purpose, counter), so the seed and the
step are the whole random state), and a SHA-256 of all tensors.  No pickle anywhere: a checkpoint
is data, never code.

Writing: the bytes go to a temporary file in the same folder, are flushed and fsynced, then the
file is renamed over the old one and the folder is fsynced.  A rename within one file system is
atomic, so whatever happens during a save (an exception, Ctrl-C, SIGKILL, power loss) the
checkpoint path holds either the previous complete checkpoint or the new complete one, never a
mixture.  A failed save removes its temporary file; a killed one cannot, so a stray
``.<name>.<pid>.tmp`` may remain beside the checkpoint (never at its path).  The save passes the
named points of ``SAVE_POINTS`` to an optional ``at_point`` callback, so a test can stop (or kill)
a save exactly there instead of guessing when it gets there.

Reading: a file that is not safetensors, was not written here, is truncated, lacks the checksum
this version writes, or whose tensors do not match it (a flipped bit on disk) raises
``CheckpointError`` with a one-line reason.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..models import PRESETS
from .config import VARIANT_FIELDS, TrainConfig, build_model, variant_flags

FORMAT_VERSION = "minisdit-checkpoint-1"
# the moments of a save that ``at_point`` hears of, in order; before "after-rename" the path still
# holds the previous checkpoint, from "after-rename" on the new one
SAVE_POINTS = ("serialised", "mid-write", "after-fsync", "before-rename", "after-rename")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


def _contiguous(value) -> np.ndarray:
    """A C-contiguous NumPy array of the same shape (np.ascontiguousarray would turn 0-d into 1-d)."""
    array = np.asarray(value)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _flatten(prefix: str, arrays: dict) -> dict:
    return {f"{prefix}.{name}": _contiguous(value) for name, value in arrays.items()}


def _unflatten(prefix: str, tensors: dict) -> dict:
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def tensors_digest(tensors: dict) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = _contiguous(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return digest.hexdigest()


def _no_point(name: str) -> None:
    pass


def _write_file(path: Path, payload: bytes, at_point=_no_point) -> None:
    """Write ``payload`` to ``path`` and make sure it reached the disk (the step a crash may cut).
    Written in two halves, so that "mid-write" is a moment with half the bytes in the file."""
    half = len(payload) // 2
    with open(path, "wb") as handle:
        handle.write(payload[:half])
        handle.flush()
        at_point("mid-write")
        handle.write(payload[half:])
        handle.flush()
        os.fsync(handle.fileno())
        at_point("after-fsync")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened this way on Windows."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(path, *, model_state: dict, optimizer_state: dict | None = None, ema_state: dict | None = None,
                    step: int, config: dict, rng_states: dict, extra: dict | None = None,
                    at_point=_no_point) -> Path:
    """Write a checkpoint atomically (temporary file + fsync + rename) and return its path.

    ``at_point(name)`` is called at each of ``SAVE_POINTS`` (tests stop or kill the save there)."""
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
        "rng_states": json.dumps(rng_states, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
        "sha256": tensors_digest(tensors),
    }
    payload = save(tensors, metadata=metadata)
    at_point("serialised")
    # the process id keeps two writers (say, a run and its accidental twin) from sharing a temp file
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_file(temporary, payload, at_point)
        at_point("before-rename")
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt included: never leave a half-written temp file behind
        temporary.unlink(missing_ok=True)
        raise
    at_point("after-rename")
    _fsync_folder(path.parent)
    return path


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or not a minisdit checkpoint ({why}); "
                           "use an earlier checkpoint or start a new run")


def load_checkpoint(path) -> dict:
    """Read a checkpoint; raise ``CheckpointError`` with a one-line reason when it is unusable.

    Returns {"model", "optimizer" (or None), "ema" (or None), "step", "config", "rng_states",
    "extra", "path"}.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .safetensors file "
                              "written by minisdit.train")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the .safetensors file inside it "
                              f"(usually {path / 'checkpoint.safetensors'})")
    try:
        tensors = {}
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except Exception as error:  # safetensors raises several types; all mean "unreadable"
        raise _corrupt(path, " ".join(f"{type(error).__name__}: {error}".split())) from error
    if metadata.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} was not written by minisdit.train (format "
                              f"{metadata.get('format')!r}, expected {FORMAT_VERSION!r}); pass a checkpoint of this version")
    if "sha256" not in metadata:
        raise CheckpointError(f"checkpoint {path} has no checksum of its tensors: it was written by an earlier "
                              "version of minisdit, which this one does not resume; start a new run")
    if tensors_digest(tensors) != metadata["sha256"]:
        raise _corrupt(path, "its tensors do not match the checksum written with them")
    try:
        checkpoint = {
            "step": int(metadata["step"]),
            "config": json.loads(metadata["config"]),
            "rng_states": json.loads(metadata["rng_states"]),
            "extra": json.loads(metadata.get("extra", "{}")),
        }
    except (KeyError, ValueError) as error:
        raise _corrupt(path, f"bad metadata: {type(error).__name__}: {error}") from error
    if not isinstance(checkpoint["config"], dict) or checkpoint["step"] < 0:
        raise _corrupt(path, "bad metadata: the config is not a dict or the step is negative")
    model = _unflatten("model", tensors)
    if not model:
        raise _corrupt(path, "it holds no model weights")
    checkpoint.update(model=model, optimizer=_unflatten("optimizer", tensors) or None,
                      ema=_unflatten("ema", tensors) or None, path=path)
    return checkpoint


def check_compatible(checkpoint: dict, model, path) -> None:
    """Raise a one-line error when the checkpoint's weights do not fit ``model``."""
    own = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for part in ("model", "ema"):
        saved = checkpoint.get(part)
        if saved is None:
            continue
        saved = {name: tuple(np.shape(a)) for name, a in saved.items()}
        if own == saved:
            continue
        preset = checkpoint["config"].get("preset")
        if set(own) != set(saved):
            name = sorted(set(own) ^ set(saved))[0]
            where = "the model lacks" if name in saved else "the checkpoint lacks"
            detail = f"{where} {name}"
        else:
            name = next(n for n in own if own[n] != saved[n])
            detail = f"{name} is {saved[name]} in the checkpoint but {own[name]} in the model"
        raise CheckpointError(f"checkpoint {path} holds a different model (its config says preset {preset!r}; "
                              f"{detail}); build the model with the checkpoint's preset and dataset")


def load_model(path, device: str = "cpu", use_ema: bool = True, variant: dict | None = None):
    """The model saved in a training checkpoint (its EMA weights when present and ``use_ema``), rebuilt
    as the variant its config records (reconstruction, spiking, time_steps, attention, spiking_embedding).

    ``variant``: the variant fields the caller expects ({"reconstruction": False}, say); a checkpoint
    of another variant is refused with a one-line CheckpointError instead of being used as this one.

    Returns (model in eval mode on ``device``, the checkpoint dict); ``checkpoint["train_config"]`` is
    the run's ``TrainConfig`` (``build_diffusion`` of it gives the diffusion the model was trained on),
    ``checkpoint["weights_used"]`` says which weights were loaded: "ema" or "model"."""
    checkpoint = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(checkpoint["config"], source=f"the config of checkpoint {path}")
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    if config.preset not in PRESETS:
        raise CheckpointError(f"checkpoint {path} names an unknown preset {config.preset!r} (known: {', '.join(PRESETS)}); "
                              "pass a checkpoint written by minisdit.train")
    if variant is not None:
        unknown = sorted(set(variant) - set(VARIANT_FIELDS))
        if unknown:
            raise ValueError(f"load_model(variant=...) takes the fields {', '.join(VARIANT_FIELDS)}, not {', '.join(unknown)}")
        if any(getattr(config, name) != value for name, value in variant.items()):
            raise CheckpointError(f"checkpoint {path} holds the model of {variant_flags(config)}, not of "
                                  f"{variant_flags(variant)}; pass a checkpoint of that variant")
    try:
        model = build_model(config)
    except ValueError as error:  # a variant this version cannot build
        raise CheckpointError(f"checkpoint {path} cannot be rebuilt: {error}") from error
    check_compatible(checkpoint, model, path)
    which = "ema" if use_ema and checkpoint["ema"] is not None else "model"
    model.load_state_dict(checkpoint[which])
    checkpoint["weights_used"], checkpoint["train_config"] = which, config
    return model.to(device=device).eval(), checkpoint
