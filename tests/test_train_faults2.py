"""Faults of a user trying to break training and its readers (round 2).

- a kill -9 after the final checkpoint, before result.json: the rerun ends with the uninterrupted
  run's metrics.jsonl (no duplicated end-of-run line) and result;
- a run asked for more tokens than the train split holds says so (epochs) before it trains;
- a token dir whose arrays or index are not what `ehrfm tokenize` writes (float tokens or times,
  negative ids, offsets outside the array, overlapping or repeated subjects) is refused with one
  line naming the file, for training and for the clinical heads, before anything is written.
Faults land at named hold points (ehrfm.fault_points), never after a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from test_heads import cohort  # noqa: F401 (fixture)
from test_train import make_token_dir

from ehrfm.fault_points import wait_held
from ehrfm.tokens import TokenDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
SHAPE = ["--n-layer", "1", "--d-model", "32", "--n-head", "2", "--context", "64"]


def train_cmd(tok, out, tokens=8_000, *more):
    return [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), *SHAPE, "--tokens", str(tokens),
            "--batch-size", "4", "--lr", "3e-3", "--eval-tokens", "2048", "--seed", "5", *more]


def ehrfm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], env=ENV, capture_output=True, text=True)


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_after_the_final_checkpoint_resumes_to_the_uninterrupted_run(tok, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(tok, ref), env=ENV, check=True, capture_output=True)
    out, holds = tmp_path / "run", tmp_path / "holds"
    env = dict(ENV, EHRFM_HOLD_AT="final-checkpoint", EHRFM_HOLD_DIR=str(holds))
    proc = subprocess.Popen(train_cmd(tok, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_held(holds, out.name, "final-checkpoint", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGKILL)  # the final checkpoint is written, result.json is not
    proc.communicate(timeout=120)
    assert not (out / "result.json").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["status"] == "completed"

    done = subprocess.run(train_cmd(tok, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    a, b = json.loads((ref / "result.json").read_text()), json.loads((out / "result.json").read_text())
    assert b["status"] == "completed" and b["val_loss"] == a["val_loss"] and b["steps"] == a["steps"]
    assert b["session_tokens_per_s"] is None  # this process trained no step: no rate made of nothing
    assert metrics(out) == metrics(ref)  # the end-of-run line once, not twice
    wa, wb = load_file(str(ref / "checkpoint" / "model.safetensors")), load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_more_tokens_than_the_train_split_is_flagged(tmp_path):
    tok = make_token_dir(tmp_path / "tok", n_subjects=(6, 4, 4), max_len=60)  # a few hundred train tokens
    unique = len(np.load(tok / "train" / "tokens.npy"))
    p = subprocess.run(train_cmd(tok, tmp_path / "run", 4_000), env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-800:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "completed" and res["epochs"] == pytest.approx(4_000 / unique)
    warning = [line for line in p.stderr.splitlines() if line.startswith("ehrfm: warning:")]
    assert len(warning) == 1 and f"{res['epochs']:.3f} epochs" in warning[0] and f"{unique:,} tokens" in warning[0], p.stderr
    assert str(tok / "train") in warning[0]
    # a run within one epoch says nothing of the kind
    q = subprocess.run(train_cmd(tok, tmp_path / "short", unique // 2), env=ENV, capture_output=True, text=True)
    assert q.returncode == 0 and "epochs" not in q.stderr, q.stderr


def _damage(tok: Path, kind: str) -> str:
    """Damage the train split of `tok` as `kind`; returns the file the error must name."""
    d = tok / "train"
    (tok / "stats.json").unlink(missing_ok=True)
    if kind in ("negative id", "float tokens"):
        t = np.load(d / "tokens.npy").astype(np.int64)
        t[3] = -2
        np.save(d / "tokens.npy", t if kind == "negative id" else t.astype(np.float64) + 0.5)
        return "train/tokens.npy"
    if kind == "float times":
        np.save(d / "times.npy", np.load(d / "times.npy").astype(np.float32))
        return "train/times.npy"
    index = pl.read_parquet(d / "index.parquet")
    off, length = index["offset"].to_numpy().copy(), index["length"].to_numpy().copy()
    if kind == "offset outside":
        off[0] = len(np.load(d / "tokens.npy"))
    elif kind == "overlap":
        off[1] = off[0] + 1
    elif kind == "negative length":
        length[0], length[1] = length[0] + length[1] + 1, -1
    index = index.with_columns(offset=pl.Series(off), length=pl.Series(length))
    if kind == "repeated subject":
        index = index.with_columns(subject_id=pl.Series(np.r_[index["subject_id"][1], index["subject_id"][1:].to_numpy()]))
    if kind == "text subject_id":
        index = index.with_columns(subject_id=pl.col("subject_id").cast(pl.Utf8))
    index.write_parquet(d / "index.parquet")
    return "train/index.parquet"


KINDS = ["negative id", "float tokens", "float times", "offset outside", "overlap", "negative length", "repeated subject",
         "text subject_id"]


@pytest.mark.parametrize("kind", KINDS)
def test_token_dir_of_another_layout_is_one_line_before_anything_is_written(tok, tmp_path, kind):
    bad = tmp_path / "tok"
    shutil.copytree(tok, bad)
    named = _damage(bad, kind)
    out = tmp_path / "run"
    p = subprocess.run(train_cmd(bad, out), env=ENV, capture_output=True, text=True)
    assert p.returncode == 2, (kind, p.returncode, p.stderr[-800:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr and named in lines[0], (kind, p.stderr)
    assert "re-create the token dir" in lines[0]
    assert not out.exists()  # refused before the run dir is made


@pytest.mark.parametrize("head", ["probe", "finetune", "zeroshot"])
def test_heads_refuse_token_ids_outside_the_vocab_even_when_stats_json_says_otherwise(cohort, tmp_path, head):  # noqa: F811
    tok, labels, run = cohort
    bad = tmp_path / "tok"
    shutil.copytree(tok, bad)
    t = np.load(bad / "held_out" / "tokens.npy")
    vocab = len(json.loads((bad / "tokenizer.json").read_text())["vocab"])
    t[t == t.max()] = vocab + 7  # ids of another, larger vocabulary
    np.save(bad / "held_out" / "tokens.npy", t)
    # stats.json still describes the old arrays (same token counts): the heads read the ids themselves
    stats = {"splits": {s: {"tokens": int(len(np.load(bad / s / "tokens.npy"))), "max_token_id": vocab - 1}
                        for s in ("train", "tuning", "held_out")}}
    (bad / "stats.json").write_text(json.dumps(stats))
    run_fp = json.loads((run / "checkpoint" / "state.json").read_text())["tokenizer_fingerprint"]
    assert run_fp == TokenDir(bad).fingerprint  # the same tokenizer.json: only the ids are foreign
    extra = ["--task", "in_hospital_mortality", "--samples", "2", "--max-new-tokens", "4"] if head == "zeroshot" else []
    p = ehrfm(head, run, "--tokens", bad, "--labels", labels, "--out", tmp_path / "out", *extra)
    assert p.returncode == 2, (p.returncode, p.stderr[-1500:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "held_out/tokens.npy" in lines[0] and f">= the vocab size {vocab}" in lines[0], p.stderr
    assert not (tmp_path / "out").exists()
