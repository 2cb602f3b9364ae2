"""scripts/gpu_check.sh: its budgets fit one device call, and its runner records every stage.

The whole dry run (``--cpu``, every stage) runs in CI after the tests (.ci/run); here only what is
fast: the budgets it prints, and the runner on one or two quick stages, passing and failing.
"""
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STAGES = ("env", "tests", "kernels", "agreement", "throughput", "train")
DEVICE_WORK_S = 480  # of the 600 s one device command may run, leaving a rerun inside 15 minutes


def gpu_check(*arguments, **options):
    environment = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *map(str, arguments)], capture_output=True, text=True,
                          env=environment, **options)


def budgets(*arguments) -> dict:
    done = gpu_check("--budgets", *arguments)
    assert done.returncode == 0, done.stderr
    return {line.split()[0]: [int(value) for value in line.split()[1:]] for line in done.stdout.splitlines()}


@pytest.mark.parametrize("mode", [(), ("--cpu",)], ids=["gpu", "cpu"])
def test_the_stage_budgets_fit(mode):
    stage_budgets = budgets(*mode)
    assert tuple(name for name in stage_budgets if name != "train-parts") == STAGES
    assert sum(stage_budgets[name][0] for name in STAGES) <= DEVICE_WORK_S
    # the train stage's timed parts (train, sample, FID) leave time inside its budget for the data copy
    assert sum(stage_budgets["train-parts"]) < stage_budgets["train"][0]


def summary_rows(out: Path) -> dict:
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split()[0]: int(line.split()[1]) for line in lines if line.split()[0] in STAGES}


def test_each_stage_writes_its_exit_code_and_log(tmp_path):
    done = gpu_check("--cpu", "--stages", "env", "--out", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_rows(tmp_path) == {"env": 0}
    assert "compiled as C++ and run" in (tmp_path / "env.txt").read_text()


def test_a_failing_stage_fails_the_run_and_says_which(tmp_path):
    done = gpu_check("--cpu", "--stages", "env,train", "--data", tmp_path / "no-mnist", "--out", tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert summary_rows(tmp_path) == {"env": 0, "train": 1}
    assert f"error: stage train failed or is missing in {tmp_path}/summary.txt" in done.stderr
    assert "error: no MNIST folder" in (tmp_path / "train.txt").read_text()


@pytest.mark.parametrize("arguments, fragment", [(["--bogus"], "unknown argument --bogus"),
                                                 (["--stages", "env,fit"], "unknown stage fit")])
def test_bad_arguments_are_one_line(arguments, fragment, tmp_path):
    done = gpu_check(*arguments, "--out", tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and fragment in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_compile_counter_wraps_cupys_compiler_and_puts_it_back(monkeypatch):
    gpu_memory = load_benchmark("gpu_memory")
    calls = []
    original = lambda source: calls.append(source) or "module"  # noqa: E731 (stands for CuPy's compile)
    compiler = types.SimpleNamespace(compile_with_cache=original)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(compiler=compiler))
    monkeypatch.setattr(gpu_memory.backend, "get_array_module", lambda device: fake_cupy)
    with gpu_memory.count_compiles("gpu") as compiled:
        assert compiler.compile_with_cache("a") == "module" and compiler.compile_with_cache("b") == "module"
    assert len(compiled) == 2 and calls == ["a", "b"] and compiler.compile_with_cache is original
    with gpu_memory.count_compiles("gpu") as compiled:
        pass
    assert compiled == []  # a warm step: nothing compiled, so the warm-up may end
    fake_cupy.cuda = types.SimpleNamespace()  # a CuPy without the functions: not countable, never "none"
    with gpu_memory.count_compiles("gpu") as compiled:
        pass
    assert compiled == [None]
