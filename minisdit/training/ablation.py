"""Ablations: the model variants by name, training each to one budget, and the report that compares them.

``python -m minisdit.ablate`` (minisdit/cli/ablate.py) trains every variant of a list with the same
config, seed (so the same initial draws, data order, t and ε per step) and budget, each in its own
run folder ``<out>/<name>/``, evaluates each the same way and writes the report of this module:
``ablation.md``, ``ablation.json``, ``samples.png`` (every variant's grid, side by side) and
``losses.png`` (every loss curve).

A run folder says how far its variant got, so a killed ablation continues where it stopped:
  * ``checkpoint.safetensors`` without ``done.json``: half trained; resumed from the checkpoint
    (exactly, as ``python -m minisdit.train --resume``);
  * ``done.json``: trained to the budget it records; not trained again while the budget is the same
    (a larger --steps or --minutes trains it further);
  * ``eval.json``: evaluated at the step and with the settings it records; reused while they match.
A --minutes budget counts the seconds trained, kept beside each checkpoint in ``train_time.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..data.images import make_grid
from .checkpoint import CheckpointError, check_compatible, load_checkpoint
from .config import FIXED_ON_RESUME, TrainConfig, variant_flags
from .trainer import CHECKPOINT_NAME, LOG_NAME, Trainer

# name -> the TrainConfig fields it changes; "T<K>" (any K >= 1) sets time_steps, "a+b" combines names
VARIANTS = {
    "default": {},
    "no-reconstruction": {"reconstruction": False},
    "softmax": {"attention": "softmax"},
    "spiking-embedding": {"spiking_embedding": True},
    "no-spiking": {"spiking": False},
    "T1": {"time_steps": 1},
    "T8": {"time_steps": 8},
}
DEFAULT_VARIANTS = ("default", "no-reconstruction", "softmax", "spiking-embedding", "no-spiking", "T1", "T8")
# what each variant removes or changes, for the report
MEANINGS = {
    "reconstruction": "no Reconstruction Token, no gate",
    "spiking": "every SN is the identity (an ANN)",
    "time_steps": "SNN time steps T",
    "attention": "attention",
    "spiking_embedding": "patch tokens through SN before the first block",
}
DONE_NAME, TIME_NAME, EVAL_NAME, SAMPLES_NAME = "done.json", "train_time.json", "eval.json", "samples.npz"


def variant_fields(name: str) -> dict:
    """The config fields of the variant called ``name`` (one-line ValueError for an unknown name)."""
    fields = {}
    for part in name.split("+"):
        if part in VARIANTS:
            changes = VARIANTS[part]
        elif re.fullmatch(r"T[1-9][0-9]*", part):
            changes = {"time_steps": int(part[1:])}
        else:
            raise ValueError(f"unknown variant {part!r}; choose from {', '.join(VARIANTS)}, T<K> (K SNN time steps), "
                             "or join them with + (e.g. no-reconstruction+T1)")
        clash = {key for key in changes if key in fields and fields[key] != changes[key]}
        if clash:
            raise ValueError(f"variant {name!r} sets {', '.join(sorted(clash))} twice; name one value per field")
        fields.update(changes)
    return fields


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """"default,T1" -> [("default", {}), ("T1", {"time_steps": 1})]; one-line ValueError for bad lists."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--variants is empty; give a comma list such as {','.join(DEFAULT_VARIANTS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--variants names {', '.join(repeated)} more than once; name each variant once")
    return [(name, variant_fields(name)) for name in names]


def write_json(path: Path, values) -> None:
    """Write JSON through a renamed temporary file, so a kill never leaves half a file behind."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(values, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(temporary, path)


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable (then the step is redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----- training -----

class BudgetedTrainer(Trainer):
    """A Trainer that also stops once it has trained ``seconds`` in all (the --minutes budget), counting
    the seconds of earlier sessions of the run (``train_time.json``, written with every checkpoint).

    Stopping sets ``total_steps`` to the current step inside the update, so the loop ends as at the
    last step of a run: its log line, checkpoint, loss curve and final samples are written.  ``clock``
    is ``time.perf_counter`` (tests pass a counter, so no test depends on the machine's speed)."""

    def __init__(self, *args, seconds: float | None = None, clock=time.perf_counter, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds, self.clock = seconds, clock
        self.seconds_before, self._session_start = 0.0, None

    def trained_seconds(self) -> float:
        running = 0.0 if self._session_start is None else self.clock() - self._session_start
        return self.seconds_before + running

    def restore(self, checkpoint: dict):
        super().restore(checkpoint)
        recorded = read_json(self.out / TIME_NAME)
        self.seconds_before = float(recorded["seconds"]) if recorded else 0.0

    def train(self) -> int:
        self._session_start = self.clock()
        try:
            return super().train()
        finally:
            self.seconds_before, self._session_start = self.trained_seconds(), None

    def update(self, record: dict) -> dict:
        record = super().update(record)
        if self.seconds is not None and self.trained_seconds() >= self.seconds:
            self.total_steps = self.step
        return record

    def save(self) -> Path:
        path = super().save()
        write_json(self.out / TIME_NAME, {"step": self.step, "seconds": self.trained_seconds()})
        return path


def budget_of(steps: int | None, minutes: float | None) -> dict:
    return {"steps": steps, "minutes": minutes}


# what may differ between the sessions of one variant without changing what it trains
# (the budget, steps/epochs, is checked on its own)
FREE_ON_RESUME = ("device", "workers", "backend", "world_size", "ckpt_every", "log_every", "sample_every", "sample_num", "sample_steps",
                  "cfg_scale", "guidance_min_t", "sample_variance", "steps", "epochs")


def train_variant(config: TrainConfig, images, labels, out: Path, *, budget: dict, progress: bool = False,
                  clock=time.perf_counter) -> tuple[int, str]:
    """Train one variant's run folder to ``budget`` ({"steps", "minutes"}), continuing what is there.

    Returns (exit code, what happened: "trained", "resumed" or "done already"); 0 when the budget
    is spent, 128 + the signal number when a signal stopped it (its checkpoint is saved).  A folder
    trained with other options than ``config`` is a one-line CheckpointError (never silently reused)."""
    out = Path(out)
    checkpoint = None
    if (out / CHECKPOINT_NAME).exists():
        checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
        try:
            saved = TrainConfig.from_dict(checkpoint["config"], source=f"checkpoint {checkpoint['path']}")
        except ValueError as error:
            raise CheckpointError(str(error)) from error
        differ = [name for name in (FIXED_ON_RESUME + tuple(f.name for f in dataclasses.fields(TrainConfig)))
                  if name not in FREE_ON_RESUME and getattr(saved, name) != getattr(config, name)]
        if differ:
            name = differ[0]
            raise CheckpointError(f"run folder {out} holds a run trained with {name} {getattr(saved, name)!r}, not "
                                  f"{getattr(config, name)!r} ({variant_flags(saved)}); rerun the ablation with the "
                                  "options it was started with, or choose another --out")
        done = read_json(out / DONE_NAME)
        if done is not None and done.get("budget") == budget:
            return 0, "done already"
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_NAME).unlink(missing_ok=True)  # trained further from here on: not done until it says so
    seconds = None if budget["minutes"] is None else 60.0 * budget["minutes"]
    trainer = BudgetedTrainer(config, images, labels, out, progress=progress, seconds=seconds, clock=clock)
    if checkpoint is not None:
        check_compatible(checkpoint, trainer.model, checkpoint["path"])
        trainer.restore(checkpoint)
    (out / "config.json").write_text(trainer.config.to_json(indent=2) + "\n")
    code = trainer.train()
    if code == 0:
        write_json(out / DONE_NAME, {"budget": budget, "step": trainer.step, "seconds": trainer.trained_seconds()})
    return code, "resumed" if checkpoint is not None else "trained"


def training_record(out: Path) -> dict:
    """From a trained folder: the steps, the seconds trained, the training images/s and the final loss
    (the mean of the last tenth of the logged losses, at least one)."""
    done = read_json(out / DONE_NAME) or {}
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines() if line.strip()] \
        if (out / LOG_NAME).exists() else []
    records = [r for r in records if "loss" in r]
    tail = records[-max(1, len(records) // 10):] if records else []
    speeds = [r["images_per_second"] for r in records if "images_per_second" in r]
    return {"step": done.get("step"), "train_seconds": done.get("seconds"),
            "images_per_second": speeds[-1] if speeds else None,  # the rate of the last training session
            "final_loss": float(np.mean([r["loss"] for r in tail])) if tail else None,
            "losses": [(r["step"], r["loss"]) for r in records]}


# ----- the report -----

COLUMNS = [  # (key in a row, heading, format)
    ("name", "variant", "{}"), ("changes", "what it changes", "{}"), ("flags", "minisdit.train flags", "{}"), ("parameters", "parameters", "{:,}"),
    ("step", "steps", "{}"), ("images_per_second", "train img/s", "{:.1f}"), ("final_loss", "final loss", "{:.4f}"),
    ("fid_lenet", "FID_LeNet", "{:.2f}"), ("is_lenet", "IS (LeNet)", "{:.3f}"),
    ("label_accuracy", "LeNet reads the class", "{:.1%}"), ("mean_firing_rate", "mean firing rate", "{:.4f}"),
    ("snn_energy_uj", "SNN energy (µJ)", "{:.3f}"), ("energy_ratio", "SNN / ANN energy", "{:.2f}"),
]


def _cell(value, form: str) -> str:
    return "n/a" if value is None else form.format(value)


def guidance_interval(settings: dict) -> str:
    """" at t >= 200" when the guidance was cut below a timestep; nothing when it acted at every step."""
    cut = settings["guidance_min_t"]
    return f" at t >= {cut}" if cut else ""


def markdown_table(rows: list[dict], settings: dict) -> str:
    """``ablation.md``: what was compared and how (N, sampler, steps, guidance, seed), then the table."""
    lines = [f"# Ablation: {settings['dataset']}, preset {settings['preset']}", "",
             f"Every variant: seed {settings['seed']} (the same initial draws, data order, t and ε per step), "
             f"batch {settings['batch_size']}, budget {settings['budget_text']}, device {settings['device']}.",
             f"Evaluation: N = {settings['num_samples']} samples (labels cycling 0..{settings['num_classes'] - 1}), "
             f"sampler {settings['sampler']}, {settings['sample_steps']} steps, guidance (cfg) {settings['cfg_scale']}"
             f"{guidance_interval(settings)}, {settings['sample_variance']} variance, "
             f"sampling seed {settings['seed']}; FID_LeNet and IS against the {settings['dataset']} test split; "
             "\"LeNet reads the class\": the share of samples LeNet classifies as the class they were drawn for; "
             "firing rates and energy (45 nm estimate, docs/DESIGN.md §5) over one 20-step sampling run of 16 images.",
             "One seed and a small budget: differences smaller than the run-to-run spread of other seeds mean nothing.",
             "", "| " + " | ".join(heading for _, heading, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), form) for key, _, form in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _save_figure(figure: Figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # renamed: never a truncated picture
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def samples_figure(grids: list[tuple[str, np.ndarray]], path: Path) -> Path:
    """One PNG of every variant's sample grid side by side, each titled with its name.
    ``grids``: [(name, uint8 images (n, C, H, W))], one class per column."""
    pictures = [(name, make_grid(images, columns=min(len(images), 10))) for name, images in grids]
    width = 3.0  # inches per variant; the height follows the grids' shape, plus room for the titles
    height = width * max(grid.shape[0] / grid.shape[1] for _, grid in pictures) + 0.5
    figure = Figure(figsize=(width * len(pictures), height))
    for axis, (name, grid) in zip(np.atleast_1d(figure.subplots(1, len(pictures))), pictures):
        axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    return _save_figure(figure, path)


def losses_figure(curves: list[tuple[str, list]], path: Path, title: str) -> Path:
    """One plot of every variant's training loss against the step (a running mean when long)."""
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for name, points in curves:
        if not points:
            continue
        steps, losses = np.array(points, dtype=float).T
        window = max(1, len(losses) // 20)
        if window > 1:
            steps, losses = steps[window - 1:], np.convolve(losses, np.ones(window) / window, mode="valid")
        axis.plot(steps, losses, label=name)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_yscale("log")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, path)


def write_report(out: Path, rows: list[dict], settings: dict, grids, curves) -> dict:
    """Write ablation.md, ablation.json, samples.png and losses.png into ``out``; return their paths."""
    out = Path(out)
    paths = {"markdown": out / "ablation.md", "json": out / "ablation.json", "samples": out / "samples.png",
             "losses": out / "losses.png"}
    paths["markdown"].write_text(markdown_table(rows, settings))
    write_json(paths["json"], {"settings": settings, "variants": rows})
    samples_figure(grids, paths["samples"])
    losses_figure(curves, paths["losses"], f"{settings['dataset']}, preset {settings['preset']}: training loss")
    return paths


def describe(fields: dict) -> str:
    """What a variant changes, in words ("the paper's model" for none)."""
    if not fields:
        return "the paper's model"
    return "; ".join(f"{MEANINGS[name]}{'' if isinstance(value, bool) else f' = {value}'}"
                     for name, value in fields.items())


def with_variant(config: TrainConfig, fields: dict) -> TrainConfig:
    return dataclasses.replace(config, **fields)
