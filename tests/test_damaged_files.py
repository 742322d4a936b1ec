"""Damaged files read back across stages (issue 15, fault 3): one line naming the file, exit 2.

A truncated, empty or wrongly typed file that ehrfm wrote earlier (result.json, plan.parquet,
bootstrap.parquet, tokens.npy, index.parquet, tokenizer.json) is never shown as "interrupted" with
exit 0, never silently dropped, and never a traceback: `ehrfm` names the file and what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrfm.errors import UserError
from ehrfm.io import load_npy, read_json, read_parquet

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def ehrfm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], env=ENV, capture_output=True, text=True)


def assert_one_line_error(p: subprocess.CompletedProcess, *names: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-300:], p.stderr[-800:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture()
def sweep(tok, tmp_path) -> tuple[Path, list[str]]:
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8, 6e8], out, sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    return out, [r["run_id"] for r in rows]


COMPLETED = {"status": "completed", "val_loss": 3.21, "n_params": 1000, "tokens": 5000, "flops": 3e7}
DAMAGE = {
    "truncated": json.dumps(COMPLETED)[:25],
    "empty": "",
    "a list": json.dumps([COMPLETED]),
    "loss as text": json.dumps({**COMPLETED, "val_loss": "3.21"}),
    "status as list": json.dumps({**COMPLETED, "status": ["completed"]}),
    "no loss": json.dumps({k: v for k, v in COMPLETED.items() if k != "val_loss"}),
    "negative loss": json.dumps({**COMPLETED, "val_loss": -1.0}),
    "zero tokens": json.dumps({**COMPLETED, "tokens": 0}),
    "infinite flops": json.dumps({**COMPLETED, "flops": float("inf")}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_result_json_fails_its_run_and_the_others_are_still_reported(sweep, damage):
    """A damaged result.json among a sweep's runs (one of hundreds on a cluster: a node died
    mid-write on a filesystem without atomic rename, a hand edit) is that run's failure, named
    with the file and what to do; it no longer stops `status` and `collect` for every other run
    (they used to exit 2 on the first damaged file, so one bad file hid the whole sweep)."""
    sweep_dir, ids = sweep
    run = sweep_dir / "runs" / ids[0]
    (run / "checkpoint").mkdir(parents=True)  # a completed run has its final checkpoint
    (run / "result.json").write_text(DAMAGE[damage])
    status = ehrfm("sweep", "status", sweep_dir)
    assert status.returncode == 0, status.stderr
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith(f"{ids[0]}: failed: "))
    assert str(run / "result.json") in line and "damaged" in line and "--retry-failed" in line, line
    assert f"{len(ids)} runs: 1 failed, {len(ids) - 1} planned" in status.stdout
    collect = ehrfm("sweep", "collect", sweep_dir)
    assert collect.returncode == 0, collect.stderr
    warnings = collect.stderr.strip().splitlines()
    assert len(warnings) == 1 and str(run / "result.json") in warnings[0] and "damaged" in warnings[0], collect.stderr
    assert warnings[0].startswith(f"ehrfm sweep: warning: {ids[0]}: failed: "), warnings[0]  # the one form (ehrfm.io.warn)
    rows = {r["run_id"]: r for r in read_parquet(sweep_dir / "results.parquet").to_pylist()}
    assert rows[ids[0]]["status"] == "failed" and rows[ids[0]]["loss"] is None and "damaged" in rows[ids[0]]["error"]
    assert all(rows[i]["status"] == "planned" for i in ids[1:])
    # Launch submits the others and keeps this one until asked (it is a failure, never trained over blindly).
    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run")
    assert dry.returncode == 0 and f"would submit {ids[0]}" not in dry.stdout and "--retry-failed" in dry.stdout, dry.stdout


def test_damaged_result_json_is_retrained_by_retry_failed(sweep):
    """`--retry-failed`, as the message says, moves the damaged file aside and trains the run again."""
    sweep_dir, ids = sweep
    run = sweep_dir / "runs" / ids[0]
    run.mkdir(parents=True)
    (run / "result.json").write_text(DAMAGE["truncated"])
    only = ["--dry-run"]
    assert f"would submit {ids[0]} (failed)" in ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--retry-failed", *only).stdout
    for other in ids[1:]:  # train only this run here: the others are marked finished (never resubmitted) by hand
        (sweep_dir / "runs" / other).mkdir(parents=True)
        (sweep_dir / "runs" / other / "result.json").write_text(json.dumps({"status": "diverged", "error": "not trained in this test"}))
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--retry-failed", "--max-parallel", "1")
    assert p.returncode == 0 and "ran 1 jobs locally" in p.stdout and "1 completed" in p.stdout, p.stdout + p.stderr[-2000:]
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    assert (sweep_dir / "jobs" / f"{ids[0]}.failed-1.json").read_text() == DAMAGE["truncated"]


def test_intact_result_json_is_still_read(sweep):
    sweep_dir, ids = sweep
    run = sweep_dir / "runs" / ids[0]
    run.mkdir(parents=True)
    # its own run's identity, as the trainer writes it (another D, or none, is another run's result)
    planned = read_parquet(sweep_dir / "plan.parquet").to_pylist()[0]
    own = {k: planned[k] for k in ("tokens", "n_layer", "d_model", "n_head", "context", "seed")}
    fingerprint = json.loads((sweep_dir / "sweep.json").read_text())["tokenizer_fingerprint"]
    from test_sweep_faults import write_run_config

    write_run_config(run)  # as the trainer writes it before any result
    (run / "result.json").write_text(json.dumps({**COMPLETED, **own, "tokenizer_fingerprint": fingerprint}))
    p = ehrfm("sweep", "status", sweep_dir)
    assert p.returncode == 0 and "completed" in p.stdout, p.stderr


def test_truncated_plan_parquet_is_one_line(sweep):
    sweep_dir, _ = sweep
    plan = sweep_dir / "plan.parquet"
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    for cmd in ("status", "collect"):
        assert_one_line_error(ehrfm("sweep", cmd, sweep_dir), str(plan), "damaged")


def test_truncated_bootstrap_parquet_is_one_line(tmp_path):
    from analysis.synthetic import synthetic_results

    table = tmp_path / "results.csv"
    synthetic_results(budgets=(1e18, 1e19, 1e20), sizes=5, seed=1).write_csv(table)
    fit = tmp_path / "fit"
    p = ehrfm("fit", table, "--out", fit, "--approach", "1,2", "--bootstrap", "20", "--no-plots")
    assert p.returncode == 0, p.stderr[-500:]
    assert ehrfm("recommend", fit, "--flops", "1e19").returncode == 0
    boot = fit / "bootstrap.parquet"
    boot.write_bytes(boot.read_bytes()[:100])
    assert_one_line_error(ehrfm("recommend", fit, "--flops", "1e19"), str(boot), "damaged", "ehrfm fit")
    # Gone altogether: the intervals are n/a, and the warning says why (before: "[n/a]" and nothing else).
    boot.unlink()
    gone = ehrfm("recommend", fit, "--flops", "1e19")
    assert gone.returncode == 0, gone.stderr[-500:]
    assert "[n/a]" in gone.stdout
    assert f"{boot} is missing, though fits.json was fitted with 20 bootstrap replicates" in gone.stderr, gone.stderr


TRAIN = ["--n-layer", "1", "--d-model", "32", "--n-head", "2", "--context", "64", "--tokens", "1000", "--batch-size", "4",
         "--eval-tokens", "512"]


@pytest.mark.parametrize("target", ["train/tokens.npy", "tuning/times.npy", "train/index.parquet", "tokenizer.json"])
def test_damaged_token_dir_files_are_one_line(tok, tmp_path, target):
    import shutil

    bad = tmp_path / "tok"
    shutil.copytree(tok, bad)
    path = bad / target
    if target.endswith(".json"):
        path.write_text(json.dumps(["PAD", "UNK"]))  # valid JSON, wrong type
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    out = tmp_path / "run"
    assert_one_line_error(ehrfm("train", bad, "--out", out, *TRAIN), str(path), "damaged", "ehrfm tokenize")
    assert not out.exists()


def test_train_names_a_wrongly_typed_result_json(tok, tmp_path):
    out = tmp_path / "run"
    assert ehrfm("train", tok, "--out", out, *TRAIN).returncode == 0
    (out / "result.json").write_text("[]")
    assert_one_line_error(ehrfm("train", tok, "--out", out, *TRAIN), str(out / "result.json"), "damaged")
    (out / "result.json").unlink()  # what the message says to do: the final evaluation is redone
    again = ehrfm("train", tok, "--out", out, *TRAIN)
    assert again.returncode == 0 and json.loads((out / "result.json").read_text())["status"] == "completed"


def test_readers_name_the_file_and_never_the_content(tmp_path):
    secret = '{"subject_id": 10001234, "note": "'
    (tmp_path / "a.json").write_text(secret)
    with pytest.raises(UserError) as e:
        read_json(tmp_path / "a.json", "thing", expect=dict)
    assert str(tmp_path / "a.json") in str(e.value) and "10001234" not in str(e.value)
    (tmp_path / "b.json").write_text('"10001234"')
    with pytest.raises(UserError, match="a JSON str where a JSON object was expected") as e:
        read_json(tmp_path / "b.json", "thing", expect=dict)
    assert "10001234" not in str(e.value)
    (tmp_path / "c.parquet").write_bytes(b"PAR1" + b"\0" * 40)
    with pytest.raises(UserError, match="c.parquet is damaged"):
        read_parquet(tmp_path / "c.parquet")
    (tmp_path / "d.npy").write_bytes(b"")
    with pytest.raises(UserError, match=r"d.npy is damaged: not a readable .npy array \(empty file\)"):
        load_npy(tmp_path / "d.npy")


def test_truncated_meds_shard_is_named_by_tokenize(tmp_path):
    from tokenization.etl import etl
    from tokenization.synth import synthesize

    synthesize(tmp_path / "raw", n_patients=150, seed=2)
    etl(tmp_path / "raw", tmp_path / "meds")
    shard = sorted((tmp_path / "meds" / "data" / "train").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "tok"
    assert_one_line_error(ehrfm("tokenize", tmp_path / "meds", "--out", out), str(shard), "damaged")
    assert not out.exists() and not list(tmp_path.glob("tok.tmp-*"))
