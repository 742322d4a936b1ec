"""Sweep and training faults of a tenth break-it pass (real runs, real files).

- A token dir re-tokenized in place while a launch ran: the jobs that started after the change
  trained on the new data, and only `sweep status`/`collect` found it afterwards (the runs' config.json
  against sweep.json). Each job now carries sweep.json's data identity (TrainConfig.planned_data) and
  its trainer refuses other data before it writes anything: the run fails at its start, naming what
  differs, with nothing trained.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_sweep_faults6 import _held_local_launch

from ehrfm.config import TrainConfig
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir, data_identity
from ehrfm.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _retokenize_in_place(tok) -> None:
    """The train split's content changes, its counts do not: what a new extract tokenized into the same dir looks like."""
    path = tok / "train" / "tokens.npy"
    tokens = np.load(path)
    np.save(path, np.roll(tokens, 1))


def test_a_job_started_after_its_token_dir_changed_trains_nothing_and_fails_naming_it(tok, tmp_path):
    own = tmp_path / "tok"
    shutil.copytree(tok, own)
    out, holds, rid, launcher, _ = _held_local_launch(own, tmp_path, "trainer-start")
    planned = json.loads((out / "sweep.json").read_text())["data"]
    assert json.loads((out / "jobs" / f"{rid}.train.json").read_text())["planned_data"] == planned
    _retokenize_in_place(own)
    (holds / f"{rid}.trainer-start.release").touch()
    stdout, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1 and "1 failed" in stdout, stdout + err[-2000:]
    result = json.loads((out / "runs" / rid / "result.json").read_text())
    assert result["status"] == "failed" and "holds other data than run" in result["error"], result
    assert "train content (train/tokens.npy and index.parquet: sha256 differs)" in result["error"], result["error"]
    assert f"planned on by sweep {out}" in result["error"], result["error"]
    assert not (out / "runs" / rid / "checkpoint").exists() and not (out / "runs" / rid / "config.json").exists()


def test_ehrfm_train_refuses_data_other_than_planned_before_writing(tok, tmp_path):
    kw = dict(tokens_dir=str(tok), n_layer=1, d_model=16, n_head=2, context=32, tokens=2048, batch_size=4, eval_tokens=512)
    planned = data_identity(TokenDir(tok))
    other = {**planned, "tuning_tokens": planned["tuning_tokens"] + 1}
    with pytest.raises(UserError, match=r"holds other data than run .* by its launcher \(tuning_tokens \d+ vs \d+\)"):
        train(TrainConfig(out_dir=str(tmp_path / "refused"), planned_data=other, **kw))
    assert not (tmp_path / "refused").exists()
    done = train(TrainConfig(out_dir=str(tmp_path / "run"), planned_data=planned, **kw))
    assert done["status"] == "completed"
    with pytest.raises(UserError, match="planned_data must be an object"):
        TrainConfig(out_dir=str(tmp_path / "x"), planned_data=[1], **kw)


def test_replicate_seeds_beyond_100_are_refused_and_a_plan_of_thousands_of_runs_is_warned(tok, tmp_path):
    from test_sweep import ehrfm

    p = ehrfm("sweep", "plan", "--tokens", tok, "--budgets", "2e8", "--out", tmp_path / "typo", "--run-seeds", "100000")
    assert p.returncode == 2 and "--run-seeds must be an integer in 1..100 (got 100000)" in p.stderr, p.stderr
    assert not (tmp_path / "typo").exists()
    p = ehrfm("sweep", "plan", "--tokens", tok, "--budgets", "2e8,4e8,8e8,1.6e9,3.2e9", "--sizes", "4", "--out", tmp_path / "many",
              "--run-seeds", "100", "--context", "64", "--min-steps", "1")
    assert p.returncode == 0, p.stderr
    n = len(pq.read_table(tmp_path / "many" / "plan.parquet"))
    assert n > 1000 and f"{n} runs planned (5 budget(s)" in p.stderr and "up to 100 seeds each" in p.stderr, p.stderr


def test_a_sweep_wide_mlp_width_is_refused_at_planning(tok, tmp_path):
    from test_sweep import ehrfm

    for width in ("7", "-1"):
        p = ehrfm("sweep", "plan", "--tokens", tok, "--budgets", "1e10", "--sizes", "3", "--context", "64",
                  "--out", tmp_path / f"w{width}", "--train-opt", f"mlp_hidden={width}")
        assert p.returncode == 2 and f"train option mlp_hidden={width}: a sweep's shapes take the family's SwiGLU width" \
            in p.stderr, p.stderr
        assert not (tmp_path / f"w{width}").exists()


def test_a_budget_beyond_any_training_run_is_a_usage_error_of_ehrfm_train(tok, tmp_path):
    kw = dict(tokens_dir=str(tok), out_dir=str(tmp_path / "r"), n_layer=1, d_model=16, n_head=2, context=32)
    with pytest.raises(UserError, match=r"tokens must be at most 1e\+15 \(got 1e\+30\)"):
        TrainConfig(tokens=10**30, **kw)
    with pytest.raises(UserError, match=r"flops must be at most 1e\+30 \(got 1e\+35\)"):
        TrainConfig(flops=1e35, **kw)
    assert TrainConfig(tokens=10**15, **kw).tokens == 10**15


def test_a_checkpoint_of_another_seed_or_lr_is_refused_not_resumed(tok, tmp_path):
    from ehrfm.train import request_stop

    kw = dict(tokens_dir=str(tok), n_layer=1, d_model=16, n_head=2, context=32, tokens=4096, batch_size=4, eval_tokens=512)
    for name, seed, lr in (("a", 3, 1e-3), ("b", 4, 3e-3)):
        request_stop()  # interrupted after its first step: a checkpoint, as a preempted run leaves
        assert train(TrainConfig(out_dir=str(tmp_path / name), seed=seed, lr=lr, **kw))["status"] == "interrupted"
    shutil.rmtree(tmp_path / "b" / "checkpoint")
    shutil.copytree(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")
    with pytest.raises(UserError, match=r"was written by another run \(.*lr 0.001 in the checkpoint vs 0.003 now.*seed 3 in "
                                        r"the checkpoint vs 4 now"):
        train(TrainConfig(out_dir=str(tmp_path / "b"), seed=4, lr=3e-3, **kw))
    assert train(TrainConfig(out_dir=str(tmp_path / "a"), seed=3, lr=1e-3, **kw))["status"] == "completed"  # its own: resumed


def test_a_fresh_wsd_branch_does_not_warn_that_its_log_is_lost(tok, tmp_path, capsys):
    kw = dict(tokens_dir=str(tok), n_layer=1, d_model=16, n_head=2, context=64, batch_size=8, eval_tokens=512, seed=3,
              schedule="wsd", warmup_steps=5)
    assert train(TrainConfig(out_dir=str(tmp_path / "trunk"), tokens=60_000, stable_checkpoints=[20_480], **kw))["status"] == "completed"
    capsys.readouterr()
    done = train(TrainConfig(out_dir=str(tmp_path / "branch"), tokens=25_600, trunk_dir=str(tmp_path / "trunk"), **kw))
    assert done["status"] == "completed"
    assert "is missing" not in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (tmp_path / "branch" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 20_480 // 512 + 1 and steps == sorted(steps)  # its log begins after the branch point
