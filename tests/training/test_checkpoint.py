"""Checkpoints: exact round trip, atomic writes (a crash or SIGKILL mid-save leaves the previous
complete checkpoint), and one-line errors for every kind of unusable file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minisdit.training import checkpoint as ckpt
from minisdit.training.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from minisdit.models import sdit_from_preset

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


def assert_one_line_error(error: Exception, *fragments):
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


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


# ----- atomicity -----

@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_save_cut_short_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = write(tmp_path / "c.safetensors", step=1, seed=1)
    before = path.read_bytes()

    def half_then_fail(target, payload):
        with open(target, "wb") as handle:
            handle.write(payload[: len(payload) // 2])
        raise failure

    monkeypatch.setattr(ckpt, "_write_file", half_then_fail)
    with pytest.raises(type(failure)):
        write(path, step=2, seed=2)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # the half-written temp file is gone


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = write(tmp_path / "c.safetensors", step=1, seed=1)

    def fail(source, target):
        raise OSError("rename failed")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        write(path, step=2, seed=2)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_a_first_save_cut_short_leaves_no_file_at_the_path(tmp_path, monkeypatch):
    def fail(target, payload):
        Path(target).write_bytes(payload[:100])
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_file", fail)
    with pytest.raises(OSError):
        write(tmp_path / "c.safetensors", step=1)
    assert list(tmp_path.iterdir()) == []


SAVE_LOOP = textwrap.dedent("""
    import sys
    import time
    import numpy as np
    from minisdit.training import checkpoint
    path, pause_mid_write = sys.argv[1], sys.argv[2] == "1"
    write_file = checkpoint._write_file

    def write_in_two_halves(target, payload):
        # the real writer, cut in two with a pause between, so the test can kill us mid-write
        with open(target, "wb") as handle:
            handle.write(payload[: len(payload) // 2])
            handle.flush()
            print("half-written", flush=True)
            time.sleep(0.5)
        write_file(target, payload)

    if pause_mid_write:
        checkpoint._write_file = write_in_two_halves
    weights = np.random.default_rng(0).standard_normal((4, 1024, 1024)).astype(np.float32)  # 16 MB
    for step in range(1, 1000):
        weights[:, 0, 0] = step
        print(f"saving {step}", flush=True)
        checkpoint.save_checkpoint(path, model_state={"w": weights}, step=step, config={"step": step}, rng_states={})
""")


def kill_while_saving(folder: Path, *, mid_write: bool, delay_s: float = 0.0) -> Path:
    """Start the save loop, SIGKILL it during the save of step 3; return the checkpoint path."""
    path = folder / "checkpoint.safetensors"
    process = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path), "1" if mid_write else "0"],
                               stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        seen = []
        for line in process.stdout:
            seen.append(line.strip())
            if seen[-2:] == ["saving 3", "half-written"] or (not mid_write and seen[-1] == "saving 3"):
                break
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    return path


def assert_complete_checkpoint_or_temp_files_only(path: Path, steps: tuple):
    loaded = load_checkpoint(path)
    assert loaded["step"] in steps and loaded["config"] == {"step": loaded["step"]}
    assert np.all(loaded["model"]["w"][:, 0, 0] == loaded["step"])
    # a killed writer cannot remove its temp file, but the temp file is never at the checkpoint path
    strays = [p.name for p in path.parent.iterdir() if p != path]
    assert all(name.startswith(".checkpoint.safetensors.") and name.endswith(".tmp") for name in strays), strays
    return strays


def test_sigkill_in_the_middle_of_writing_keeps_the_previous_checkpoint(tmp_path):
    path = kill_while_saving(tmp_path, mid_write=True)
    strays = assert_complete_checkpoint_or_temp_files_only(path, steps=(2,))
    assert len(strays) == 1  # the half-written temp file: the kill really landed mid-write
    assert (tmp_path / strays[0]).stat().st_size < path.stat().st_size


@pytest.mark.parametrize("delay_s", [0.0, 0.06, 0.12])
def test_sigkill_anywhere_in_a_save_leaves_a_complete_checkpoint(tmp_path, delay_s):
    """Killed at different points of a ~0.15 s save (serialising, checksum, write, rename): the
    file at the path is the complete checkpoint 2 or 3, consistent in itself."""
    path = kill_while_saving(tmp_path, mid_write=False, delay_s=delay_s)
    assert_complete_checkpoint_or_temp_files_only(path, steps=(2, 3))


# ----- unusable files: one-line errors that say what to do -----

def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "nothing.safetensors")
    assert_one_line_error(caught.value, "does not exist", "minisdit.train")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path)
    assert_one_line_error(caught.value, "is a folder", "checkpoint.safetensors")


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "header-cut"])
def test_damaged_files_are_reported_as_corrupt(tmp_path, damage):
    path = write(tmp_path / "c.safetensors", step=1)
    content = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"not a checkpoint at all\n" * 10,
                      "truncated": content[:-50], "header-cut": content[:40]}[damage])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_error(caught.value, str(path), "corrupt", "use an earlier checkpoint or start a new run")


def test_a_flipped_bit_in_the_weights_fails_the_checksum(tmp_path):
    path = write(tmp_path / "c.safetensors", step=1)
    content = bytearray(path.read_bytes())
    content[-5] ^= 0x10  # inside the last tensor's bytes: safetensors alone cannot notice
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_error(caught.value, "checksum", "corrupt")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"weight": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_error(caught.value, "not written by minisdit.train", "'pt'")


def test_bad_metadata_is_reported_as_corrupt(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    tensors = {"model.w": np.ones(2, np.float32)}
    save_file(tensors, str(path), metadata={"format": ckpt.FORMAT_VERSION, "step": "3", "config": "{not json",
                                            "rng_states": "{}", "sha256": ckpt.tensors_digest(tensors)})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_one_line_error(caught.value, "bad metadata", "corrupt")


def test_check_compatible_names_the_mismatch():
    model = sdit_from_preset("tiny")
    state = model.state_dict()
    check_compatible({"model": state, "ema": None, "config": {"preset": "tiny"}}, model, "c.safetensors")
    wider = dict(state, pos_embed=np.zeros((1, 50, 96), np.float32))
    with pytest.raises(CheckpointError) as caught:
        check_compatible({"model": wider, "ema": None, "config": {"preset": "small"}}, model, "c.safetensors")
    assert_one_line_error(caught.value, "different model", "'small'", "pos_embed", "(1, 50, 96)",
                          "build the model with the checkpoint's preset")
    fewer = {name: value for name, value in state.items() if name != "pos_embed"}
    with pytest.raises(CheckpointError) as caught:
        check_compatible({"model": state, "ema": fewer, "config": {"preset": "tiny"}}, model, "c.safetensors")
    assert_one_line_error(caught.value, "the checkpoint lacks pos_embed")


def test_metadata_is_plain_json_not_pickle(tmp_path):
    from safetensors import safe_open

    path = write(tmp_path / "c.safetensors", step=4)
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == ckpt.FORMAT_VERSION and metadata["step"] == "4"
    assert json.loads(metadata["config"]) == {"lr": 1e-3, "preset": "tiny"}
    assert len(metadata["sha256"]) == 64
