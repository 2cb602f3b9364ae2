"""Count the device kernels one training step launches, on the CPU, through the code path of the GPU.

On a GPU every array operation of a step is at least one kernel launch, and at SDiT's sizes a step
is bound by launches rather than by arithmetic, so their number is the figure to bring down.  No
GPU is needed to count them: the step runs on NumPy arrays that stand in for CuPy's.

* ``DeviceArray`` is a NumPy array that, like a CuPy array, counts as one launch each
  elementwise operation (a ufunc call, e.g. ``a + b``, ``xp.exp(x)``, ``y += b``), reduction
  (``x.sum()``, ``x.mean()``, ``x.max()``), matrix product (``a @ b``: one GEMM, whatever its
  batch), copy (``x.copy()``, ``astype``, a reshape or ``ascontiguousarray`` that must copy,
  ``concatenate``, ``pad``, ``where``, ...), gather (advanced indexing) and scatter (``x[i] = v``,
  ``add.at``).  Views (basic slicing, ``transpose``, ``reshape`` of contiguous data,
  ``broadcast_to``) launch nothing, as on CuPy.
* ``backend.array_module_of`` answers such an array with ``CountingModule``, the array module that
  plays CuPy: its ``zeros``/``ones``/``full`` (and ``*_like``) launch one fill each, ``empty``
  none; ``asarray`` of host data is a host-to-device copy (counted apart, as ``transfers``: no
  kernel; its bytes are summed in ``host_to_device_bytes``).
* reading a DeviceArray on the host is a device-to-host copy, which on a GPU also waits for every
  kernel queued before it: ``float()``, ``int()``, ``bool()`` (an ``if`` on an array),
  ``.item()``, ``.tolist()``, ``.get()``, formatting, and ``backend.to_numpy``/``to_device(.., "cpu")``.
  They are no launches; ``device_to_host`` counts them apart, with where each came from
  (``device_to_host_sites``), so that a test can assert that a step has none.  Because it is not NumPy itself, the ops take their GPU branches (``cupyx.scatter_add``
  is played by ``add.at``).
* ``Linear`` takes the GPU's flattened products (``nn_ops.ONE_GEMM_ON_CPU``), copies included, and
  LayerNorm and the token shift their kernels (``kernels.layernorm.KERNELS_ON_CPU``,
  ``rwkv.shift_mix.KERNELS_ON_CPU``: on the CPU they otherwise keep their bitwise references), and
  TimeMix's gate runs inside the WKV kernels (``wkv_operator.GATE_IN_KERNEL_ON_CPU``), as on a GPU.
* every ``.cu`` RawKernel launch (``kernels.runtime.launch``) is one launch, with the ops inside
  ``cpu_kernels()`` so that they run their kernels, as they do on a GPU.

A composed operation counts once even when NumPy builds it from several (its inner operations run
uncounted); a CuPy routine that launches two kernels for one NumPy call (some reductions,
``pad``) is counted as one, so the figures are a lower bound, exact for elementwise ops, GEMMs and
RawKernels.  Not counted: cuBLAS's own helper kernels and the memory allocator (no launches).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from ..autograd import backend, nn_ops
from ..autograd.tensor import Tensor
from ..kernels import layernorm, runtime
from ..rwkv import shift_mix, wkv_operator
from ..training.config import RECIPES
from ..training.trainer import Trainer

PHASES = ("forward", "backward", "optimizer")


class _State:
    counter = None  # the LaunchCounter being filled, None when nothing is counted
    phase = "forward"
    depth = 0  # > 0 inside a counted operation: its inner operations are part of it


def _count(kind: str, amount: int = 1):
    if _State.counter is not None and _State.depth == 0:
        _State.counter.counts[(_State.phase, kind)] += amount


def _count_to_host():
    """One device-to-host copy (a blocking read on a GPU), with the line of the library that asked."""
    if _State.counter is not None and _State.depth == 0:
        _State.counter.device_to_host += 1
        _State.counter.device_to_host_sites.append(_caller())


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in (__file__, backend.__file__):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


@contextlib.contextmanager
def _inside():
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1


def _plain(value):
    """The same data as plain NumPy arrays (so that NumPy's own code does not count again)."""
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _device(value):
    """Results back as DeviceArrays; a NumPy scalar becomes a 0-d array, as CuPy returns."""
    if isinstance(value, np.ndarray):
        return value if isinstance(value, DeviceArray) else value.view(DeviceArray)
    if isinstance(value, np.generic):
        return np.array(value).view(DeviceArray)
    if isinstance(value, (list, tuple)):
        return type(value)(_device(item) for item in value)
    return value


def _is_view_of(result, source) -> bool:
    return isinstance(result, np.ndarray) and np.may_share_memory(result, source)


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(part, (int, np.integer, slice)) or part is None or part is Ellipsis for part in parts)


REDUCTIONS = {"sum", "mean", "max", "min", "amax", "amin", "prod", "var", "std", "any", "all", "argmax", "argmin",
              "count_nonzero", "norm", "array_equal", "allclose"}
PRODUCTS = {"dot", "matmul", "tensordot", "einsum", "inner", "outer", "vdot"}
VIEWS = {"broadcast_to", "expand_dims", "swapaxes", "transpose", "moveaxis", "rollaxis", "squeeze", "split", "array_split",
         "shape", "ndim", "size", "result_type", "may_share_memory", "shares_memory", "iscomplexobj", "isrealobj",
         "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_arrays"}


class DeviceArray(np.ndarray):
    """A NumPy array that counts the kernels its operations would launch on a GPU (module docstring)."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul:
            _count("gemm")
        elif method in ("reduce", "accumulate", "reduceat"):
            _count("reduction")
        elif method == "at":
            _count("scatter")
        else:
            _count("elementwise")
        out = kwargs.get("out")
        with _inside():
            result = getattr(ufunc, method)(*_plain(inputs), **_plain(kwargs))
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        name = func.__name__
        if name not in VIEWS:
            _count("reduction" if name in REDUCTIONS else "gemm" if name in PRODUCTS else "copy")
        with _inside():
            result = func(*_plain(args), **_plain(kwargs))
        return _device(result)

    # methods whose NumPy implementation is several ufunc calls, or that copy without a ufunc
    def mean(self, *args, **kwargs):
        _count("reduction")
        with _inside():
            return _device(self.view(np.ndarray).mean(*args, **_plain(kwargs)))

    def var(self, *args, **kwargs):
        _count("reduction")
        with _inside():
            return _device(self.view(np.ndarray).var(*args, **_plain(kwargs)))

    def copy(self, order="C"):
        _count("copy")
        return _device(self.view(np.ndarray).copy(order))

    def astype(self, dtype, *args, **kwargs):
        plain = self.view(np.ndarray)
        result = plain.astype(dtype, *args, **kwargs)
        if not _is_view_of(result, plain):
            _count("copy")
        return _device(result)

    def reshape(self, *shape, **kwargs):
        plain = self.view(np.ndarray)
        result = plain.reshape(*shape, **kwargs)
        if not _is_view_of(result, plain):
            _count("copy")
        return _device(result)

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def flatten(self, order="C"):
        _count("copy")
        return _device(self.view(np.ndarray).flatten(order))

    def fill(self, value):
        _count("fill")
        self.view(np.ndarray).fill(value)

    def __getitem__(self, index):
        if not _is_basic_index(index):
            _count("gather")
        result = self.view(np.ndarray)[_plain(index)]
        return _device(result)

    def __setitem__(self, index, value):
        _count("scatter" if not _is_basic_index(index) else "copy")
        self.view(np.ndarray)[_plain(index)] = _plain(value)

    # reads on the host: device-to-host copies (no launch)
    def _on_host(self):
        _count_to_host()
        return self.view(np.ndarray)

    def __float__(self): return float(self._on_host())
    def __int__(self): return int(self._on_host())
    def __index__(self): return self._on_host().__index__()
    def __bool__(self): return bool(self._on_host())
    def __format__(self, spec): return format(self._on_host(), spec)
    def item(self, *args): return self._on_host().item(*args)
    def tolist(self): return self._on_host().tolist()
    def get(self): return self._on_host().copy()  # CuPy's copy to a host array


class CountingModule(types.ModuleType):
    """The array module of DeviceArrays: NumPy's functions, with array creation on the "device"."""

    def __init__(self):
        super().__init__("minisdit_counting_numpy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def _filled(array):
        _count("fill")
        return array.view(DeviceArray)

    def zeros(self, *args, **kwargs): return self._filled(np.zeros(*args, **kwargs))
    def ones(self, *args, **kwargs): return self._filled(np.ones(*args, **kwargs))
    def full(self, *args, **kwargs): return self._filled(np.full(*args, **kwargs))
    def zeros_like(self, a, *args, **kwargs): return self._filled(np.zeros_like(_plain(a), *args, **kwargs))
    def ones_like(self, a, *args, **kwargs): return self._filled(np.ones_like(_plain(a), *args, **kwargs))
    def full_like(self, a, *args, **kwargs): return self._filled(np.full_like(_plain(a), *args, **kwargs))
    def empty(self, *args, **kwargs): return np.empty(*args, **kwargs).view(DeviceArray)
    def empty_like(self, a, *args, **kwargs): return np.empty_like(_plain(a), *args, **kwargs).view(DeviceArray)

    def asarray(self, a, dtype=None, **kwargs):
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        result = np.array(a, dtype=dtype, **kwargs)
        _count("transfers")  # host data to the device: a copy over PCIe, not a kernel
        if _State.counter is not None and _State.depth == 0:
            _State.counter.host_to_device_bytes += result.nbytes
        return result.view(DeviceArray)

    array = asarray

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, DeviceArray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        if not isinstance(a, DeviceArray):
            return self.asarray(np.ascontiguousarray(a, dtype=dtype))
        _count("copy")
        return np.ascontiguousarray(a.view(np.ndarray), dtype=dtype).view(DeviceArray)


_MODULE = CountingModule()


def _scatter_add(array, index, values):
    """``cupyx.scatter_add``, played by NumPy's unbuffered add."""
    _count("scatter")
    np.add.at(_plain(array), _plain(index), _plain(values))


@dataclasses.dataclass
class LaunchCounter:
    """Launches by (phase, kind); ``transfers`` are host-to-device copies, kept apart (no kernel), and
    ``host_to_device_bytes`` their size; ``device_to_host`` the reads on the host, each one's caller
    in ``device_to_host_sites``."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    host_to_device_bytes: int = 0
    device_to_host: int = 0
    device_to_host_sites: list = dataclasses.field(default_factory=list)

    def clear(self):
        self.counts.clear()
        self.host_to_device_bytes, self.device_to_host = 0, 0
        self.device_to_host_sites.clear()

    def launches(self, phase: str | None = None) -> int:
        return sum(n for (p, kind), n in self.counts.items() if kind != "transfers" and phase in (None, p))

    def by_kind(self, phase: str | None = None) -> dict:
        kinds = collections.Counter()
        for (p, kind), n in self.counts.items():
            if phase in (None, p):
                kinds[kind] += n
        return dict(sorted(kinds.items()))

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, _State.phase = _State.phase, name
        try:
            yield
        finally:
            _State.phase = previous

    @contextlib.contextmanager
    def counting(self):
        """Count into this counter: DeviceArrays answer to CountingModule, RawKernel launches count."""
        if _State.counter is not None:
            raise RuntimeError("a launch count is already running; counts do not nest")
        original_module_of, original_launch = backend.array_module_of, runtime.launch
        original_to_device = backend.to_device

        def array_module_of(array):
            return _MODULE if isinstance(array, DeviceArray) else original_module_of(array)

        def to_device(array, device):
            if device == "cpu" and isinstance(array, DeviceArray):
                return array.get()
            return original_to_device(array, device)

        def launch(kernel, threads, args, *rest, **kwargs):
            if threads:
                _count("raw kernel")
            return original_launch(kernel, threads, args, *rest, **kwargs)

        cupyx = types.ModuleType("cupyx")
        cupyx.scatter_add = _scatter_add
        saved_cupyx = sys.modules.get("cupyx")
        backend.array_module_of, runtime.launch, sys.modules["cupyx"] = array_module_of, launch, cupyx
        backend.to_device = to_device
        one_gemm_on_cpu, nn_ops.ONE_GEMM_ON_CPU = nn_ops.ONE_GEMM_ON_CPU, True  # the GPU's flattened products
        gpu_paths = (layernorm.KERNELS_ON_CPU, shift_mix.KERNELS_ON_CPU, wkv_operator.GATE_IN_KERNEL_ON_CPU)
        # the GPU's fused kernels: LayerNorm, the token shift, the gate inside WKV
        layernorm.KERNELS_ON_CPU = shift_mix.KERNELS_ON_CPU = wkv_operator.GATE_IN_KERNEL_ON_CPU = True
        _State.counter = self
        try:
            with runtime.cpu_kernels():
                yield self
        finally:
            _State.counter = None
            backend.array_module_of, runtime.launch = original_module_of, original_launch
            backend.to_device = original_to_device
            nn_ops.ONE_GEMM_ON_CPU = one_gemm_on_cpu
            layernorm.KERNELS_ON_CPU, shift_mix.KERNELS_ON_CPU, wkv_operator.GATE_IN_KERNEL_ON_CPU = gpu_paths
            if saved_cupyx is None:
                sys.modules.pop("cupyx", None)
            else:
                sys.modules["cupyx"] = saved_cupyx


def to_device_arrays(owner) -> None:
    """Turn the arrays an object holds (attributes, and lists/dicts of them) into DeviceArray views
    of the same memory, so that what is written through them lands where it did before."""
    for name, value in list(vars(owner).items()):
        if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
            setattr(owner, name, value.view(DeviceArray))
        elif isinstance(value, list):
            value[:] = [v.view(DeviceArray) if isinstance(v, np.ndarray) and not isinstance(v, DeviceArray) else v
                        for v in value]
        elif isinstance(value, dict):
            for key, v in value.items():
                if isinstance(v, np.ndarray) and not isinstance(v, DeviceArray):
                    value[key] = v.view(DeviceArray)


def flat_on_counting_device(flat) -> None:
    """Put a CPU ``FlatParameters`` on the stand-in device: the flat buffers first, then every
    parameter's data and gradient their views again (so that the optimizer's ``attach`` finds them
    in place, as on a GPU, and copies nothing, and backward writes into the same gradient views)."""
    flat.data, flat.grad, flat.xp = flat.data.view(DeviceArray), flat.grad.view(DeviceArray), _MODULE
    flat.data_views, flat.grad_views = flat.views(flat.data), flat.views(flat.grad)
    for parameter, data, grad in zip(flat.params, flat.data_views, flat.grad_views):
        parameter.data, parameter._grad_view = data, grad
        parameter.grad = None if parameter.grad is None else grad


def on_counting_device(trainer) -> None:
    """Put a CPU ``Trainer`` on the stand-in device: its weights, optimizer and EMA state become
    DeviceArrays and its array module ``CountingModule``, so that the data set and every batch
    cross to the "device" as they do on a GPU."""
    flat_on_counting_device(trainer.optimizer.flat)
    for parameter in trainer.model.parameters():  # any not in the optimizer
        parameter.data = parameter.data.view(DeviceArray)
    for owner in (trainer.optimizer, trainer.ema):
        if owner is not None:
            to_device_arrays(owner)
    trainer.xp = _MODULE


def count_training_step(preset: str, batch_size: int = 8, ema: float = 0.9999, grad_clip: float = 0.0) -> LaunchCounter:
    """Launches of one ``Trainer.train_step`` (its second: the first creates optimizer state), by phase.

    The GPU recipe (``RECIPES["gpu"]``) with ``preset`` and ``batch_size``, on random images of the
    preset's data set (MNIST's 1x28x28, CIFAR-10's 3x32x32 for paper-cifar); the number of launches
    does not depend on the batch size."""
    channels, size = (3, 32) if preset.endswith("cifar") else (1, 28)  # the data set each preset is for
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * batch_size, channels, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    config = dataclasses.replace(RECIPES["gpu"], device="cpu", preset=preset, batch_size=batch_size, steps=2,
                                 epochs=None, workers=1, ema=ema, grad_clip=grad_clip, in_channels=channels,
                                 input_size=size)
    counter = LaunchCounter()
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, images, labels, Path(folder), progress=False)
        try:
            on_counting_device(trainer)
            update, backward = trainer.update, Tensor.backward

            def counted_update(record):
                with counter.phase("optimizer"):
                    return update(record)

            def counted_backward(tensor, *args, **kwargs):
                with counter.phase("backward"):
                    return backward(tensor, *args, **kwargs)

            trainer.update = counted_update
            Tensor.backward = counted_backward
            try:
                with counter.counting():
                    trainer.train_step()  # creates the optimizer's state: not a typical step
                    counter.clear()
                    with counter.phase("forward"):
                        trainer.train_step()
            finally:
                Tensor.backward = backward
        finally:
            trainer.close()
    return counter
