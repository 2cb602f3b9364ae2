"""Export a training checkpoint as a shipped pretrained model: minisdit/pretrained/<name>.{safetensors,json}.

    python scripts/export_pretrained.py --ckpt runs/mnist-tiny/checkpoint.safetensors --name mnist-tiny \
        [--eval-json runs/mnist-tiny/eval.json] [--recipe "python -m minisdit.train --dataset mnist"] [--placeholder]

The .safetensors keeps the model's weights only (the EMA copy when the checkpoint has one, else the
model's), as float32, with the run's config and step, and no optimizer state: a checkpoint that
``minisdit.training.load_model`` reads like any other, small enough to ship (under 1 MB for ``tiny``).
The .json records which weights were kept, the recipe, the step, the config, and the scores that
``python -m minisdit.evaluate`` wrote to its eval.json (``--eval-json``), so that the tutorials read
the numbers instead of quoting them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from minisdit.pretrained import FOLDER
from minisdit.training import CheckpointError, load_checkpoint, load_model, save_checkpoint


def export(ckpt: Path, name: str, out_dir: Path, recipe: str | None, eval_json: Path | None,
           placeholder: bool) -> tuple[Path, Path]:
    checkpoint = load_checkpoint(ckpt)
    which = "ema" if checkpoint["ema"] is not None else "model"
    weights = {key: np.asarray(value, dtype=np.float32) for key, value in checkpoint[which].items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file = out_dir / f"{name}.safetensors"
    save_checkpoint(weights_file, model_state=weights, step=checkpoint["step"], config=checkpoint["config"],
                    rng_states=checkpoint["rng_states"],
                    extra={"exported_from": str(ckpt), "weights": which})
    load_model(weights_file)  # the exported file must load as the model it came from
    info = {
        "name": name,
        "placeholder": placeholder,
        "recipe": recipe,
        "step": checkpoint["step"],
        "weights": which,
        "parameters": int(sum(value.size for value in weights.values())),
        "bytes": weights_file.stat().st_size,
        "config": checkpoint["config"],
        "scores": json.loads(eval_json.read_text()) if eval_json else None,
    }
    info_file = weights_file.with_suffix(".json")
    info_file.write_text(json.dumps(info, indent=2, sort_keys=True, default=float) + "\n")
    return weights_file, info_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, type=Path, help="a checkpoint.safetensors written by minisdit.train")
    parser.add_argument("--name", required=True, help="the pretrained name, e.g. mnist-tiny")
    parser.add_argument("--out-dir", type=Path, default=FOLDER, help="default: the package's minisdit/pretrained/")
    parser.add_argument("--recipe", default=None, help="the command that trained the checkpoint (recorded in the JSON)")
    parser.add_argument("--eval-json", type=Path, default=None, help="the eval.json of python -m minisdit.evaluate")
    parser.add_argument("--placeholder", action="store_true", help="mark the export as a stand-in from a short run")
    args = parser.parse_args(argv)
    if args.eval_json is not None and not args.eval_json.exists():
        parser.error(f"--eval-json {args.eval_json} does not exist; run python -m minisdit.evaluate --json PATH first")
    try:
        weights_file, info_file = export(args.ckpt, args.name, args.out_dir, args.recipe, args.eval_json, args.placeholder)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {weights_file} ({weights_file.stat().st_size:,} bytes) and {info_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
