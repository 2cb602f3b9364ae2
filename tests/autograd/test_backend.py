"""Choosing a device: NumPy for "cpu", CuPy for "gpu", and one clear error when the GPU is not there.

A missing CuPy is simulated with ``sys.modules["cupy"] = None`` (import then fails), so these tests
run the same with or without CuPy installed.
"""
import sys
import types

import numpy as np
import pytest

from minisdit import Tensor, backend, nn
from minisdit.autograd.backend import DeviceUnavailableError


@pytest.fixture
def without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backend, "_cupy_module", None)  # forget a CuPy imported by earlier tests


def fake_cupy(device_count=1, kernel=None, matmul=None):
    """A stand-in module for CuPy, on NumPy arrays: its CUDA runtime reports ``device_count`` (or
    raises it), its RawKernel runs ``kernel(x)`` (default: the probe's x += 1) and ``@`` runs
    ``matmul(a, b)`` (default: NumPy's).  An Exception in place of either is raised by it."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    def act(behaviour, default):
        def run(*args):
            if isinstance(behaviour, Exception):
                raise behaviour
            return (behaviour or default)(*args)
        return run

    class Array(np.ndarray):
        def __matmul__(self, other):
            return act(matmul, np.matmul)(np.asarray(self), np.asarray(other))

    def raw_kernel(source, name):
        assert "minisdit_probe" in source and name == "minisdit_probe"
        compiled = act(kernel, lambda x: x.__iadd__(1))
        return lambda grid, block, args: compiled(args[0])

    return types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count)),
        float32=np.float32, int32=np.int32, RawKernel=raw_kernel,
        zeros=lambda *a, **k: np.zeros(*a, **k).view(Array), ones=lambda *a, **k: np.ones(*a, **k).view(Array))


@pytest.fixture
def with_cupy(monkeypatch):
    """Install ``fake_cupy(**behaviour)`` as the module ``cupy`` (nothing imported before counts)."""
    def install(**behaviour):
        module = fake_cupy(**behaviour)
        monkeypatch.setitem(sys.modules, "cupy", module)
        monkeypatch.setattr(backend, "_cupy_module", None)
        return module
    return install


def assert_one_clear_line(error):
    message = str(error)
    assert "\n" not in message
    assert "'gpu'" in message
    return message


@pytest.mark.parametrize("ask", [
    lambda: backend.get_array_module("gpu"),
    lambda: Tensor(np.zeros(3), device="gpu"),
    lambda: Tensor(np.zeros(3)).to("gpu"),
    lambda: backend.to_device(np.zeros(3), "gpu"),
    lambda: nn.Linear(2, 2).to(device="gpu"),
], ids=["get_array_module", "Tensor(device=)", "Tensor.to", "to_device", "Module.to"])
def test_gpu_without_cupy_says_how_to_install_it(without_cupy, ask):
    with pytest.raises(DeviceUnavailableError) as caught:
        ask()
    message = assert_one_clear_line(caught.value)
    assert 'pip install -e ".[gpu12]" (CUDA 12) or ".[gpu13]" (CUDA 13)' in message
    assert "needs CuPy" in message and "import of cupy halted" in message  # the real reason is shown
    assert isinstance(caught.value.__cause__, ImportError)      # and kept, not swallowed
    assert not backend.gpu_available()


def test_cupy_without_a_reachable_gpu(with_cupy):
    with_cupy(device_count=RuntimeError("cudaErrorNoDevice: no CUDA-capable device"))
    with pytest.raises(DeviceUnavailableError) as caught:
        backend.get_array_module("gpu")
    message = assert_one_clear_line(caught.value)
    assert "cudaErrorNoDevice" in message and "--device cpu" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_cupy_with_zero_gpus(with_cupy):
    with_cupy(device_count=0)
    with pytest.raises(DeviceUnavailableError, match="none was found") as caught:
        backend.get_array_module("gpu")
    assert_one_clear_line(caught.value)


class CompileException(Exception):
    """Like cupy.cuda.compiler.CompileException: the message is NVRTC's log, several lines long."""


def test_a_kernel_that_cannot_compile_is_one_line_naming_nvrtc(with_cupy):
    log = "nvrtc: error: failed to open libnvrtc-builtins.so.12\nmake sure that libnvrtc-builtins.so.12 is installed"
    with_cupy(kernel=CompileException(log + "\n" + "x" * 1000))
    reason = backend.gpu_unavailable_reason()
    assert "\n" not in reason and "needs NVRTC" in reason
    assert "CompileException: nvrtc: error: failed to open libnvrtc-builtins.so.12 make sure" in reason  # the real reason
    assert "x" * backend.MAX_REASON_CHARS not in reason and "xxx...)" in reason  # the log is cut
    assert ".[gpu12]" in reason and "--device cpu" in reason
    with pytest.raises(DeviceUnavailableError) as caught:
        backend.get_array_module("gpu")
    assert isinstance(caught.value.__cause__, CompileException) and str(caught.value.__cause__).endswith("x" * 1000)
    assert not backend.gpu_available()


def test_a_kernel_that_computes_wrongly_is_refused(with_cupy):
    with_cupy(kernel=lambda x: x)  # launches, but writes nothing
    reason = backend.gpu_unavailable_reason()
    assert "\n" not in reason and "test kernel ran but computed 0 instead of 64" in reason


def test_a_failing_gemm_is_one_line_naming_cublas(with_cupy):
    with_cupy(matmul=RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED"))
    with pytest.raises(DeviceUnavailableError) as caught:
        backend.get_array_module("gpu")
    message = assert_one_clear_line(caught.value)
    assert "needs cuBLAS" in message and "RuntimeError: CUBLAS_STATUS_NOT_INITIALIZED" in message
    assert isinstance(caught.value.__cause__, RuntimeError)
    with_cupy(matmul=lambda a, b: 2 * np.matmul(a, b))
    assert "a test GEMM computed 128 instead of 64" in backend.gpu_unavailable_reason()


def test_a_working_gpu_is_probed_once_and_kept(with_cupy):
    module = with_cupy()
    assert backend.gpu_unavailable_reason() is None and backend.gpu_available()
    assert backend.get_array_module("gpu") is module
    module.RawKernel = None  # a second probe would fail: the checked module is kept instead
    assert backend.get_array_module("gpu") is module


@pytest.mark.parametrize("ask", [lambda: backend.get_array_module("tpu"), lambda: Tensor(np.zeros(2), device="cuda"),
                                 lambda: backend.to_device(np.zeros(2), "GPU")])
def test_unknown_device_is_refused_with_the_choices(ask):
    with pytest.raises(ValueError, match=r"unknown device '(tpu|cuda|GPU)'; choose one of cpu, gpu"):
        ask()


def test_cpu_is_numpy():
    assert backend.get_array_module("cpu") is np
    assert backend.get_array_module() is np
    array = np.arange(3.0)
    assert backend.array_module_of(array) is np
    assert backend.device_of(array) == "cpu" and not backend.is_gpu_array(array)
    assert backend.to_device(array, "cpu") is array
    assert backend.to_numpy(array) is array
    assert Tensor(array, device="cpu").device == "cpu"


def test_the_device_fixture_round_trips_arrays(device):
    array = np.arange(6.0).reshape(2, 3)
    moved = backend.to_device(array, device)
    assert backend.device_of(moved) == device
    assert backend.array_module_of(moved) is backend.get_array_module(device)
    np.testing.assert_array_equal(backend.to_numpy(moved), array)
    t = Tensor(array, device=device)
    assert t.device == device and t.xp is backend.get_array_module(device)
