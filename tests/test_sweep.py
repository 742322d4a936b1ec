"""Sweeps without SLURM: the IsoFLOP planner, bad input, and a real sweep on the local executor.

Every run here is a real (tiny) training run on the shared synthetic token dir.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ehrfm.config import ModelConfig
from ehrfm.errors import UserError
from ehrfm.fault_points import wait_held
from ehrfm.shapes import flops_per_token, n_params, shape_for_params
from ehrfm.tokens import TokenDir

# A tiny sweep: two budgets, the same two shapes each (one shared ladder), ~14-90 optimizer steps per run.
TINY = dict(budgets=[1e9, 2.5e9], sizes=3, context=64, train={"batch_size": 8})
TINY_CLI = ["--budgets", "1e9,2.5e9", "--sizes", "3", "--context", "64", "--batch-size", "8"]


def ehrfm(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, EHRFM_QUIET="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout)


def slurm_answered(run, *args, **kwargs) -> subprocess.CompletedProcess:
    """`run(*args, **kwargs)` (an `ehrfm` command of a SLURM test) run again, for up to 3 minutes (a hang
    guard), while its answer says SLURM could not be asked: a busy slurmctld's squeue times out now and
    then, and status then says `unknown` (right, but not the state the test checks). A command whose
    every answer says so is returned as it is, for the test's assertion to show."""
    deadline = time.monotonic() + 180
    while "SLURM could not be asked" in ((p := run(*args, **kwargs)).stdout + p.stderr) and time.monotonic() < deadline:
        time.sleep(3)
    return p


def plan_rows(sweep_dir: Path) -> list[dict]:
    return pq.read_table(sweep_dir / "plan.parquet").to_pylist()


# --- planner -------------------------------------------------------------------------------------


def test_plan_is_isoflop_and_stable(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    sweep, rows, warnings = plan_sweep(synth_tokens, [1e9, 1e10], tmp_path / "a", sizes=5, context=64, train={"batch_size": 8})
    td = TokenDir(synth_tokens)
    assert sweep.tokenizer_fingerprint == td.fingerprint and sweep.vocab_size == td.vocab_size
    assert sweep.train_tokens == td.split("train").n_tokens
    assert {r["budget"] for r in rows} == {1e9, 1e10}
    for r in rows:
        cfg = ModelConfig(n_layer=r["n_layer"], d_model=r["d_model"], n_head=r["n_head"], context=64, vocab_size=td.vocab_size)
        # D = floor(C / flops_per_token) of the real shape, so every run of a budget spends C (to one token).
        assert r["flops_per_token"] == flops_per_token(cfg)
        assert r["tokens"] == int(r["budget"] // flops_per_token(cfg))
        assert r["budget"] - flops_per_token(cfg) < r["flops"] <= r["budget"]
        assert r["n_params"] == n_params(cfg)
        assert r["steps"] == math.ceil(r["tokens"] / (8 * 64))
        assert cfg == shape_for_params(r["target_n_params"], td.vocab_size, 64)
    # Targets: 5 sizes log-spaced over +-1 dex, i.e. a factor 10**0.5 apart, centred on N*(C).
    for budget in (1e9, 1e10):
        targets = sorted({r["target_n_params"] for r in rows if r["budget"] == budget})
        ratios = [b / a for a, b in zip(targets, targets[1:], strict=False)]
        assert all(abs(2 * math.log10(q) - round(2 * math.log10(q))) < 1e-9 for q in ratios), ratios  # (shapes that coincide are planned once)
    # Larger budgets shift the ladder to larger models (the centre N*(C) grows with C).
    n_small = max(r["n_params"] for r in rows if r["budget"] == 1e9)
    n_big = max(r["n_params"] for r in rows if r["budget"] == 1e10)
    assert n_big > n_small
    assert len({r["run_id"] for r in rows}) == len(rows)

    # Planning again, elsewhere or in place, gives the same ids.
    _, rows2, _ = plan_sweep(synth_tokens, [1e10, 1e9], tmp_path / "b", sizes=5, context=64, train={"batch_size": 8})
    assert [r["run_id"] for r in rows2] == [r["run_id"] for r in rows]
    _, rows3, _ = plan_sweep(synth_tokens, [1e9, 1e10], tmp_path / "a", sizes=5, context=64, train={"batch_size": 8})
    assert [r["run_id"] for r in rows3] == [r["run_id"] for r in rows]
    # Another training option is another run; where and how it runs (device, micro-batches) is not.
    _, rows4, _ = plan_sweep(synth_tokens, [1e9, 1e10], tmp_path / "c", sizes=5, context=64, train={"batch_size": 8, "lr": 3e-4})
    assert not {r["run_id"] for r in rows4} & {r["run_id"] for r in rows}
    _, rows5, _ = plan_sweep(synth_tokens, [1e9, 1e10], tmp_path / "d", sizes=5, context=64,
                             train={"batch_size": 8, "micro_batch_size": 2, "device": "cpu", "log_interval": 10})
    assert [r["run_id"] for r in rows5] == [r["run_id"] for r in rows]
    saved = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert saved["budgets"] == [1e9, 1e10] and saved["train"]["batch_size"] == 8 and saved["tokenizer_fingerprint"] == td.fingerprint


def test_plan_cli_warns_epochs_and_short_runs(synth_tokens, tmp_path):
    out = tmp_path / "sweep"
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "1e9,1e11", "--sizes", "3", "--out", out, "--context", "64", "--batch-size", "8")
    assert p.returncode == 0, p.stderr
    rows = plan_rows(out)
    train_tokens = TokenDir(synth_tokens).split("train").n_tokens
    over = [r for r in rows if r["tokens"] > train_tokens]
    short = [r for r in rows if r["steps"] < 50]
    assert over and short  # this plan has both kinds
    assert p.stderr.count("epochs of the") == len(over)
    assert p.stderr.count("optimizer steps (< --min-steps 50)") == len(short)
    assert f"planned {len(rows)} runs over 2 budgets" in p.stdout
    for r in rows:
        assert r["run_id"] in p.stdout
        assert r["epochs"] == pytest.approx(r["tokens"] / train_tokens)


def test_plan_budget_too_small_names_it(synth_tokens, tmp_path):
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "1e9,2e6", "--sizes", "3", "--out", tmp_path / "s", "--context", "64", "--batch-size", "8")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "budget 2e+06 FLOPs is too small for the smallest shape" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_plan_bad_budgets_and_options(synth_tokens, tmp_path):
    from sweeps.plan import parse_budgets, parse_train_options

    assert parse_budgets("3e12, 1e12,1e12") == [1e12, 1e12, 3e12]  # the repeat is planned once, with a note (canonical_budgets)
    for bad in ("1e12,abc", "-1", "", "inf"):
        with pytest.raises(UserError):
            parse_budgets(bad)
    assert parse_train_options(["lr=3e-4", "warmup-frac=0.1", "batch_size=16"]) == {"lr": 3e-4, "warmup_frac": 0.1, "batch_size": 16}
    with pytest.raises(UserError, match="not_an_option"):
        parse_train_options(["not_an_option=1"])
    with pytest.raises(UserError, match="set per run"):
        parse_train_options(["n_layer=4"])


def other_tokenizer_copy(synth_tokens: Path, dst: Path) -> Path:
    """The same token dir with a different tokenizer.json (one more vocab entry)."""
    shutil.copytree(synth_tokens, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    tok["vocab"] = list(tok["vocab"]) + ["EXTRA//TOKEN"]
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


def test_sweep_dir_of_another_tokenizer_is_refused(synth_tokens, tmp_path):
    out = tmp_path / "sweep"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI).returncode == 0
    before = (out / "plan.parquet").read_bytes()
    other = other_tokenizer_copy(synth_tokens, tmp_path / "tok2")
    p = ehrfm("sweep", "plan", "--tokens", other, "--out", out, *TINY_CLI)
    assert p.returncode == 2 and "planned with another tokenizer" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert (out / "plan.parquet").read_bytes() == before
    # The token dir the sweep was planned on changed its tokenizer in place: launch refuses too.
    sweep = json.loads((out / "sweep.json").read_text())
    sweep["tokens_dir"] = str(other)
    (out / "sweep.json").write_text(json.dumps(sweep))
    p = ehrfm("sweep", "launch", out, "--executor", "local")
    assert p.returncode == 2 and "tokenizer fingerprint" in p.stderr
    assert not (out / "runs").exists()


def test_launch_bad_executor_and_missing_slurm(synth_tokens, tmp_path):
    out = tmp_path / "sweep"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI).returncode == 0
    p = ehrfm("sweep", "launch", out, "--executor", "kubernetes")
    assert p.returncode == 2
    assert p.stderr.strip() == "ehrfm sweep launch: error: unknown executor 'kubernetes': choose one of slurm, local"
    # No SLURM commands on PATH (an empty bin dir): one clear error naming them.
    empty = tmp_path / "bin"
    empty.mkdir()
    p = ehrfm("sweep", "launch", out, "--executor", "slurm", env={"PATH": str(empty)})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "SLURM command(s) sbatch, srun, squeue, scontrol not found" in p.stderr
    assert not (out / "runs").exists() and not (out / "jobs").exists()
    p = ehrfm("sweep", "status", tmp_path / "nowhere")
    assert p.returncode == 2 and "not a sweep dir" in p.stderr


def test_parse_time():
    from sweeps.launch import parse_time_minutes

    assert parse_time_minutes("90") == 90
    assert parse_time_minutes("1:30:00") == 90
    assert parse_time_minutes("2-00:00:00") == 2880
    assert parse_time_minutes("45:30") == 46
    with pytest.raises(UserError):
        parse_time_minutes("soon")


# --- a real sweep on the local executor ----------------------------------------------------------


def break_one_run(sweep_dir: Path) -> str:
    """Give one planned run an impossible shape (n_head not dividing d_model): its trainer raises."""
    from plan_edits import write_plan

    table = pq.read_table(sweep_dir / "plan.parquet")
    rows = table.to_pylist()
    rows[0]["n_head"] = 3
    write_plan(sweep_dir, rows, table.schema)  # with the id planning would have given it
    return rows[0]["run_id"]


def launched_sweep(name: str, *launch_args):
    """A module fixture: (SWEEP, the launch's CompletedProcess) of the TINY sweep planned in a fresh
    dir and launched with `ehrfm sweep launch SWEEP *launch_args`."""

    @pytest.fixture(scope="module")
    def sweep(synth_tokens, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
        from sweeps.plan import plan_sweep

        out = tmp_path_factory.mktemp(name) / "sweep"
        plan_sweep(synth_tokens, out=out, **TINY)
        return out, ehrfm("sweep", "launch", out, *launch_args)

    return sweep


local_sweep = launched_sweep("local_sweep", "--executor", "local", "--max-parallel", "2")


def launched_ok(launched, *said: str) -> tuple[Path, list[dict]]:
    """(SWEEP, its 4 plan rows) of a `launched_sweep`, asserting that the launch succeeded and said `said`."""
    out, p = launched
    assert p.returncode == 0, p.stderr[-3000:]
    assert all(s in p.stdout for s in said), p.stdout
    rows = plan_rows(out)
    assert len(rows) == 4
    return out, rows


def test_local_sweep_completes_and_collects(local_sweep):
    out, rows = launched_ok(local_sweep, "ran 4 jobs locally (at most 2 at a time, 1 threads each)", "4 completed")
    c = ehrfm("sweep", "collect", out)
    assert c.returncode == 0, c.stderr
    table = pq.read_table(out / "results.parquet")
    expected = {"run_id": "string", "budget": "double", "n_params": "int64", "n_params_total": "int64", "tokens": "int64",
                "flops": "double", "loss": "double", "loss_per_event": "double", "status": "string"}
    assert {name: str(table.schema.field(name).type) for name in expected} == expected
    results = {r["run_id"]: r for r in table.to_pylist()}
    assert set(results) == {r["run_id"] for r in rows}
    for r in rows:
        got = results[r["run_id"]]
        run_result = json.loads((out / "runs" / r["run_id"] / "result.json").read_text())
        assert got["status"] == "completed" and got["error"] is None
        assert got["loss"] == run_result["val_loss"] and 0 < got["loss"] < math.log(r["n_params"] + 1e9)
        # Nats per event: the same held-out nats over fewer units (an event takes >= 1 token).
        assert got["loss_per_event"] == run_result["loss_per_event"] > got["loss"]
        # standard errors over the eval subjects (ehrfm.train.ratio_se), per token and per event
        assert got["eval_loss_se"] == run_result["eval_loss_se"] and 0 < got["eval_loss_se"] < 0.2 * got["loss"]
        assert got["loss_per_event_se"] == run_result["loss_per_event_se"] > got["eval_loss_se"]
        assert got["epochs"] == pytest.approx(r["epochs"]) and got["over_one_epoch"] == (r["epochs"] > 1)
        assert got["tokens"] == r["tokens"] == run_result["tokens"]
        assert got["n_params"] == r["n_params"] and got["budget"] == r["budget"]
        assert got["flops"] == pytest.approx(r["flops"])
        assert got["job_id"].startswith("local-")
        assert got["dtype"] == run_result["dtype"] == "float32" and got["device"] == run_result["device"] == "cpu"
        # The data available to every run, for the fits' repeated-data correction and the recommender.
        assert got["unique_tokens"] == TokenDir(json.loads((out / "sweep.json").read_text())["tokens_dir"]).split("train").n_tokens
        assert got["epochs"] == pytest.approx(got["tokens"] / got["unique_tokens"]) and got["epochs"] == pytest.approx(r["epochs"])
    # Costliest first (longest-first scheduling: the last job to end is a short one): with 2 slots and
    # 4 runs, both 2.5e9 runs were submitted before either 1e9 run (plan order puts 1e9 first). The
    # job processes' pids give the order (submitted_at has 1 s resolution, shorter than these runs),
    # read past a wrap of the pid counter (pid_max can be 32768) within the launch's few seconds.
    job_pid = {r["run_id"]: json.loads((out / "jobs" / f"{r['run_id']}.json").read_text())["job_pid"] for r in rows}
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if max(job_pid.values()) - min(job_pid.values()) > pid_max // 2:
        job_pid = {k: p + pid_max if p < pid_max // 2 else p for k, p in job_pid.items()}
    assert [r["budget"] for r in rows][0] == 1e9
    assert max(job_pid[r["run_id"]] for r in rows if r["budget"] == 2.5e9) < \
        min(job_pid[r["run_id"]] for r in rows if r["budget"] == 1e9)
    # More compute, lower loss for the same shape.
    by_shape = {}
    for r in rows:
        by_shape.setdefault((r["n_layer"], r["d_model"]), {})[r["budget"]] = results[r["run_id"]]["loss"]
    assert all(v[2.5e9] < v[1e9] for v in by_shape.values() if len(v) == 2)

    s = ehrfm("sweep", "status", out)
    assert s.returncode == 0 and s.stdout.count(" completed ") == 4 and "4 runs: 4 completed" in s.stdout
    # Relaunching a finished sweep submits nothing, and says why.
    again = ehrfm("sweep", "launch", out, "--executor", "local")
    assert again.returncode == 0
    assert again.stdout.strip() == "submitted 0 jobs: nothing to run (4 completed)"


def test_local_failed_run_is_recorded_and_retried_only_when_asked(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, [1e9], out, sizes=3, context=64, train={"batch_size": 8})
    bad = break_one_run(out)
    p = ehrfm("sweep", "launch", out, "--executor", "local")
    assert p.returncode == 1, p.stderr  # a failed run: nonzero exit, the others still ran
    assert "1 completed" in p.stdout and "1 failed" in p.stdout
    result = json.loads((out / "runs" / bad / "result.json").read_text())
    assert result["status"] == "failed"
    assert "not divisible by n_head=3" in result["error"]
    assert ehrfm("sweep", "collect", out).returncode == 0
    table = {r["run_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert table[bad]["status"] == "failed" and table[bad]["loss"] is None and "n_head=3" in table[bad]["error"]
    assert table[bad]["loss_per_event"] is None
    assert sum(r["status"] == "completed" for r in table.values()) == 1

    again = ehrfm("sweep", "launch", out, "--executor", "local")
    assert again.stdout.strip() == "submitted 0 jobs: nothing to run (1 completed, 1 failed (pass --retry-failed to resubmit failed runs))"
    retry = ehrfm("sweep", "launch", out, "--executor", "local", "--retry-failed")
    assert "ran 1 jobs locally" in retry.stdout and "1 failed" in retry.stdout
    assert (out / "jobs" / f"{bad}.failed-1.json").is_file()  # the first failure is kept
    record = json.loads((out / "jobs" / f"{bad}.json").read_text())
    assert record["launches"] == 2 and len(record["previous_job_ids"]) == 1


def _signal_dispositions(pid: int) -> str:
    """The SigBlk/SigIgn/SigCgt lines of /proc/PID/status: which signals a process blocks (its main thread), ignores and
    catches (for failure messages: a Ctrl-C that a launcher never saw under load, stops 36-37)."""
    try:
        return " ".join(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    except OSError as e:
        return f"(unreadable: {e})"


def _launch_held_at_step_5(out: Path, rid: str, holds: Path) -> subprocess.Popen:
    """A local launch of `out` whose one trainer holds after step 5 until it is stopped (ehrfm.fault_points)."""
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env=dict(os.environ, EHRFM_QUIET="1", EHRFM_HOLD_AT="step-5", EHRFM_HOLD_DIR=str(holds)))
    wait_held(holds, rid, "step-5", is_alive=lambda: launcher.poll() is None)
    return launcher


def test_local_launch_sigterm_checkpoints_its_jobs_and_exits_143(synth_tokens, tmp_path):
    """SIGTERM to the launcher alone (a cluster's job killer, `kill PID`): its jobs checkpoint, exit 143."""
    import signal

    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, [5e10], out, sizes=1, context=64, train={"batch_size": 8})
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    launcher = _launch_held_at_step_5(out, rid, tmp_path / "holds")
    dispositions = _signal_dispositions(launcher.pid)
    launcher.send_signal(signal.SIGTERM)
    stdout, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 143 and "1 running jobs checkpointed" in err and "terminated (SIGTERM)" in err, \
        f"{dispositions}\n{stdout[-1000:]}\n{err[-2000:]}"
    assert json.loads((out / "runs" / rid / "checkpoint" / "state.json").read_text())["step"] == 5
    assert " interrupted " in ehrfm("sweep", "status", out).stdout


def test_local_ctrl_c_checkpoints_and_relaunch_resumes_to_the_same_loss(synth_tokens, tmp_path):
    import signal

    from sweeps.plan import plan_sweep

    out, reference = tmp_path / "sweep", tmp_path / "reference"
    for d in (out, reference):  # one run of ~780 optimizer steps, planned twice: same run id
        plan_sweep(synth_tokens, [5e10], d, sizes=1, context=64, train={"batch_size": 8})
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    launcher = _launch_held_at_step_5(out, rid, tmp_path / "holds")  # held until interrupted: no race
    dispositions = _signal_dispositions(launcher.pid)
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C in the launching terminal: the whole process group
    stdout, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 130 and "1 running jobs checkpointed" in err, f"{dispositions}\n{stdout[-1000:]}\n{err[-2000:]}"
    # submitit's local job controller shares the terminal's process group: it printed a KeyboardInterrupt
    # traceback of its own; it now starts with SIGINT blocked and the launcher relays the stop (SIGTERM)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert json.loads((out / "runs" / rid / "checkpoint" / "state.json").read_text())["step"] == 5
    status = ehrfm("sweep", "status", out)
    assert f"{rid}" in status.stdout and " interrupted " in status.stdout, status.stdout
    assert (out / "runs" / rid / "checkpoint").is_dir() and not (out / "runs" / rid / "result.json").exists()

    resumed = ehrfm("sweep", "launch", out, "--executor", "local")
    assert resumed.returncode == 0 and "1 completed" in resumed.stdout, resumed.stderr[-2000:]
    assert "interrupted at step" in (out / "logs" / f"{rid}.log").read_text()
    assert ehrfm("sweep", "launch", reference, "--executor", "local").returncode == 0
    a = json.loads((out / "runs" / rid / "result.json").read_text())
    b = json.loads((reference / "runs" / rid / "result.json").read_text())
    assert a["status"] == b["status"] == "completed" and a["val_loss"] == b["val_loss"]


def _label_dir(meds, tmp_path, task: str, *options):
    """tmp_path/labels holding <task>.parquet made by `ehrfm labels` (the dir `collect --labels` reads)."""
    labels = tmp_path / "labels"
    labels.mkdir()
    made = ehrfm("labels", meds, "--task", task, "--out", labels / f"{task}.parquet", *options)
    assert made.returncode == 0, made.stderr
    return labels


def test_collect_warns_when_completed_runs_trained_in_two_precisions(local_sweep, tmp_path):
    """dtype auto is float32 on CPU and bfloat16 on CUDA: a sweep launched partly on each (its run ids
    leave the device out) was collected and fitted as one recipe, and results.parquet had no column to
    tell. Now each row has dtype and device, and a mix is said."""
    out, _ = launched_ok(local_sweep)
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoint*", "*.lock", ".*lock"))
    one = sorted((copy / "runs").glob("*/result.json"))[0]
    result = json.loads(one.read_text())
    one.write_text(json.dumps({**result, "dtype": "bfloat16", "device": "cuda"}))
    c = ehrfm("sweep", "collect", copy)
    assert c.returncode == 0, c.stderr
    assert "completed runs trained in 2 precisions (bfloat16 1, float32 3; column dtype)" in c.stderr
    dtypes = pq.read_table(copy / "results.parquet").column("dtype").to_pylist()
    assert sorted(dtypes) == ["bfloat16", "float32", "float32", "float32"]


def test_collect_with_labels_adds_utility_columns(local_sweep, synth_meds, tmp_path):
    out, p = local_sweep
    assert p.returncode == 0
    # stays over 3 days: 28 of the 56 held-out labels positive (over 7 days, 6: too few for an SE, which is then withheld)
    labels = _label_dir(synth_meds, tmp_path, "long_los", "--long-los-days", "3")
    c = ehrfm("sweep", "collect", out, "--labels", labels, "--max-labels", "200")
    assert c.returncode == 0, c.stderr[-2000:]
    assert "utility columns auprc/long_los, auroc/long_los, auroc_boot/long_los, auroc_se/long_los" in c.stdout
    table = pq.read_table(out / "results.parquet")
    assert str(table.schema.field("auroc/long_los").type) == "double"
    assert str(table.schema.field("auroc_boot/long_los").type) == "list<element: double>"
    for r in table.to_pylist():
        assert r["status"] == "completed"
        assert 0.0 <= r["auroc/long_los"] <= 1.0 and 0.0 < r["auprc/long_los"] <= 1.0
        # Clustered DeLong (patients with several stays): held_out has 6 positives of 5 patients, so ~0.2-0.26.
        assert 0.0 < r["auroc_se/long_los"] < 0.35
        # 400 shared resamples of patients (the default): centred on the run's AUROC, spread about its SE
        boot = np.array(r["auroc_boot/long_los"], dtype=float)
        assert boot.shape == (400,) and np.isfinite(boot).mean() > 0.95
        assert abs(np.nanmean(boot) - r["auroc/long_los"]) < 0.5 * r["auroc_se/long_los"]
        assert 0.5 < np.nanstd(boot) / r["auroc_se/long_los"] < 2.0
    # The runs differ, so their probes differ: the column is measured per run, not a constant.
    assert len({r["auroc/long_los"] for r in table.to_pylist()}) > 1
    # How the probes were made is recorded with them; another pooling measures something else.
    assert json.loads(table.schema.metadata[b"ehrfm.utility"]) == {"pooling": "last", "max_labels": 200, "seed": 0,
                                                                  "probe_best": None}
    # --probe-best 1: only each budget's lowest-loss run is probed (the run the utility law takes), with the same AUROC
    best = ehrfm("sweep", "collect", out, "--labels", labels, "--max-labels", "200", "--probe-best", "1")
    assert best.returncode == 0, best.stderr[-2000:]
    some = pq.read_table(out / "results.parquet")
    assert json.loads(some.schema.metadata[b"ehrfm.utility"])["probe_best"] == 1
    full = {r["run_id"]: r for r in table.to_pylist()}
    for budget in {r["budget"] for r in full.values()}:
        runs = [r for r in some.to_pylist() if r["budget"] == budget]
        lowest = min(runs, key=lambda r: r["loss"])
        assert len(runs) >= 2 and lowest["auroc/long_los"] == full[lowest["run_id"]]["auroc/long_los"]
        assert all(r["auroc/long_los"] is None and r["auroc_boot/long_los"] is None for r in runs if r is not lowest)
    # ... and `ehrfm fit` reads that table, its null replicate lists among them (a TypeError before)
    fitted = ehrfm("fit", out / "results.parquet", "--out", tmp_path / "fit_best", "--bootstrap", "20", "--no-plots")
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    points = json.loads((tmp_path / "fit_best" / "fits.json").read_text())["utility"]["long_los"]["points"]
    assert len(points) == 2  # each budget's loss-optimal run, probed
    assert {p["run_id"] for p in points} <= {r["run_id"] for r in some.to_pylist() if r["auroc/long_los"] is not None}
    zero = ehrfm("sweep", "collect", out, "--labels", labels, "--probe-best", "0")
    assert zero.returncode == 2 and "--probe-best must be a whole number >= 1" in zero.stderr
    last = ehrfm("sweep", "collect", out, "--labels", labels, "--max-labels", "200", "--utility-boot", "0", "--pooling", "last+mean")
    assert last.returncode == 0, last.stderr[-2000:]
    table_last = pq.read_table(out / "results.parquet")
    assert json.loads(table_last.schema.metadata[b"ehrfm.utility"])["pooling"] == "last+mean"
    assert table_last.column("auroc/long_los").to_pylist() != table.column("auroc/long_los").to_pylist()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = ehrfm("sweep", "collect", out, "--labels", empty)
    assert bad.returncode == 2 and "no <task>.parquet label files" in bad.stderr


def test_one_runs_damaged_checkpoint_leaves_the_others_scored(local_sweep, synth_meds, tmp_path):
    """A break-it helper (2026-12-07): a completed run's checkpoint cut short or deleted stopped `collect --labels` for
    the whole sweep (exit 2, `ehrfm train`'s hint). That run now gets no probe scores, with a warning naming the file
    and the sweep's remedy; its loss and every other run's scores are collected."""
    out, p = local_sweep
    assert p.returncode == 0
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.lock", ".*lock"))
    runs = sorted((copy / "runs").glob("*/checkpoint/model.safetensors"))
    runs[0].write_bytes(runs[0].read_bytes()[:100])  # cut short
    shutil.rmtree(runs[1].parent)  # deleted
    damaged = {runs[0].parent.parent.name, runs[1].parent.parent.name}
    labels = _label_dir(synth_meds, tmp_path, "long_los", "--long-los-days", "3")
    c = ehrfm("sweep", "collect", copy, "--labels", labels, "--max-labels", "200", "--utility-boot", "0")
    assert c.returncode == 0, c.stderr[-2000:]
    for rid in damaged:
        assert f"{rid}: no probe scores: its checkpoint cannot be used (" in c.stderr, c.stderr
    assert f"remove {copy / 'runs' / runs[0].parent.parent.name} and run `ehrfm sweep launch {copy}` again" in c.stderr
    table = pq.read_table(copy / "results.parquet").to_pylist()
    assert all(r["status"] == "completed" and r["loss"] > 0 for r in table)
    assert {r["run_id"] for r in table if r["auroc/long_los"] is None} == damaged
    assert sum(r["auroc/long_los"] is not None for r in table) == len(table) - 2 >= 1


def test_collect_zeroshot_adds_rollout_auroc_and_resumes(local_sweep, synth_meds, tmp_path):
    """`collect --zeroshot` adds per-run zero-shot columns; each run's rollouts are kept, so a
    second collect reuses them, and a run whose kept result is gone is rolled out again to the
    same numbers (seeded)."""
    out, p = local_sweep
    assert p.returncode == 0
    labels = _label_dir(synth_meds, tmp_path, "in_hospital_mortality")
    args = ("sweep", "collect", out, "--labels", labels, "--max-labels", "100", "--zeroshot", "--zeroshot-rollouts", "4",
            "--zeroshot-max-labels", "40")
    c = ehrfm(*args)
    assert c.returncode == 0, c.stderr[-2000:]
    task = "in_hospital_mortality"
    cols = [f"zeroshot_auroc/{task}", f"zeroshot_auroc_se/{task}", f"zeroshot_undecided/{task}"]
    table = pq.read_table(out / "results.parquet")
    assert all(str(table.schema.field(col).type) == "double" for col in cols)
    first = {r["run_id"]: r for r in table.to_pylist()}
    for r in first.values():
        # the held-out split's 5 deaths are under 10 of a class: no standard error (it would be falsely narrow)
        assert r["status"] == "completed" and 0.0 <= r[cols[0]] <= 1.0 and r[cols[1]] is None
        assert 0.0 <= r[cols[2]] < 1.0 and f"auroc/{task}" in r  # the probe columns are still there
        kept = json.loads((out / "zeroshot" / r["run_id"] / f"{task}.json").read_text())
        assert kept["metrics"]["n"] == 40 and kept["scores"][cols[0]] == r[cols[0]]
    rid = sorted(first)[0]
    stamps = {q: q.stat().st_mtime_ns for q in (out / "zeroshot").rglob("*.json")}
    (out / "zeroshot" / rid / f"{task}.json").unlink()  # as if collect had stopped before this run
    again = ehrfm(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    second = {r["run_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert all(second[k][c] == first[k][c] for k in first for c in cols)
    after = {q: q.stat().st_mtime_ns for q in (out / "zeroshot").rglob("*.json")}
    assert {q for q in stamps if after[q] != stamps[q]} == {out / "zeroshot" / rid / f"{task}.json"}  # only it re-ran
    plain = ehrfm("sweep", "collect", out)  # off by default
    assert plain.returncode == 0 and cols[0] not in pq.read_table(out / "results.parquet").column_names
    lone = ehrfm("sweep", "collect", out, "--zeroshot")
    assert lone.returncode == 2 and "--zeroshot needs --labels" in lone.stderr


def test_trainer_killed_hard_is_recorded_failed_then_retried(synth_tokens, tmp_path):
    """A trainer killed without warning (the OOM killer's SIGKILL) leaves no result.json of its
    own: the job records the run as failed; --retry-failed trains it again to the normal result."""
    import signal

    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, [5e10], out, sizes=1, context=64, train={"batch_size": 8})
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    holds = tmp_path / "holds"  # the trainer holds after step 5: killed there, never after it finished
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, EHRFM_QUIET="1", EHRFM_HOLD_AT="step-5", EHRFM_HOLD_DIR=str(holds)))
    held = wait_held(holds, rid, "step-5", is_alive=lambda: launcher.poll() is None)
    assert held["pid"] == json.loads((out / "jobs" / f"{rid}.json").read_text())["trainer_pid"]
    os.kill(held["pid"], signal.SIGKILL)
    stdout, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 1 and "1 failed" in stdout
    result = json.loads((out / "runs" / rid / "result.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("trainer killed by signal 9")
    # killed, the trainer wrote nothing of its end: its log's last line (a warning) is not given as the cause
    assert "the other cause) (log: " in result["error"], result["error"]
    retry = ehrfm("sweep", "launch", out, "--executor", "local", "--retry-failed")
    assert retry.returncode == 0 and "1 completed" in retry.stdout
    assert json.loads((out / "runs" / rid / "result.json").read_text())["status"] == "completed"


def test_replanning_keeps_finished_runs_and_reports_dropped_ones(local_sweep, synth_tokens, tmp_path):
    out, p = local_sweep
    assert p.returncode == 0
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(out, sweep_dir)
    before = {r["run_id"]: r for r in plan_rows(sweep_dir)}
    from sweeps.plan import plan_sweep

    # Add a budget: the old runs keep their ids and stay completed; the new ones are planned.
    plan_sweep(synth_tokens, [1e9, 2.5e9, 1e10], sweep_dir, sizes=3, context=64, train={"batch_size": 8})
    rows = plan_rows(sweep_dir)
    assert set(before) < {r["run_id"] for r in rows}
    from sweeps.collect import status_rows

    states = {r["run_id"]: r["state"] for r in status_rows(sweep_dir)}
    assert all(states[rid] == "completed" for rid in before)
    assert all(states[r["run_id"]] == "planned" for r in rows if r["budget"] == 1e10)
    # Drop a budget: its finished runs are still reported (budget null, status unplanned since 2026-12-07: a reader
    # fitting status == completed took them), never silently lost.
    plan_sweep(synth_tokens, [2.5e9], sweep_dir, sizes=3, context=64, train={"batch_size": 8})
    assert ehrfm("sweep", "collect", sweep_dir).returncode == 0
    table = {r["run_id"]: r for r in pq.read_table(sweep_dir / "results.parquet").to_pylist()}
    assert set(table) == set(before)
    for rid, r in before.items():
        kept = r["budget"] == 2.5e9
        assert table[rid]["status"] == ("completed" if kept else "unplanned")
        assert table[rid]["budget"] == (r["budget"] if kept else None)
        assert kept or table[rid]["error"].endswith("its result.json says completed: not this sweep's run, never fitted or scored")


def test_local_slots_share_the_machine_without_oversubscribing():
    from sweeps.launch import LaunchConfig, local_slots

    cpu = local_slots(LaunchConfig(executor="local"), cores=16, gpus=[])
    assert (cpu.max_parallel, cpu.threads, cpu.gpu_groups) == (16, 1, [])
    four = local_slots(LaunchConfig(executor="local", cpus_per_task=4), cores=16, gpus=[])
    assert (four.max_parallel, four.threads) == (4, 4)
    ddp = local_slots(LaunchConfig(executor="local", tasks_per_node=2, max_parallel=2), cores=16, gpus=[])
    assert (ddp.max_parallel, ddp.threads) == (2, 4)  # 2 jobs x 2 ranks x 4 threads = 16 cores
    gpu = local_slots(LaunchConfig(executor="local", gpus_per_node=2), cores=32, gpus=[0, 1, 2, 3, 4])
    assert gpu.max_parallel == 2 and gpu.gpu_groups == [[0, 1], [2, 3]]  # GPU 4 alone cannot hold a job
    assert gpu.threads == 8  # 32 cores / (2 jobs x 2 ranks)
    with pytest.raises(UserError, match="this machine has 0 visible GPU"):
        local_slots(LaunchConfig(executor="local", gpus_per_node=1), cores=8, gpus=[])


def test_blow_up_sweep_is_recorded_diverged_and_fit_names_its_runs(local_sweep, synth_tokens, tmp_path):
    """--lr 50: every run ends finite but far above uniform guessing (ln V). Recorded diverged with
    the reason, never completed; `ehrfm fit` on a table holding them fits only the sound runs
    and names each blown-up run on stderr."""
    import polars as pl

    good, _ = local_sweep
    out = tmp_path / "sweep"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "1e9", "--sizes", "3", "--context", "64",
                 "--batch-size", "8", "--lr", "50", "--out", out).returncode == 0
    p = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "2")
    assert p.returncode == 1 and "2 diverged" in p.stdout, p.stdout + p.stderr[-2000:]  # 1: not all completed
    ln_v = math.log(TokenDir(synth_tokens).vocab_size)
    blown = [r["run_id"] for r in plan_rows(out)]
    for rid in blown:
        res = json.loads((out / "runs" / rid / "result.json").read_text())
        assert res["status"] == "diverged" and res["val_loss"] > 10 * ln_v
        assert f"above uniform guessing ln V = {ln_v:.4g}" in res["error"]
    status = ehrfm("sweep", "status", out)
    assert "2 runs: 2 diverged" in status.stdout and status.stdout.count("above uniform guessing") == 2
    assert ehrfm("sweep", "collect", out).returncode == 0 and ehrfm("sweep", "collect", good).returncode == 0
    both = pl.concat([pl.read_parquet(good / "results.parquet"), pl.read_parquet(out / "results.parquet")], how="vertical_relaxed")
    both.write_parquet(tmp_path / "results.parquet")
    fit = ehrfm("fit", tmp_path / "results.parquet", "--out", tmp_path / "fit", "--approach", "1", "--bootstrap", "0", "--no-plots")
    assert fit.returncode == 0, fit.stderr
    warned = [ln for ln in fit.stderr.splitlines() if ln.startswith("ehrfm fit: warning: run ")]
    assert sorted(warned) == sorted(f"ehrfm fit: warning: run {rid} not fitted: status diverged: "
                                    + json.loads((out / "runs" / rid / "result.json").read_text())["error"] for rid in blown)
    fits = json.loads((tmp_path / "fit" / "fits.json").read_text())
    assert fits["n_fitted"] == 4 and sorted(e["run_id"] for e in fits["excluded"]) == sorted(blown)


def test_a_sweep_refuses_its_token_dir_re_made_on_other_data_with_the_same_tokenizer(synth_tokens, demo_meds, tmp_path):
    """Before: only the tokenizer's fingerprint was checked, so a token dir re-made in place from another
    extract with the same tokenizer.json (`ehrfm tokenize --tokenizer`) was re-planned and launched
    silently, and new runs trained on other patients beside the completed ones."""
    from tokenization.tokenize import tokenize

    tok, out = tmp_path / "tok", tmp_path / "sweep"
    shutil.copytree(synth_tokens, tok)
    assert ehrfm("sweep", "plan", "--tokens", tok, "--out", out, *TINY_CLI).returncode == 0
    planned = json.loads((out / "sweep.json").read_text())["data"]
    assert planned["train_tokens"] > 0 and len(planned["train_sha256"]) == 64
    shutil.rmtree(tok)
    tokenize(demo_meds, tok, tokenizer=synth_tokens / "tokenizer.json")  # other patients, the same tokenizer
    for args in (("sweep", "plan", "--tokens", tok, "--out", out, *TINY_CLI), ("sweep", "launch", out, "--executor", "local")):
        p = ehrfm(*args)
        assert p.returncode == 2 and "was planned on other data than" in p.stderr and "train content" in p.stderr, p.stderr
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


def test_a_dry_run_launch_writes_nothing(synth_tokens, tmp_path):
    """Before: `sweep launch --dry-run` took the launch lock by opening .launch.lock for writing, so an
    archived or a colleague's read-only sweep could not be dry-run (EROFS). A dry run only reads: it
    takes a shared lock on an existing lock file opened for reading (so it still waits for a launch
    in progress: test_a_launch_waiting_for_another_launch_says_so), and none where none exists."""
    out = tmp_path / "sweep"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI).returncode == 0

    def files():
        return {p.relative_to(out): (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}

    before = files()
    dry = ehrfm("sweep", "launch", out, "--executor", "local", "--dry-run")
    assert dry.returncode == 0 and "would submit" in dry.stdout, dry.stderr
    assert files() == before and not (out / ".launch.lock").exists()
    (out / ".launch.lock").touch()  # a sweep launched before
    os.utime(out / ".launch.lock", ns=(1_000_000_000, 1_000_000_000))
    before = files()
    dry = ehrfm("sweep", "launch", out, "--executor", "local", "--dry-run")
    assert dry.returncode == 0 and "would submit" in dry.stdout and "waiting" not in dry.stderr, dry.stderr
    assert files() == before


def test_replanning_with_an_option_written_at_its_default_is_the_same_recipe(synth_tokens, tmp_path):
    """Before: a re-plan that wrote out an option at its default (--seed 0, --weight-decay 0.1), or left
    out one the first plan wrote, or gave a WSD-only option (--decay-fraction) to a cosine sweep, was
    refused as "another training recipe (seed default -> 0)", though every run id stayed the same.
    --seed 0 and --lr 0.001 are TrainConfig's defaults."""
    out = tmp_path / "sweep"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI).returncode == 0
    ids = sorted(pq.read_table(out / "plan.parquet").column("run_id").to_pylist())
    for extra in (["--seed", "0", "--lr", "0.001"], [], ["--decay-fraction", "0.5"]):
        p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI, *extra)
        assert p.returncode == 0, p.stderr
        assert sorted(pq.read_table(out / "plan.parquet").column("run_id").to_pylist()) == ids
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI, "--lr", "0.002")
    assert p.returncode == 2 and "lr 0.001 -> 0.002" in p.stderr, p.stderr


def test_a_sweep_keeps_its_recipe_when_a_release_changes_a_default(synth_tokens, tmp_path, monkeypatch):
    """Before: sweep.json held only the options given; every other setting was the default of whatever release read
    the sweep. After an upgrade that changed weight_decay's default, `sweep status` called every finished run "trained
    other than planned", and the re-plan it advised gave every run a new id (the finished ones unplanned: a helper).
    Now every shared identity setting is pinned at plan time; a re-plan keeps the sweep's own values."""
    from ehrfm.config import TrainConfig
    from sweeps.plan import load_sweep, plan_sweep, run_train_config

    out = tmp_path / "sweep"
    # planned by a release whose weight_decay default was 0.2 (the planner reads defaults from the fields)
    field = TrainConfig.__dataclass_fields__["weight_decay"]
    with monkeypatch.context() as m:
        m.setattr(field, "default", 0.2)
        _, rows, _ = plan_sweep(synth_tokens, [1e9], out, sizes=3, context=64, train={"batch_size": 8})
    # read by today's release (default 0.1): the runs train with the sweep's 0.2, and a re-plan keeps it and the ids
    assert TrainConfig(tokens_dir="", out_dir="", tokens=1).weight_decay == 0.1
    sweep, plan = load_sweep(out)
    assert sweep.train["weight_decay"] == 0.2 and sweep.train["eval_tokens"] == TrainConfig.eval_tokens
    assert run_train_config(sweep, plan[0], out / "runs" / plan[0]["run_id"]).weight_decay == 0.2
    _, again, _ = plan_sweep(synth_tokens, [1e9], out, sizes=3, context=64, train={"batch_size": 8})
    assert [r["run_id"] for r in again] == [r["run_id"] for r in rows]
    assert load_sweep(out)[0].train["weight_decay"] == 0.2
    # today's plan of the same grid is another recipe: other ids (the ids hash the pinned value)
    _, today, _ = plan_sweep(synth_tokens, [1e9], tmp_path / "today", sizes=3, context=64, train={"batch_size": 8})
    assert not {r["run_id"] for r in today} & {r["run_id"] for r in rows}


def test_replanning_with_another_recipe_is_refused_but_new_budgets_are_not(synth_tokens, tmp_path):
    """A re-plan into a sweep dir with another lr would leave the old runs beside the new ones, and a
    fit of the table would mix two recipes in each parabola (a tester's report): refused, naming the
    change; adding a budget with the same recipe stays allowed (the demo's staged planning)."""
    out = tmp_path / "sweep"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *TINY_CLI).returncode == 0
    before = (out / "plan.parquet").read_bytes()
    for extra, change in ((["--lr", "0.02"], "lr "), (["--context", "32"], "context 64 -> 32"), (["--schedule", "wsd"], "schedule cosine -> wsd")):
        args = list(TINY_CLI)
        if extra[0] in args:  # replace the value TINY_CLI gives
            args[args.index(extra[0]) + 1] = extra[1]
        else:
            args += extra
        p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *args)
        assert p.returncode == 2 and "another training recipe" in p.stderr and change in p.stderr, p.stderr
        assert (out / "plan.parquet").read_bytes() == before
    more = list(TINY_CLI)
    more[more.index("--budgets") + 1] += ",4e9"
    assert ehrfm("sweep", "plan", "--tokens", synth_tokens, "--out", out, *more).returncode == 0
