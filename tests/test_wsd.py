"""WSD schedule (Hägele et al. 2024): the lr curve, trunk -> branch training, resume, refusals."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_resume import assert_same_tensors

from ehrfm.config import TrainConfig
from ehrfm.errors import UserError
from ehrfm.train import lr_at, request_stop, stable_checkpoint_dir, train

# 4 rows of 64 tokens per step: 256 tokens a step.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


STEP = 256
COMMON = dict(n_layer=2, d_model=32, n_head=2, context=64, batch_size=4, lr=3e-3, eval_tokens=4096, seed=3,
              schedule="wsd", warmup_steps=2)
TRUNK_TOKENS = 40 * STEP  # decays over steps 32..39
BRANCH_TOKENS = 20 * STEP  # its decay starts at step 16 = 4096 tokens


@pytest.fixture(scope="module")
def trunk(tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trunk") / "trunk"
    result = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), tokens=TRUNK_TOKENS, stable_checkpoints=[16 * STEP], **COMMON))
    assert result["status"] == "completed", result
    return out


def cfg(tok, out, **kw) -> TrainConfig:
    return TrainConfig(tokens_dir=str(tok), out_dir=str(out), **{**COMMON, "tokens": BRANCH_TOKENS, **kw})


def test_wsd_lr_curve():
    c = TrainConfig(tokens_dir="", out_dir="", tokens=1, lr=1e-3, min_lr_ratio=0.1, warmup_frac=0.05, schedule="wsd")
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[0] == pytest.approx(2e-4) and lrs[4] == pytest.approx(1e-3)  # 5 warmup steps
    assert all(x == 1e-3 for x in lrs[4:80])  # stable
    assert lrs[80] == pytest.approx(1e-4 + 9e-4 * (1 - 1 / 20))  # linear decay over the last 20 steps
    assert lrs[89] == pytest.approx(1e-4 + 9e-4 * 0.5)
    assert lrs[99] == pytest.approx(1e-4)  # ends at the cosine schedule's final lr
    cos = TrainConfig(tokens_dir="", out_dir="", tokens=1, lr=1e-3, min_lr_ratio=0.1, warmup_frac=0.05)
    assert lr_at(99, 100, cos) == pytest.approx(lrs[99])
    sq = TrainConfig(tokens_dir="", out_dir="", tokens=1, lr=1e-3, min_lr_ratio=0.1, schedule="wsd", decay_shape="1-sqrt", decay_fraction=0.5)
    assert lr_at(50, 100, sq) == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(1 / 50)))
    assert lr_at(49, 100, sq) == 1e-3 and lr_at(99, 100, sq) == pytest.approx(1e-4)


def test_branch_equals_run_trained_alone_and_resumes_bit_exact(tok, trunk, tmp_path):
    assert (stable_checkpoint_dir(trunk, 4096) / "checkpoint" / "model.safetensors").is_file()
    lrs = [json.loads(x)["lr"] for x in (trunk / "metrics.jsonl").read_text().splitlines() if "lr" in json.loads(x)]
    assert lrs[2:32] == [3e-3] * 30 and lrs[-1] == pytest.approx(3e-4)  # stable, then decay to min_lr_ratio * lr

    alone = tmp_path / "alone"
    assert train(cfg(tok, alone))["status"] == "completed"
    # The branch: stopped after its first own step, resumed, and it still matches the run trained alone.
    branch = tmp_path / "branch"
    request_stop()
    assert train(cfg(tok, branch, trunk_dir=str(trunk)))["status"] == "interrupted"
    steps = [json.loads(x)["step"] for x in (branch / "metrics.jsonl").read_text().splitlines()]
    assert steps == [17]  # it started at its decay start (step 16), from the trunk
    result = train(cfg(tok, branch, trunk_dir=str(trunk)))
    assert result["status"] == "completed"
    assert_same_tensors(alone / "checkpoint" / "model.safetensors", branch / "checkpoint" / "model.safetensors")
    assert_same_tensors(alone / "checkpoint" / "optimizer.safetensors", branch / "checkpoint" / "optimizer.safetensors")
    expected = json.loads((alone / "result.json").read_text())["val_loss"]
    assert result["val_loss"] == expected
    assert result["trunk_id"] == "trunk" and result["branch_tokens"] == 4096 and result["schedule"] == "wsd"
    assert result["tokens"] == BRANCH_TOKENS and result["flops"] == result["flops_per_token"] * BRANCH_TOKENS


def test_a_run_longer_than_its_trunk_continues_it_and_equals_the_run_trained_alone(tok, trunk, tmp_path):
    # 50 steps: its decay starts at step 40, past the trunk's (step 32), so it continues the trunk's
    # stable phase from the checkpoint every wsd run keeps at its own decay start (8192 tokens).
    assert (stable_checkpoint_dir(trunk, 32 * STEP) / "checkpoint" / "model.safetensors").is_file()
    alone = tmp_path / "alone"
    assert train(cfg(tok, alone, tokens=50 * STEP))["status"] == "completed"
    longer = tmp_path / "longer"
    request_stop()  # stopped after its first own step and resumed from its own checkpoint
    assert train(cfg(tok, longer, tokens=50 * STEP, trunk_dir=str(trunk)))["status"] == "interrupted"
    assert [json.loads(x)["step"] for x in (longer / "metrics.jsonl").read_text().splitlines()] == [33]
    result = train(cfg(tok, longer, tokens=50 * STEP, trunk_dir=str(trunk)))
    assert result["status"] == "completed" and result["branch_tokens"] == 32 * STEP
    assert_same_tensors(alone / "checkpoint" / "model.safetensors", longer / "checkpoint" / "model.safetensors")
    assert_same_tensors(alone / "checkpoint" / "optimizer.safetensors", longer / "checkpoint" / "optimizer.safetensors")
    assert result["val_loss"] == json.loads((alone / "result.json").read_text())["val_loss"]
    # and it keeps its own decay start (step 40) for a longer run still
    assert (stable_checkpoint_dir(longer, 40 * STEP) / "checkpoint" / "model.safetensors").is_file()


def test_wsd_trunk_resumes_bit_exact(tok, trunk, tmp_path):
    again = tmp_path / "trunk"
    trunk_cfg = TrainConfig(tokens_dir=str(tok), out_dir=str(again), tokens=TRUNK_TOKENS, stable_checkpoints=[16 * STEP], **COMMON)
    request_stop()
    assert train(trunk_cfg)["status"] == "interrupted"
    assert train(trunk_cfg)["status"] == "completed"
    assert_same_tensors(trunk / "checkpoint" / "model.safetensors", again / "checkpoint" / "model.safetensors")
    assert_same_tensors(stable_checkpoint_dir(trunk, 4096) / "checkpoint" / "model.safetensors",
                        stable_checkpoint_dir(again, 4096) / "checkpoint" / "model.safetensors")


def test_branch_refusals_write_nothing(tok, trunk, tmp_path):
    def refused(match, **kw):
        out = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        with pytest.raises(UserError, match=match):
            train(cfg(tok, out, trunk_dir=str(trunk), **kw))
        assert not out.exists()

    refused(r"another shape \(d_model 32 in the trunk vs 48 now", d_model=48)
    refused(r"other train options \(lr 0.003 in the trunk vs 0.001 now\)", lr=1e-3)
    refused("keeps no stable checkpoint at 3072 tokens", tokens=15 * STEP)
    # A branch whose job recorded a failure (result.json only) is checked again when retried.
    retried = tmp_path / "retried"
    retried.mkdir()
    (retried / "result.json").write_text(json.dumps({"status": "failed", "error": "trainer exited with status 2"}))
    with pytest.raises(UserError, match="keeps no stable checkpoint at 3072 tokens"):
        train(cfg(tok, retried, trunk_dir=str(trunk), tokens=15 * STEP))
    assert [p.name for p in retried.iterdir()] == ["result.json"]
    other = tmp_path.parent / "tok_other"
    shutil.copytree(tok, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    (other / "tokenizer.json").write_text(json.dumps({**spec, "seed": 99}))
    out = tmp_path / "other_tok"
    with pytest.raises(UserError, match="another tokenizer"):
        train(TrainConfig(tokens_dir=str(other), out_dir=str(out), trunk_dir=str(trunk), **{**COMMON, "tokens": BRANCH_TOKENS}))
    assert not out.exists()
    with pytest.raises(UserError, match="outside this run's stable phase"):
        train(cfg(tok, tmp_path / "late", stable_checkpoints=[19 * STEP]))
    with pytest.raises(UserError, match="need schedule wsd"):
        TrainConfig(tokens_dir="", out_dir="", tokens=1, trunk_dir=str(trunk))


def test_a_branch_of_a_killed_trunk_says_so_in_one_short_line(tok, trunk, tmp_path):
    """The trunk was killed (SIGKILL) before its branch point: the branch's refusal carried the trunk's whole error,
    log path and advice included, and its job cut it at 600 characters mid-word (a helper). Now it gives the trunk's
    first clause and what to do."""
    copy = tmp_path / "trunk"
    shutil.copytree(trunk, copy)
    shutil.rmtree(stable_checkpoint_dir(copy, 4096))
    long_error = ("trainer killed by signal 9 (SIGKILL, exit status 137): most likely the out-of-memory killer (log: "
                  + "/x" * 200 + "); to go on: `ehrfm sweep launch S --retry-failed` trains it again from step 0")
    (copy / "result.json").write_text(json.dumps({"status": "failed", "error": long_error}))
    with pytest.raises(UserError) as e:
        train(cfg(tok, tmp_path / "branch", trunk_dir=str(copy)))
    assert str(e.value) == (f"trunk {copy} has no stable checkpoint at 4096 tokens (the trunk failed: trainer killed by "
                            "signal 9 (SIGKILL, exit status 137): most likely the out-of-memory killer; `ehrfm sweep launch "
                            "SWEEP --retry-failed` trains it again, then this branch)"), str(e.value)
    # A diverged trunk is never trained again (--retry-failed leaves it): the advice is a lower learning rate.
    (copy / "result.json").write_text(json.dumps({"status": "diverged", "error": "train loss is nan at step 12"}))
    with pytest.raises(UserError) as e:
        train(cfg(tok, tmp_path / "branch2", trunk_dir=str(copy)))
    assert str(e.value) == (f"trunk {copy} has no stable checkpoint at 4096 tokens (the trunk diverged: train loss is nan "
                            "at step 12; a diverged run is never trained again, and this recipe would diverge again: "
                            "plan a new sweep (another --out) with a lower --lr)"), str(e.value)
    assert "--retry-failed" not in str(e.value)


def test_a_damaged_stable_checkpoint_is_named_and_kept(tok, trunk, tmp_path):
    """A completed trunk whose stable checkpoint is damaged: every try of the branch says so, with what
    to do; the branch neither restarts anything nor deletes the evidence (it is the trunk's file)."""
    from ehrfm.checkpoint import recover_checkpoint

    copy = tmp_path / "trunk"
    shutil.copytree(trunk, copy)
    model = stable_checkpoint_dir(copy, 4096) / "checkpoint" / "model.safetensors"
    with open(model, "r+b") as f:
        f.truncate(100)
    for attempt in range(2):  # the same, right diagnosis on every relaunch
        out = tmp_path / f"branch{attempt}"
        with pytest.raises(UserError) as e:
            train(cfg(tok, out, trunk_dir=str(copy)))
        assert str(e.value) == (
            f"trunk {copy}: its stable checkpoint at 4096 tokens is damaged: checkpoint file model.safetensors is damaged "
            "(sha256 differs from the one recorded in state.json); retrain the trunk (ehrfm train ... --overwrite; in a "
            "sweep, delete the trunk's run dir and relaunch with --retry-failed: the trunk retrains, then this branch)")
        assert model.stat().st_size == 100 and not out.exists()
    # gone altogether (an older ehrfm deleted it): the trunk completed, so it is not "not reached yet"
    shutil.rmtree(model.parent)
    with pytest.raises(UserError, match=r"trunk .* completed, but its stable checkpoint at 4096 tokens \(.*\) is missing; "
                                        r"retrain the trunk \(ehrfm train ... --overwrite"):
        train(cfg(tok, tmp_path / "branch2", trunk_dir=str(copy)))
    # its config.json deleted: named as lost (before: "trunk ... completed before any checkpoint: None")
    (copy / "config.json").unlink()
    with pytest.raises(UserError) as e:
        train(cfg(tok, tmp_path / "branch3", trunk_dir=str(copy)))
    assert str(e.value).startswith(f"trunk {copy} has lost its config.json: what it trained cannot be checked")
    # A run's own damaged checkpoint state is reported once, in plain words (not "checkpoint checkpoint state").
    state = copy / "checkpoint" / "state.json"
    state.write_text("{")
    msg = recover_checkpoint(copy)
    assert f"checkpoint state {state} is damaged: not valid JSON" in msg and "checkpoint checkpoint" not in msg
    assert msg.endswith("no good earlier checkpoint: restarting the run from step 0")


def test_cli_branch_refusal_is_one_line(tok, trunk, tmp_path):
    out = tmp_path / "b"
    p = subprocess.run(
        [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "2", "--d-model", "32", "--n-head", "2",
         "--context", "64", "--tokens", str(15 * STEP), "--batch-size", "4", "--lr", "3e-3", "--seed", "3", "--eval-tokens", "4096",
         "--schedule", "wsd", "--warmup-steps", "2", "--trunk", str(trunk)],
        capture_output=True, text=True, env={**os.environ, "EHRFM_QUIET": "1"}, timeout=300)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "keeps no stable checkpoint at 3072 tokens" in p.stderr
    assert not out.exists()


def test_a_trunk_killed_without_its_own_checkpoint_resumes_from_its_stable_checkpoint(tok, trunk, tmp_path, capsys):
    """A trunk SIGKILLed (out of memory) after a stable-phase checkpoint but before any checkpoint of its own trained
    again from step 0; it resumes from the newest stable checkpoint it kept for its branches, and ends as the
    uninterrupted trunk did, to the bit (CPU)."""
    from ehrfm.checkpoint import verify_checkpoint

    def killed_at_step_25(name):
        copy = tmp_path / name
        shutil.copytree(trunk, copy)
        shutil.rmtree(copy / "checkpoint")  # no checkpoint of its own (a sweep's runs checkpoint only when stopped)
        shutil.rmtree(stable_checkpoint_dir(copy, 8192))  # the one at its decay start (step 32): not reached
        (copy / "result.json").unlink()
        lines = (copy / "metrics.jsonl").read_text().splitlines()
        (copy / "metrics.jsonl").write_text("\n".join(lines[:25]) + "\n")  # its log up to the kill
        return copy

    def train_again(out):
        capsys.readouterr()
        result = train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), tokens=TRUNK_TOKENS, stable_checkpoints=[16 * STEP], **COMMON))
        assert result["status"] == "completed"
        assert result["val_loss"] == json.loads((trunk / "result.json").read_text())["val_loss"]
        assert_same_tensors(trunk / "checkpoint" / "model.safetensors", out / "checkpoint" / "model.safetensors")
        assert_same_tensors(trunk / "checkpoint" / "optimizer.safetensors", out / "checkpoint" / "optimizer.safetensors")
        steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == [json.loads(x)["step"] for x in (trunk / "metrics.jsonl").read_text().splitlines()]
        return capsys.readouterr().err

    copy = killed_at_step_25("trunk")
    err = train_again(copy)
    assert "no checkpoint of its own; resuming from its stable-phase checkpoint at step 16 (tokens-4096)" in err, err
    # a damaged stable checkpoint is passed over (from step 0 here), and rewritten sound when the run passes it
    again = killed_at_step_25("again")
    damaged = stable_checkpoint_dir(again, 4096) / "checkpoint"
    with open(damaged / "model.safetensors", "r+b") as f:
        f.truncate(100)
    assert verify_checkpoint(damaged)[1] is not None
    err = train_again(again)
    assert "resuming from its stable-phase" not in err and verify_checkpoint(damaged)[1] is None, err
    # said, not done silently (a deleted checkpoint restarted without a word: a helper)
    assert f"{again}: no checkpoint to resume from (its log reaches step 25): training from step 0" in err, err
