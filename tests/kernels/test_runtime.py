"""minisdit/kernels/runtime.py: the argument convention of every .cu file, Kernels.run's checks, the
poisoned outputs of the checks, and the scoped CPU-kernel setting (blocks, forks, the CLI commands)."""
import multiprocessing

import numpy as np
import pytest

from minisdit.cli.common import configure_cpu_runtime, own_runtime_settings
from minisdit.kernel_checks import KERNEL_CHECKS
from minisdit.kernels import runtime

needs_compiler = pytest.mark.skipif(runtime.cpu_compiler() is None, reason="needs a C++ compiler (g++) for CPU kernels")


@pytest.mark.parametrize("name", sorted(KERNEL_CHECKS))
def test_every_kernel_file_follows_the_argument_convention_and_is_checked(name):
    check = KERNEL_CHECKS[name]
    signatures = runtime.kernel_signatures(runtime.kernel_source(check.KERNEL_FILE))  # raises if out of order
    assert set(signatures) == set(check.KERNELS)
    for parameters in signatures.values():
        groups = [runtime.argument_group(ctype) for ctype, _ in parameters]
        assert groups == sorted(groups, key=runtime.ARGUMENT_GROUPS.index)
        assert groups[0] == "input" and "output" in groups


def test_kernel_files_are_all_covered():
    files = {path.name for path in runtime.kernel_directory().glob("*.cu")}
    assert files == {check.KERNEL_FILE for check in KERNEL_CHECKS.values()}


def test_an_argument_out_of_order_is_refused_with_the_fix():
    source = 'extern "C" __global__ void k(const int n, const scalar_t* x, scalar_t* y) {}'
    with pytest.raises(runtime.KernelConventionError, match=r"n \(size\), x \(input\), y \(output\); reorder"):
        runtime.kernel_signatures(source)
    source = 'extern "C" __global__ void k(scalar_t* y, const scalar_t* x, int n, scalar_t a) {}'
    with pytest.raises(runtime.KernelConventionError, match="inputs, outputs, sizes, scalar parameters"):
        runtime.kernel_signatures(source)


@needs_compiler
def test_run_refuses_bad_arguments_with_one_line_that_says_what_to_do():
    kernels = runtime.Kernels("ddpm_loss.cu", {"scalar_t": "float"})
    a = np.zeros(4, np.float32)
    with pytest.raises(KeyError, match="no kernel 'nope'; it has ddpm_q_sample"):
        kernels.run("nope", 4, a)
    with pytest.raises(TypeError, match=r"takes 4 arguments \(predicted, target, squared_error, total\), got 3"):
        kernels.run("ddpm_squared_error", 4, a, a, a)
    with pytest.raises(TypeError, match="must be a C-contiguous float32 array, got float64; pass xp.ascontiguousarray"):
        kernels.run("ddpm_squared_error", 4, a, a.astype(np.float64), a, 4)
    with pytest.raises(TypeError, match="C-contiguous"):
        kernels.run("ddpm_squared_error", 2, a[::2], a[::2], np.zeros(2, np.float32), 2)


@needs_compiler
def test_poisoned_outputs_show_an_entry_the_kernel_did_not_write():
    kernels = runtime.Kernels("ddpm_loss.cu", {"scalar_t": "double"})
    predicted, target = np.ones(6), np.zeros(6)
    out = np.zeros(6)
    kernels.run("ddpm_squared_error", 6, predicted, target, out, 4)  # told to write only 4 entries
    np.testing.assert_array_equal(out, [1, 1, 1, 1, 0, 0])
    with runtime.poisoned_outputs():
        kernels.run("ddpm_squared_error", 6, predicted, target, out, 4)
    np.testing.assert_array_equal(out[:4], 1)
    assert np.isnan(out[4:]).all()
    np.testing.assert_array_equal(predicted, 1)  # inputs are left alone


@needs_compiler
def test_cpu_kernels_is_a_scoped_setting():
    array = np.zeros(3)
    assert not runtime.cpu_kernels_enabled() and not runtime.kernels_run_on(array)
    with runtime.cpu_kernels():
        assert runtime.cpu_kernels_enabled() and runtime.kernels_run_on(array)
        with runtime.cpu_kernels(False):
            assert not runtime.kernels_run_on(array)
        assert runtime.cpu_kernels_enabled()
    with pytest.raises(RuntimeError):
        with runtime.cpu_kernels():
            raise RuntimeError("an error inside the block")
    assert not runtime.cpu_kernels_enabled()


def _report_setting(connection):
    connection.send(runtime.cpu_kernels_enabled())
    connection.close()


def _setting_in_a_forked_child() -> bool:
    context = multiprocessing.get_context("fork")  # as minisdit/training/parallel.py starts its workers
    mine, theirs = context.Pipe()
    child = context.Process(target=_report_setting, args=(theirs,))
    child.start()
    enabled = mine.recv()
    child.join()
    return enabled


@needs_compiler
def test_forked_workers_inherit_the_setting():
    with runtime.cpu_kernels():
        assert _setting_in_a_forked_child() is True
    assert _setting_in_a_forked_child() is False


@needs_compiler
def test_a_command_keeps_its_cpu_kernel_setting_to_itself():
    @own_runtime_settings
    def command(compiled_kernels):
        message = configure_cpu_runtime(0, compiled_kernels=compiled_kernels)
        return message, runtime.cpu_kernels_enabled(), _setting_in_a_forked_child()

    message, enabled, in_child = command(True)
    assert "compiled for the CPU" in message and enabled and in_child
    assert not runtime.cpu_kernels_enabled()  # gone when the command returns: nothing for a test to undo
    assert command(False) == (None, False, False)  # --no-cpu-kernels


@pytest.mark.skipif(not runtime.nvrtc_available(), reason="libnvrtc not installed: pip install nvidia-cuda-nvrtc-cu12")
def test_nvrtc_reports_a_compile_error_with_the_log():
    with pytest.raises(runtime.KernelCompileError, match="broken.cu.*failed to compile"):
        runtime.nvrtc_compile('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', arch="sm_90",
                           name="broken.cu")
