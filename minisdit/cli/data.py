"""python -m minisdit.data fetch NAME [--data-dir DIR] [--file PATH]: fetch and verify a dataset."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from ..data import DATASETS, ENV_DATA_DIR, CIFAR_ARCHIVE, DataIntegrityError, FetchError, dataset_spec, fetch_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minisdit.data",
                                     description="Fetch and verify minisdit's datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download a dataset into the cache and check its MD5s")
    fetch.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    fetch.add_argument("--data-dir", default=None,
                       help=f"cache root (default: ${ENV_DATA_DIR}, else ~/.cache/minisdit)")
    fetch.add_argument("--file", default=None,
                       help=f"a local copy: {CIFAR_ARCHIVE} for cifar10, or a folder with the four "
                            f"IDX files (plain or .gz) for mnist / fashion-mnist; tried first")
    args = parser.parse_args(argv)
    try:
        started = time.monotonic()
        folder = fetch_dataset(args.name, args.data_dir, file=args.file)
        print(f"{dataset_spec(args.name).name}: ready in {folder} ({time.monotonic() - started:.1f} s)")
    except (ValueError, FetchError, DataIntegrityError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
