"""Data parallelism across processes (minisdit/training/distributed.py, parallel.py): the backends'
interface, K ranks under real MPI (``mpiexec`` from the ``.[mpi]`` extra) against one process,
resume, failing and killed ranks, and no process left behind when a trainer or rank 0 is killed.

The multi-process runs go through tests/training/distributed_run.py (the training command on a
small fake data set, with a named point where a rank fails).  Nothing here sleeps: a test waits
for a line a process prints, for the end of a pipe, or for a process's exit (a pidfd)."""
import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minisdit.autograd import backend
from minisdit.cli import train
from minisdit.training import distributed
from minisdit.training.checkpoint import load_checkpoint
from minisdit.autograd.flat import FlatParameters
from minisdit.training.config import CPU_RECIPE, TrainConfig, build_model
from minisdit.training.distributed import DistributedError, SingleProcess, choose_backend

from ..helpers import assert_one_line_error, run_main

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "training" / "distributed_run.py"
SMALL = ["--device", "cpu", "--batch-size", "6", "--lr", "1e-3", "--warmup-steps", "0", "--seed", "3",
         "--grad-clip", "1.0", "--ema", "0.9", "--sample-steps", "2", "--sample-num", "2", "--sample-every", "1000",
         "--log-every", "1", "--no-progress"]
TIMEOUT_S = 300  # an upper bound for a hung run, never a synchronisation


def find_mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e \".[mpi]\"; .[dev] includes it)"
    if find_mpiexec() is None:
        return "no mpiexec beside the Python executable or on PATH (the mpich wheel of .[mpi] brings one)"
    return None


needs_mpi = pytest.mark.skipif(mpi_missing() is not None, reason=mpi_missing() or "")
needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"),
                                 reason="waiting on the exit of a process that is not our child needs os.pidfd_open "
                                        "(Linux 5.3+, Python 3.9+)")


def environment(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", **extra)
    for name in distributed.MPI_SIZE_VARIABLES + ("PMI_RANK", "RANK", "WORLD_SIZE"):
        env.pop(name, None)  # this test process itself may run under a launcher
    return env


def command(ranks: int, action: str, step: int, *argv) -> list[str]:
    """The helper under ``mpiexec -n ranks`` (ranks 0: one process, no launcher)."""
    line = [sys.executable, str(RUN), action, str(step), *map(str, argv)]
    return ([find_mpiexec(), "-n", str(ranks)] + line) if ranks else line


def run(ranks: int, action: str, step: int, *argv, **extra):
    result = subprocess.run(command(ranks, action, step, *argv), env=environment(**extra), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    return result.returncode, result.stdout, result.stderr


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def weights_of(out: Path) -> dict:
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    return {**{f"model.{k}": v for k, v in checkpoint["model"].items()},
            **{f"ema.{k}": v for k, v in checkpoint["ema"].items()}}


def wait_for_exit(pid: int, seconds: float = TIMEOUT_S) -> bool:
    """True once process ``pid`` has ended (a pidfd is readable from its exit on), False after ``seconds``."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([descriptor], [], [], seconds)[0])
    finally:
        os.close(descriptor)


def pids_written(folder: Path) -> dict[int, int]:
    """The pid each rank wrote into ``folder``/RANK before it trained (files, not stdout: mpiexec merges
    the ranks' output, and a rank killed mid-line can leave another rank's line glued to its own)."""
    return {int(path.name): int(path.read_text()) for path in folder.iterdir() if path.name.isdigit()}


# ----- the interface, without a launcher -----

def test_one_process_changes_nothing():
    single = SingleProcess()
    buffer = np.arange(5, dtype=np.float32)
    assert (single.rank, single.world_size) == (0, 1)
    assert single.all_reduce(buffer) is buffer and single.broadcast(buffer) is buffer
    assert np.array_equal(buffer, np.arange(5, dtype=np.float32))


def test_the_backend_follows_the_launcher(monkeypatch):
    for name in distributed.MPI_SIZE_VARIABLES + ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert choose_backend(None, "cpu") == "local" and choose_backend(None, "gpu") == "local"
    monkeypatch.setenv("PMI_SIZE", "2")  # as mpiexec (MPICH's hydra) sets it
    assert choose_backend(None, "cpu") == "mpi" and choose_backend(None, "gpu") == "nccl"
    monkeypatch.setenv("PMI_SIZE", "1")
    assert choose_backend(None, "cpu") == "local"
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun sets them
    assert choose_backend(None, "gpu") == "nccl"
    assert choose_backend("local", "gpu") == "local"
    with pytest.raises(ValueError, match="unknown backend 'gloo'; choose one of local, mpi, nccl"):
        choose_backend("gloo", "cpu")


def test_a_missing_mpi4py_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(DistributedError) as caught:
        distributed.MPICommunicator()
    assert "\n" not in str(caught.value) and 'pip install -e ".[mpi]"' in str(caught.value)


def test_nccl_without_a_gpu_says_why_in_one_line():
    try:
        backend.get_array_module("gpu")
    except backend.DeviceUnavailableError as error:
        reason = str(error)
    else:
        pytest.skip("a usable GPU is present: the nccl backend is tested by tests/training/test_nccl.py")
    with pytest.raises(backend.DeviceUnavailableError) as caught:
        distributed.NCCLCommunicator()
    assert str(caught.value) == reason and "\n" not in reason


def test_the_command_line_refuses_a_backend_on_the_wrong_device():
    code, _, stderr = run_main(train.main, "--backend", "nccl", "--device", "cpu", "--steps", "1")
    assert_one_line_error(code, stderr, "the nccl backend trains on GPUs; use --backend mpi on the CPU")


def test_a_config_written_before_the_backends_resumes_as_local_workers():
    old = CPU_RECIPE.to_dict()
    del old["backend"], old["world_size"]
    config = TrainConfig.from_dict(old)
    assert (config.backend, config.world_size, config.workers) == ("local", 2, 2)
    assert config == dataclasses.replace(CPU_RECIPE, backend="local", world_size=2)


# ----- the local backend's workers -----

@needs_pidfd
def test_a_killed_trainer_leaves_no_worker_behind(tmp_path):
    # the worker holds the trainer's stdout (forked): its end-of-file says every holder is gone
    process = subprocess.Popen(command(0, "hold", 2, *SMALL, "--workers", 2, "--steps", 4, "--ckpt-every", 1000,
                                       "--out", tmp_path / "run"),
                               env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    workers = None
    for line in process.stdout:
        if line.startswith("workers "):  # the trainer waits here, its worker inside step 2
            workers = [int(pid) for pid in line.split()[1:]]
            break
    assert workers, "the trainer never reached step 2"
    process.kill()
    assert process.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    assert process.stdout.read() == ""
    process.stdout.close()
    process.stdin.close()
    assert all(wait_for_exit(pid) for pid in workers)


# ----- real MPI -----

@pytest.mark.slow
@needs_mpi
def test_two_mpi_ranks_train_the_model_of_one_process(tmp_path):
    steps = ["--steps", 4, "--ckpt-every", 1000]
    code, stdout, stderr = run(2, "none", 0, *SMALL, *steps, "--out", tmp_path / "mpi")
    assert code == 0, stderr
    assert "shared by 2 mpi processes" in stdout and stdout.count("done: 4 steps") == 1  # rank 0 alone prints
    config = json.loads((tmp_path / "mpi" / "config.json").read_text())
    assert (config["backend"], config["world_size"]) == ("mpi", 2)
    code, _, stderr = run(0, "none", 0, *SMALL, *steps, "--workers", 1, "--out", tmp_path / "one")
    assert code == 0, stderr
    mpi, one = log_of(tmp_path / "mpi"), log_of(tmp_path / "one")
    assert [r["step"] for r in mpi] == [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(mpi, one):  # float32 sums in another order: a few ulps apart, after three updates too
        for name in ("loss", "mse", "vb", "grad_norm"):
            assert a[name] == pytest.approx(b[name], rel=1e-5), (a["step"], name)
    # the gradients of step 2 (after one update), summed over the ranks, against the whole batch's
    # (the weights themselves are not compared at 1e-5: AdamW divides each gradient element by its
    # own scale, so an ulp of difference in an element near zero moves that weight by a part of lr)
    for ranks, folder in ((2, "mpi-grad"), (0, "one-grad")):
        (tmp_path / folder).mkdir()
        code, _, stderr = run(ranks, "save-grad", 2, *SMALL, *steps, "--workers", 1, "--out", tmp_path / folder / "run",
                              MINISDIT_TEST_PIDS=str(tmp_path / folder))
        assert code == 0, stderr
    mpi_grad, one_grad = (np.load(tmp_path / folder / "grad.npy") for folder in ("mpi-grad", "one-grad"))
    model = build_model(TrainConfig.from_dict(config))
    layout = FlatParameters(model.parameters())
    for (name, _), a, b in zip(model.named_parameters(), layout.views(mpi_grad), layout.views(one_grad)):
        scale = float(np.abs(b).max())
        assert scale > 0 and np.abs(a - b).max() <= 1e-5 * scale, name  # every parameter has a gradient at step 2
    mpi_weights = weights_of(tmp_path / "mpi")
    # the local backend with two workers sums the same two slices in the same order: bitwise the same run
    code, _, stderr = run(0, "none", 0, *SMALL, *steps, "--workers", 2, "--out", tmp_path / "local")
    assert code == 0, stderr
    local = log_of(tmp_path / "local")
    assert [(r["loss"], r["mse"], r["vb"], r["grad_norm"]) for r in local] == \
        [(r["loss"], r["mse"], r["vb"], r["grad_norm"]) for r in mpi]
    local_weights = weights_of(tmp_path / "local")
    assert all(np.array_equal(local_weights[name], value) for name, value in mpi_weights.items())


@pytest.mark.slow
@needs_mpi
def test_a_two_rank_run_resumes_exactly_and_with_another_world_size(tmp_path):
    code, _, stderr = run(2, "none", 0, *SMALL, "--steps", 4, "--ckpt-every", 2, "--out", tmp_path / "straight")
    assert code == 0, stderr
    code, _, stderr = run(2, "none", 0, *SMALL, "--steps", 2, "--ckpt-every", 2, "--out", tmp_path / "resumed")
    assert code == 0, stderr
    code, stdout, stderr = run(2, "none", 0, "--resume", "--out", tmp_path / "resumed", "--steps", 4, "--no-progress")
    assert code == 0, stderr
    assert "resuming from" in stdout
    straight, resumed = weights_of(tmp_path / "straight"), weights_of(tmp_path / "resumed")
    assert all(np.array_equal(resumed[name], value) for name, value in straight.items())
    assert [r["loss"] for r in log_of(tmp_path / "resumed")] == [r["loss"] for r in log_of(tmp_path / "straight")]
    # three local workers take over the two ranks' run (the world size is free on resume)
    code, stdout, stderr = run(0, "none", 0, "--resume", "--out", tmp_path / "resumed", "--steps", 5, "--workers", 3,
                               "--no-progress")
    assert code == 0, stderr
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert (config["backend"], config["world_size"]) == ("local", 3)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors")["step"] == 5


@pytest.mark.slow
@needs_mpi
def test_a_rank_that_raises_stops_every_rank_with_one_line(tmp_path):
    code, _, stderr = run(2, "raise-1", 3, *SMALL, "--steps", 6, "--ckpt-every", 2, "--out", tmp_path / "run")
    assert code != 0
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "Traceback" not in stderr, stderr
    assert ours[0].startswith("error: rank 1 of 2 (mpi): RuntimeError: rank 1 fails on purpose at step 3; ")
    assert f"the last good checkpoint is {tmp_path / 'run' / 'checkpoint.safetensors'} (step 2)" in ours[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["step"] == 2


@pytest.mark.slow
@needs_mpi
def test_a_rank_killed_while_rank_0_writes_a_checkpoint_leaves_a_whole_one(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    code, _, _ = run(2, "kill-1-saving", 4, *SMALL, "--steps", 6, "--ckpt-every", 2, "--out", tmp_path / "run",
                     MINISDIT_TEST_PIDS=str(pids))
    assert code != 0
    assert wait_for_exit(int((pids / "1").read_text()))
    # the save of step 4 either finished before mpiexec ended rank 0, or the path still holds step 2
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")  # checks the SHA-256 of every tensor
    assert checkpoint["step"] in (2, 4)


@pytest.mark.slow
@needs_mpi
@needs_pidfd
@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_rank_ends_every_rank(tmp_path, killed):
    pids = tmp_path / "pids"
    pids.mkdir()
    code, _, _ = run(2, f"kill-{killed}", 3, *SMALL, "--steps", 6, "--ckpt-every", 2, "--out", tmp_path / "run",
                     MINISDIT_TEST_PIDS=str(pids))
    assert code != 0
    ranks = pids_written(pids)
    assert sorted(ranks) == [0, 1]
    assert all(wait_for_exit(pid) for pid in ranks.values())
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["step"] == 2


@pytest.mark.slow
@needs_mpi
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    # SIGTERM reaches rank 0 alone, inside step 3: the ranks agree in that step's exchange, finish it,
    # and rank 0 saves step 3 (a rank that left alone would leave the other waiting in a collective)
    code, stdout, stderr = run(2, "term-0", 3, *SMALL, "--steps", 6, "--ckpt-every", 1000, "--out", tmp_path / "run")
    assert code == 128 + signal.SIGTERM, stderr
    assert f"interrupted (SIGTERM): saved step 3 to {tmp_path / 'run' / 'checkpoint.safetensors'}" in stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["step"] == 3
    assert [r["step"] for r in log_of(tmp_path / "run")] == [1, 2, 3]
