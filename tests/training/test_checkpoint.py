"""Checkpoints: exact round trip, atomic writes (a crash or SIGKILL at each named point of a save
leaves the previous complete checkpoint, or after the rename the new one), and one-line errors for
every kind of unusable file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minisdit.training import checkpoint as ckpt
from minisdit.training.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from minisdit.models import sdit_from_preset
from tests.helpers import assert_one_line_message

REPO = Path(__file__).resolve().parents[2]


def arrays(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "weight": rng.standard_normal((5, 3)).astype(np.float32),
        "bias": rng.standard_normal(5).astype(np.float64),
        "scalar": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 4), np.float32),
    }


def write(path, step: int, seed: int = 0):
    return save_checkpoint(path, model_state=arrays(seed), optimizer_state={"lr": np.array(1e-3), "m": arrays(seed + 1)["weight"]},
                           ema_state=arrays(seed + 2), step=step, config={"preset": "tiny", "lr": 1e-3},
                           rng_states={"scheme": "test", "seed": seed}, extra={"note": "x"})


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name


def test_round_trip_is_exact(tmp_path):
    path = write(tmp_path / "c.safetensors", step=12, seed=3)
    loaded = load_checkpoint(path)
    assert_same(loaded["model"], arrays(3))
    assert_same(loaded["ema"], arrays(5))
    assert_same(loaded["optimizer"], {"lr": np.array(1e-3), "m": arrays(4)["weight"]})
    assert loaded["step"] == 12 and loaded["config"] == {"preset": "tiny", "lr": 1e-3}
    assert loaded["rng_states"] == {"scheme": "test", "seed": 3} and loaded["extra"] == {"note": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temporary file left


def test_missing_optimizer_and_ema_read_as_none(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", model_state=arrays(0), step=0, config={}, rng_states={})
    loaded = load_checkpoint(path)
    assert loaded["optimizer"] is None and loaded["ema"] is None


# ----- atomicity: a save stopped at each of its named points -----

def test_a_save_passes_its_points_in_order(tmp_path):
    seen = []
    save_checkpoint(tmp_path / "c.safetensors", model_state=arrays(0), step=1, config={}, rng_states={},
                    at_point=seen.append)
    assert tuple(seen) == ckpt.SAVE_POINTS


def fail_at(point: str, failure: BaseException):
    def at_point(name):
        if name == point:
            raise failure
    return at_point


BEFORE_RENAME = [point for point in ckpt.SAVE_POINTS if point != "after-rename"]


@pytest.mark.parametrize("point", BEFORE_RENAME)
@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_save_cut_short_keeps_the_previous_checkpoint(tmp_path, point, failure):
    path = write(tmp_path / "c.safetensors", step=1, seed=1)
    before = path.read_bytes()
    with pytest.raises(type(failure)):
        save_checkpoint(path, model_state=arrays(2), step=2, config={}, rng_states={}, at_point=fail_at(point, failure))
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # the temp file is gone


def test_a_save_cut_short_after_the_rename_holds_the_new_checkpoint(tmp_path):
    path = write(tmp_path / "c.safetensors", step=1, seed=1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model_state=arrays(2), step=2, config={}, rng_states={},
                        at_point=fail_at("after-rename", KeyboardInterrupt()))
    loaded = load_checkpoint(path)
    assert loaded["step"] == 2
    assert_same(loaded["model"], arrays(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = write(tmp_path / "c.safetensors", step=1, seed=1)

    def fail(source, target):
        raise OSError("rename failed")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        write(path, step=2, seed=2)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_a_first_save_cut_short_leaves_no_file_at_the_path(tmp_path):
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.safetensors", model_state=arrays(0), step=1, config={}, rng_states={},
                        at_point=fail_at("mid-write", OSError("disk full")))
    assert list(tmp_path.iterdir()) == []


# A child process saves steps 1, 2, 3; during the save of step 3 it stops at one named point, says
# so through a pipe and waits there (reading its stdin, which the parent never writes): the parent
# SIGKILLs it at exactly that point, whatever the speed of the machine or its disk.
SAVE_AND_STOP = textwrap.dedent("""
    import os
    import sys
    import numpy as np
    from minisdit.training import checkpoint
    path, stop_point, stop_step, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    weights = np.random.default_rng(0).standard_normal((4, 64, 64)).astype(np.float32)

    def at_point(name):
        if name == stop_point and step == stop_step:
            os.write(report, name.encode())
            sys.stdin.read()  # blocks until the parent kills this process

    for step in range(1, stop_step + 1):
        weights[:, 0, 0] = step
        checkpoint.save_checkpoint(path, model_state={"w": weights}, step=step, config={"step": step},
                                   rng_states={}, at_point=at_point)
""")


def kill_at(folder: Path, point: str, step: int = 3) -> Path:
    """Run SAVE_AND_STOP, SIGKILL it where it stopped (``point`` of the save of ``step``); return the path."""
    path = folder / "checkpoint.safetensors"
    read_end, write_end = os.pipe()
    process = subprocess.Popen([sys.executable, "-c", SAVE_AND_STOP, str(path), point, str(step), str(write_end)],
                               stdin=subprocess.PIPE, pass_fds=(write_end,), cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(write_end)  # so that the read below ends (empty) if the child dies without reaching the point
    try:
        with os.fdopen(read_end, "rb") as report:
            reached = report.read(len(point))
        assert reached == point.encode(), f"the saving process ended before reaching {point!r}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()
    assert process.returncode == -signal.SIGKILL
    return path


def strays(path: Path) -> list:
    """Files beside the checkpoint: only a killed writer's temp files may be there."""
    names = [p for p in path.parent.iterdir() if p != path]
    assert all(p.name.startswith(".checkpoint.safetensors.") and p.name.endswith(".tmp") for p in names), names
    return names


def assert_checkpoint_of_step(path: Path, step: int):
    loaded = load_checkpoint(path)  # complete: it parses and its tensors match their checksum
    assert loaded["step"] == step and loaded["config"] == {"step": step}
    assert np.all(loaded["model"]["w"][:, 0, 0] == step)


def test_sigkill_after_serialising_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path):
    path = kill_at(tmp_path, "serialised")
    assert_checkpoint_of_step(path, 2)
    assert strays(path) == []  # nothing written yet


def test_sigkill_mid_write_keeps_the_previous_checkpoint_and_a_partial_temp_file(tmp_path):
    path = kill_at(tmp_path, "mid-write")
    assert_checkpoint_of_step(path, 2)
    (temporary,) = strays(path)
    assert 0 < temporary.stat().st_size < path.stat().st_size  # half of the new checkpoint, never at the path
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(temporary)


@pytest.mark.parametrize("point", ["after-fsync", "before-rename"])
def test_sigkill_before_the_rename_keeps_the_previous_checkpoint_and_a_complete_temp_file(tmp_path, point):
    path = kill_at(tmp_path, point)
    assert_checkpoint_of_step(path, 2)
    (temporary,) = strays(path)
    assert_checkpoint_of_step(temporary, 3)  # the new one was whole; only the rename was missing


def test_sigkill_after_the_rename_holds_the_new_checkpoint(tmp_path):
    path = kill_at(tmp_path, "after-rename")
    assert_checkpoint_of_step(path, 3)
    assert strays(path) == []  # the rename moved the temp file to the path


@pytest.mark.parametrize("point", BEFORE_RENAME)
def test_sigkill_in_a_first_save_before_the_rename_leaves_no_checkpoint(tmp_path, point):
    path = kill_at(tmp_path, point, step=1)
    assert not path.exists()
    strays(path)


# ----- unusable files: one-line errors that say what to do -----

def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "nothing.safetensors")
    assert_one_line_message(caught.value, "does not exist", "minisdit.train")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path)
    assert_one_line_message(caught.value, "is a folder", "checkpoint.safetensors")


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "header-cut"])
def test_damaged_files_are_reported_as_corrupt(tmp_path, damage):
    path = write(tmp_path / "c.safetensors", step=1)
    content = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"not a checkpoint at all\n" * 10,
                      "truncated": content[:-50], "header-cut": content[:40]}[damage])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_message(caught.value, str(path), "corrupt", "use an earlier checkpoint or start a new run")


def test_a_flipped_bit_in_the_weights_fails_the_checksum(tmp_path):
    path = write(tmp_path / "c.safetensors", step=1)
    content = bytearray(path.read_bytes())
    content[-5] ^= 0x10  # inside the last tensor's bytes: safetensors alone cannot notice
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_message(caught.value, "checksum", "corrupt")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"weight": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_message(caught.value, "not written by minisdit.train", "'pt'")


def test_a_checkpoint_without_a_checksum_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    save_file({"model.w": np.ones(2, np.float32)}, str(path),
              metadata={"format": ckpt.FORMAT_VERSION, "step": "3", "config": "{}", "rng_states": "{}"})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_message(caught.value, str(path), "no checksum", "earlier version", "start a new run")


def test_bad_metadata_is_reported_as_corrupt(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    tensors = {"model.w": np.ones(2, np.float32)}
    save_file(tensors, str(path), metadata={"format": ckpt.FORMAT_VERSION, "step": "3", "config": "{not json",
                                            "rng_states": "{}", "sha256": ckpt.tensors_digest(tensors)})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_message(caught.value, "bad metadata", "corrupt")


def test_check_compatible_names_the_mismatch():
    model = sdit_from_preset("tiny")
    state = model.state_dict()
    check_compatible({"model": state, "ema": None, "config": {"preset": "tiny"}}, model, "c.safetensors")
    wider = dict(state, pos_embed=np.zeros((1, 50, 96), np.float32))
    with pytest.raises(CheckpointError) as caught:
        check_compatible({"model": wider, "ema": None, "config": {"preset": "small"}}, model, "c.safetensors")
    assert_one_line_message(caught.value, "different model", "'small'", "pos_embed", "(1, 50, 96)",
                          "build the model with the checkpoint's preset")
    fewer = {name: value for name, value in state.items() if name != "pos_embed"}
    with pytest.raises(CheckpointError) as caught:
        check_compatible({"model": state, "ema": fewer, "config": {"preset": "tiny"}}, model, "c.safetensors")
    assert_one_line_message(caught.value, "the checkpoint lacks pos_embed")


def test_metadata_is_plain_json_not_pickle(tmp_path):
    from safetensors import safe_open

    path = write(tmp_path / "c.safetensors", step=4)
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == ckpt.FORMAT_VERSION and metadata["step"] == "4"
    assert json.loads(metadata["config"]) == {"lr": 1e-3, "preset": "tiny"}
    assert len(metadata["sha256"]) == 64
