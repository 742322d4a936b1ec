"""Damaged checkpoints and the checkpoint swap (issue 15, faults 3 and 4).

Faults are injected at exact points (ehrfm.fault_points) or by editing files between runs: a bit
flip in the tensor data (header intact), a truncation, a kill -9 between moving the old
checkpoint aside and moving the new one in. In every case the rerun must end at exactly the
uninterrupted run's val_loss, never use damaged weights, and say what it did.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ehrfm.checkpoint import load_model, verify_checkpoint
from ehrfm.config import TrainConfig
from ehrfm.errors import UserError
from ehrfm.fault_points import wait_held
from ehrfm.train import request_stop, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
TOKENS = 12_000  # 47 steps of 4 x 64 tokens
KW = dict(n_layer=2, d_model=32, n_head=2, context=64, tokens=TOKENS, batch_size=4, lr=3e-3, eval_tokens=2048, seed=5)


@pytest.fixture(scope="module")
def reference(tok, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "run"
    return train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))


def train_cmd(tok, out, *extra) -> list[str]:
    return [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "2", "--d-model", "32",
            "--n-head", "2", "--context", "64", "--tokens", str(TOKENS), "--batch-size", "4", "--lr", "3e-3",
            "--eval-tokens", "2048", "--seed", "5", *extra]


def flip_data_bit(path: Path) -> None:
    """Flip one bit in the tensor data of a safetensors file, leaving its JSON header intact."""
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    pos = 8 + header_len + (len(raw) - 8 - header_len) // 2
    raw[pos] ^= 0x40
    path.write_bytes(bytes(raw))


def step_of(ckpt: Path) -> int:
    return json.loads((ckpt / "state.json").read_text())["step"]


def interrupted_run(tok, out: Path, holds: Path, stop_after: int, interval: int) -> None:
    """Train with checkpoints every `interval` steps and stop (SIGTERM) right after step `stop_after`."""
    env = dict(ENV, EHRFM_HOLD_AT=f"step-{stop_after}", EHRFM_HOLD_DIR=str(holds))
    proc = subprocess.Popen(train_cmd(tok, out, "--checkpoint-interval", str(interval)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_held(holds, out.name, f"step-{stop_after}", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()[-500:]


def test_checkpoint_records_checksums_and_keeps_the_previous_one(tok, tmp_path):
    out = tmp_path / "run"
    interrupted_run(tok, out, tmp_path / "holds", stop_after=5, interval=2)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5 and set(state["files"]) == {"model.safetensors", "optimizer.safetensors",
                                                          "rng.safetensors", "model_config.json"}
    assert all(len(v) == 64 for v in state["files"].values())  # sha256 hex
    assert step_of(out / "checkpoint.prev") == 4
    assert verify_checkpoint(out / "checkpoint")[1] is None


def test_bit_flipped_weights_fall_back_to_the_previous_checkpoint(tok, reference, tmp_path):
    out = tmp_path / "run"
    interrupted_run(tok, out, tmp_path / "holds", stop_after=5, interval=2)
    flip_data_bit(out / "checkpoint" / "model.safetensors")
    state, problem = verify_checkpoint(out / "checkpoint")
    assert state is None and "model.safetensors" in problem

    done = subprocess.run(train_cmd(tok, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert str(out / "checkpoint" / "model.safetensors") in done.stderr
    assert "previous checkpoint (step 4)" in done.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "completed" and res["val_loss"] == reference["val_loss"]
    assert not (out / "checkpoint.prev").exists()  # a completed run keeps one checkpoint


@pytest.mark.parametrize("edit", ["step", "copied"])
def test_an_edited_state_json_falls_back_to_the_previous_checkpoint(tok, reference, tmp_path, edit):
    """Before: state.json checksummed the other files but not itself. Its step set back by hand (86 -> 50)
    resumed 103 more steps on the step-86 weights, ending at another loss, without a word."""
    out = tmp_path / "run"
    interrupted_run(tok, out, tmp_path / "holds", stop_after=5, interval=2)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    assert state["step"] == 5 and verify_checkpoint(out / "checkpoint")[1] is None
    if edit == "step":  # the weights and moments are step 5's; the schedule and data would restart at step 3
        path.write_text(json.dumps({**state, "step": 3, "tokens_seen": 3 * 4 * 64}))
    else:  # step 4's state.json given step 5's file checksums: a mix of two checkpoints whose files all match
        prev = json.loads((out / "checkpoint.prev" / "state.json").read_text())
        path.write_text(json.dumps({**prev, "files": state["files"]}))
    checked, problem = verify_checkpoint(out / "checkpoint")
    assert checked is None and problem == (
        f"checkpoint state {path} was changed after it was written (its state_sha256 does not match its content: "
        "edited by hand, or copied from another checkpoint)")

    done = subprocess.run(train_cmd(tok, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert str(path) in done.stderr and "previous checkpoint (step 4)" in done.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "completed" and res["val_loss"] == reference["val_loss"]


def test_truncated_checkpoint_without_a_previous_one_restarts_once(tok, reference, tmp_path, capsys):
    out = tmp_path / "run"
    request_stop()  # stops after step 1: one checkpoint, no previous one
    first = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))
    assert first["status"] == "interrupted" and not (out / "checkpoint.prev").exists()
    path = out / "checkpoint" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()

    res = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))
    err = capsys.readouterr().err
    assert res["status"] == "completed" and res["val_loss"] == reference["val_loss"]
    assert str(path) in err and "restarting the run from step 0" in err
    again = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))  # not the same failure again
    assert again["val_loss"] == reference["val_loss"]


def test_kill_inside_the_swap_never_loses_the_checkpoint(tok, reference, tmp_path):
    out, holds = tmp_path / "run", tmp_path / "holds"
    env = dict(ENV, EHRFM_HOLD_AT="checkpoint-swap", EHRFM_HOLD_DIR=str(holds))
    proc = subprocess.Popen(train_cmd(tok, out, "--checkpoint-interval", "2"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # The first checkpoint (step 2) has nothing to swap; the second (step 4) holds in the window.
    wait_held(holds, out.name, "checkpoint-swap", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "checkpoint").exists()
    assert step_of(out / "checkpoint.prev") == 2
    leaked = sorted(out.glob("checkpoint.tmp-*"))
    assert len(leaked) == 1 and step_of(leaked[0]) == 4

    done = subprocess.run(train_cmd(tok, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert "(step 4)" in done.stderr  # resumed from the new checkpoint, not from step 0 or 2
    assert json.loads((out / "result.json").read_text())["val_loss"] == reference["val_loss"]
    assert not list(out.glob("checkpoint.*"))  # no temporaries, no .prev left behind


def test_stale_temporaries_of_dead_processes_are_removed_at_start(tok, tmp_path):
    out = tmp_path / "run"
    request_stop()
    train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f"checkpoint.tmp-{int(dead.stdout)}-abcd1234"  # a dead pid, the old naming
    (stale / "sub").mkdir(parents=True)
    live = out / f"checkpoint.tmp-{os.getpid()}-abcd1234"  # this (live) process: never touched
    live.mkdir()
    # pid 1 is alive here, but the host tag is another node's: a trainer requeued elsewhere left it
    other_node = out / "checkpoint.tmp-1-0000beef-12345678"
    other_node.mkdir()
    res = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))
    assert res["status"] == "completed"
    assert not stale.exists() and not other_node.exists() and live.exists()


def test_load_model_refuses_damaged_weights(tok, reference, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **{**KW, "tokens": 2000}))
    load_model(out)  # intact: loads
    flip_data_bit(out / "checkpoint" / "model.safetensors")
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        load_model(out)
