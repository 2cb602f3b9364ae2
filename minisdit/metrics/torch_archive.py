"""Read the arrays of a TorchScript archive (a ``.pt`` zip) without PyTorch and without running its code.

A TorchScript archive is a zip with one top folder holding

    data.pkl        the module tree: a pickle of objects whose state dicts hold attributes and tensors
    data/<key>      raw little-endian storages, one file per tensor storage
    code/           TorchScript source of the forward passes (read by humans here, never executed)
    constants.pkl, version

Pickles can name any Python callable and call it, so the unpickler here admits only the names a
tensor archive needs, each mapped to a function of ours:

    torch._utils._rebuild_tensor_v2   -> builds a NumPy array view of a storage
    torch.<Type>Storage               -> a dtype marker (FloatStorage -> float32, ...)
    torch.jit._pickle.build_intlist   -> list
    collections.OrderedDict           -> OrderedDict
    __torch__.<anything>              -> an inert ``ArchivedModule`` record (TorchScript classes)

Every other name raises ``UnsafeArchiveError`` before anything is called.  Storages arrive through
``persistent_load`` as ('storage', storage type, key, location, numel) and are read from
``data/<key>``.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np


class UnsafeArchiveError(pickle.UnpicklingError):
    """The archive's pickle names a global outside the short list a tensor archive needs."""


class ArchivedModule:
    """An inert stand-in for a TorchScript module: its class name and its pickled attributes."""

    qualified_name = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UnsafeArchiveError(f"{self.qualified_name}: expected a dict of attributes, got {type(state).__name__}")
        self.attributes = dict(state)

    def __repr__(self):
        return f"ArchivedModule({self.qualified_name})"


# storage type -> NumPy dtype (little-endian, as torch writes them)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """A copy of the strided view (offset, size, stride counted in elements) of a flat storage."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return np.array(storage[storage_offset])
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if storage_offset < 0 or min(stride) < 0 or last >= storage.size:
        raise UnsafeArchiveError(f"tensor of size {size} and stride {stride} at offset {storage_offset} "
                                 f"runs outside its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


def _build_intlist(values):
    return list(values)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages = {}
        self.module_classes = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return _build_intlist
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module.startswith("__torch__.") or module == "__torch__":
            # TorchScript classes: a fresh inert record type per class name (no methods run)
            key = f"{module}.{name}"
            if key not in self.module_classes:
                self.module_classes[key] = type(name, (ArchivedModule,), {"qualified_name": key})
            return self.module_classes[key]
        raise UnsafeArchiveError(f"refusing to load global {module}.{name}: a tensor archive needs only "
                                 f"tensors, storages and TorchScript module records")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeArchiveError(f"unexpected persistent id {pid!r}; expected ('storage', type, key, location, numel)")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            storage = np.frombuffer(raw, dtype=storage_type.dtype)
            if storage.size < int(numel):
                raise UnsafeArchiveError(f"storage {key} holds {storage.size} elements, the pickle says {numel}")
            self.storages[key] = storage
        return self.storages[key]


def _data_pickle_name(archive: zipfile.ZipFile) -> str:
    candidates = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(candidates) != 1:
        raise ValueError(f"{archive.filename}: not a TorchScript archive (expected one <folder>/data.pkl, found {candidates})")
    return candidates[0]


def load_archive(path_or_file) -> ArchivedModule:
    """The root module record of a TorchScript archive (attributes hold NumPy arrays)."""
    with zipfile.ZipFile(path_or_file) as archive:
        name = _data_pickle_name(archive)
        prefix = name[: -len("data.pkl")]
        return _RestrictedUnpickler(io.BytesIO(archive.read(name)), archive, prefix).load()


def loads_restricted(data: bytes, archive: zipfile.ZipFile | None = None, prefix: str = ""):
    """Unpickle ``data`` with the same restrictions (for tests and small pickles)."""
    return _RestrictedUnpickler(io.BytesIO(data), archive, prefix).load()


def named_arrays(root: ArchivedModule, prefix: str = "") -> "OrderedDict[str, np.ndarray]":
    """{dotted name: array} of every tensor attribute in the module tree, in pickle order."""
    arrays = OrderedDict()
    for key, value in root.attributes.items():
        if isinstance(value, np.ndarray):
            arrays[prefix + key] = value
        elif isinstance(value, ArchivedModule):
            arrays.update(named_arrays(value, prefix + key + "."))
    return arrays


def named_modules(root: ArchivedModule, prefix: str = ""):
    """Yield (dotted name, record) for every module in the tree, the root first (name "")."""
    yield prefix.rstrip("."), root
    for key, value in root.attributes.items():
        if isinstance(value, ArchivedModule):
            yield from named_modules(value, prefix + key + ".")
