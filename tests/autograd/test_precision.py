"""The TF32 setting (minisdit/autograd/precision.py): what it writes for CuPy, and that it is scoped."""
import os
import sys
import types

import numpy as np
import pytest

from minisdit.autograd import precision


@pytest.fixture
def clean_precision(monkeypatch):
    """Each test starts from the default and leaves the process as it found it."""
    monkeypatch.delenv("CUPY_TF32", raising=False)
    previous = precision.set_matmul_precision("fp32")
    yield
    precision.set_matmul_precision(previous)


def test_the_default_is_exact_float32():
    assert precision.DEFAULT_PRECISION == "fp32"


def test_setting_writes_the_variable_that_cupy_reads(clean_precision):
    assert precision.set_matmul_precision("tf32") == "fp32"
    assert (precision.get_matmul_precision(), os.environ["CUPY_TF32"]) == ("tf32", "1")
    assert precision.set_matmul_precision("fp32") == "tf32"
    assert (precision.get_matmul_precision(), os.environ["CUPY_TF32"]) == ("fp32", "0")


def test_the_block_restores_the_previous_precision(clean_precision):
    with pytest.raises(RuntimeError):
        with precision.matmul_precision("tf32"):
            assert precision.get_matmul_precision() == "tf32"
            raise RuntimeError("the block failed")
    assert (precision.get_matmul_precision(), os.environ["CUPY_TF32"]) == ("fp32", "0")


def test_an_already_imported_cupy_is_made_to_read_the_variable_again(clean_precision, monkeypatch):
    """CuPy caches CUPY_TF32 at its first GEMM; the setter puts that cache back to 'to be decided'.
    No GPU here: a stand-in for cupy._core._routines_linalg records the call."""
    calls = []
    linalg = types.SimpleNamespace(COMPUTE_TYPE_TBD=0, set_compute_type=lambda dtype, kind: calls.append((dtype, kind)))
    core = types.SimpleNamespace(_routines_linalg=linalg)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(_core=core))
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    precision.set_matmul_precision("tf32")
    assert calls == [(np.float32, 0)]


def test_an_unknown_precision_says_what_to_use(clean_precision):
    with pytest.raises(ValueError, match="unknown matmul precision 'bf16'; use 'fp32' .* or 'tf32'"):
        precision.set_matmul_precision("bf16")
    assert precision.get_matmul_precision() == "fp32"


def test_train_takes_tf32_as_an_explicit_flag_off_by_default():
    from minisdit.cli.train import build_parser

    assert build_parser().parse_args([]).tf32 is False
    assert build_parser().parse_args(["--tf32"]).tf32 is True
    assert build_parser().parse_args(["--no-tf32"]).tf32 is False
