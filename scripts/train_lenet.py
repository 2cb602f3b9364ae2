"""Train the evaluation LeNet on the real training split and ship it with its test statistics.

    python scripts/train_lenet.py mnist          # or fashion-mnist
    python scripts/train_lenet.py fashion-mnist --epochs 6 --out minisdit/weights

AdamW (minisdit.optim, lr 3e-3 with a cosine decay to 0 over the run, weight decay 1e-4), batch 128,
float32, on the CPU or the GPU.  After training it measures the test accuracy, computes the
mean and covariance of the 128-d penultimate features over the whole test split, and writes
``lenet_<dataset>.safetensors`` (weights, statistics, and metadata: test accuracy, epochs,
training seconds, seed).  Needs the data set in the cache: ``python -m minisdit.data fetch NAME``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minisdit import backend  # noqa: E402
from minisdit.data import load_dataset  # noqa: E402
from minisdit.metrics.fid import FeatureStatistics  # noqa: E402
from minisdit.metrics.layers import cross_entropy  # noqa: E402
from minisdit.metrics.lenet import DATASETS, LeNet, images_to_input, lenet_features, lenet_probabilities, save_lenet  # noqa: E402
from minisdit.autograd.optim import AdamW  # noqa: E402
from minisdit.autograd.tensor import Tensor  # noqa: E402


def accuracy(model, images, labels) -> float:
    model.eval()
    predictions = lenet_probabilities(images, model).argmax(axis=1)
    model.train()
    return float((predictions == labels).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--channels", type=int, nargs=2, default=[8, 16], help="widths of the two conv layers")
    parser.add_argument("--hidden", type=int, default=128, help="size of the penultimate (feature) layer")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "minisdit" / "weights")
    args = parser.parse_args(argv)

    train_images, train_labels = load_dataset(args.dataset, "train", args.data_dir)
    test_images, test_labels = load_dataset(args.dataset, "test", args.data_dir)
    xp = backend.get_array_module(args.device)
    rng = np.random.default_rng(args.seed)
    model = LeNet(channels=args.channels, hidden=args.hidden, rng=args.seed)
    if args.device != "cpu":
        model.to(device=args.device)
    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)
    total_steps, step = args.epochs * steps_per_epoch, 0

    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train_images))
        running = 0.0
        for start in range(0, len(order), args.batch_size):
            index = order[start:start + args.batch_size]
            x = Tensor(images_to_input(xp.asarray(train_images[index])))
            optimizer.lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))  # cosine decay
            loss = cross_entropy(model(x), xp.asarray(train_labels[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
        elapsed = time.perf_counter() - started
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {running / steps_per_epoch:.4f}, "
              f"test accuracy {accuracy(model, test_images, test_labels):.4f} ({elapsed:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started

    model.eval()
    test_accuracy = accuracy(model, test_images, test_labels)
    statistics = FeatureStatistics.from_features(lenet_features(test_images, model))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lenet_{args.dataset}.safetensors"
    model.to(device="cpu")
    save_lenet(path, model, statistics, {
        "dataset": args.dataset, "test_accuracy": test_accuracy, "test_count": int(len(test_images)),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "seed": args.seed, "train_seconds": round(train_seconds, 1), "device": args.device,
        "features": f"fc1 ReLU output ({args.hidden}-d)", "input": "uint8 u -> u / 127.5 - 1",
    })
    print(f"test accuracy {test_accuracy:.4f}; trained in {train_seconds:.0f} s; wrote {path} "
          f"({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
