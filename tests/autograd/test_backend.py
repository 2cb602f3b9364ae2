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


def fake_cupy(device_count):
    """A stand-in module for CuPy whose CUDA runtime reports ``device_count`` (or raises it)."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count)))


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
    assert 'pip install -e ".[gpu]"' in message
    assert "needs CuPy" in message and "import of cupy halted" in message  # the real reason is shown
    assert isinstance(caught.value.__cause__, ImportError)      # and kept, not swallowed
    assert not backend.gpu_available()


def test_cupy_without_a_reachable_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(RuntimeError("cudaErrorNoDevice: no CUDA-capable device")))
    monkeypatch.setattr(backend, "_cupy_module", None)
    with pytest.raises(DeviceUnavailableError) as caught:
        backend.get_array_module("gpu")
    message = assert_one_clear_line(caught.value)
    assert "cudaErrorNoDevice" in message and "--device cpu" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_cupy_with_zero_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(0))
    monkeypatch.setattr(backend, "_cupy_module", None)
    with pytest.raises(DeviceUnavailableError, match="none was found") as caught:
        backend.get_array_module("gpu")
    assert_one_clear_line(caught.value)


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
