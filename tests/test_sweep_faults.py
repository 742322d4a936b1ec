"""Faults cluster users hit in a sweep dir, found by kind (sweeps/state.py, collect.py, launch.py).

- a result.json that is not its run's own (copied from another run or another sweep): it was
  collected as that run's loss; now the run is failed, naming the file and the fields that differ;
- a damaged jobs/<id>.json: it stopped `status`, `collect` and `launch` for the whole sweep; now
  that run alone is `unknown` (its job may be alive: never resubmitted on a guess), named;
- a user's OMP_NUM_THREADS: a local launch gave each trainer cores / jobs threads whatever the
  user had limited them to; now at most $OMP_NUM_THREADS (unless --cpus-per-task says).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ehrfm.io import read_parquet

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def ehrfm(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def sweep(tok, tmp_path) -> tuple[Path, list[dict]]:
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8, 6e8], out, sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    return out, rows


def completed_result(row: dict, fingerprint: str, **changes) -> dict:
    """The result.json a trainer writes for plan row `row` (its identity fields), with `changes`."""
    body = {"status": "completed", "n_params": row["n_params"], "n_params_total": row["n_params_total"], "tokens": row["tokens"],
            "flops": row["flops"], "n_layer": row["n_layer"], "d_model": row["d_model"], "n_head": row["n_head"],
            "context": row["context"], "seed": row["seed"], "tokenizer_fingerprint": fingerprint, "val_loss": 3.5}
    return {**body, **changes}


def fingerprint_of(sweep_dir: Path) -> str:
    return json.loads((sweep_dir / "sweep.json").read_text())["tokenizer_fingerprint"]


def write(path: Path, obj) -> None:
    """Write `obj` (JSON, or text) to `path`; a completed result.json of a planned run gets the config.json its trainer
    writes beside it first (the run's train config), which `sweep status` checks against the plan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "result.json" and isinstance(obj, dict) and obj.get("status") == "completed":
        write_run_config(path.parent)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def write_run_config(run_dir: Path) -> None:
    """RUN/config.json as the trainer writes it first (its train config), for a planned run of its sweep dir."""
    from sweeps.plan import load_sweep, run_train_config

    if (run_dir / "config.json").exists() or not (run_dir.parent.parent / "sweep.json").is_file():
        return
    sweep, rows = load_sweep(run_dir.parent.parent)
    row = next((r for r in rows if r["run_id"] == run_dir.name), None)
    if row is not None:
        (run_dir / "config.json").write_text(json.dumps({"train": run_train_config(sweep, row, run_dir).to_dict()}))


def test_a_result_json_of_another_run_or_sweep_is_never_used_as_this_runs(sweep):
    """One run dir holds another run's result.json (cp -r of the wrong dir), another one from a
    sweep on another tokenizer: both are failed, named with the file and the fields that differ,
    never collected with that loss; the run's own result is still completed."""
    sweep_dir, rows = sweep
    fp = fingerprint_of(sweep_dir)
    own, copied, other_tok = rows[0], rows[1], rows[2]
    assert (copied["d_model"], copied["tokens"]) != (rows[3]["d_model"], rows[3]["tokens"])
    write(sweep_dir / "runs" / own["run_id"] / "result.json", completed_result(own, fp, val_loss=3.6))
    write(sweep_dir / "runs" / copied["run_id"] / "result.json", completed_result(rows[3], fp, val_loss=3.1))
    write(sweep_dir / "runs" / other_tok["run_id"] / "result.json", completed_result(other_tok, "f" * 64, val_loss=3.2))

    status = ehrfm("sweep", "status", sweep_dir)
    assert status.returncode == 0, status.stderr
    assert "4 runs: 1 completed, 2 failed, 1 planned" in status.stdout, status.stdout
    lines = {ln.split(":")[0]: ln for ln in status.stdout.splitlines() if ": failed: " in ln}
    bad = lines[copied["run_id"]]
    assert str(sweep_dir / "runs" / copied["run_id"] / "result.json") in bad and "is not this run's" in bad
    assert f"tokens {rows[3]['tokens']} (planned {copied['tokens']})" in bad, bad
    assert "tokenizer_fingerprint ffffffffffff" in lines[other_tok["run_id"]]

    collect = ehrfm("sweep", "collect", sweep_dir)
    assert collect.returncode == 0, collect.stderr
    assert len(collect.stderr.strip().splitlines()) == 2 and "is not this run's" in collect.stderr, collect.stderr
    table = {r["run_id"]: r for r in read_parquet(sweep_dir / "results.parquet").to_pylist()}
    assert table[own["run_id"]]["status"] == "completed" and table[own["run_id"]]["loss"] == 3.6
    for r in (copied, other_tok):
        got = table[r["run_id"]]
        assert got["status"] == "failed" and got["loss"] is None and "is not this run's" in got["error"]
        assert got["tokens"] == r["tokens"] and got["d_model"] == r["d_model"]  # the plan's, not the stranger's
    # A relaunch does not count it as done: it is a failure, resubmitted on request (file moved aside).
    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--retry-failed", "--dry-run")
    assert f"would submit {copied['run_id']} (failed)" in dry.stdout and f"would submit {other_tok['run_id']} (failed)" in dry.stdout


def test_a_completed_result_json_without_its_identity_fields_is_never_used(sweep):
    """Fields were compared only when present: another tokenizer's result with its fingerprint deleted, or a
    bare {"status": "completed", "val_loss": 0.1}, was this run's, its loss collected beside the plan's N and D."""
    sweep_dir, rows = sweep
    fp = fingerprint_of(sweep_dir)
    no_fp = completed_result(rows[0], fp, val_loss=3.2)
    del no_fp["tokenizer_fingerprint"]
    write(sweep_dir / "runs" / rows[0]["run_id"] / "result.json", no_fp)
    write(sweep_dir / "runs" / rows[1]["run_id"] / "result.json", {"status": "completed", "val_loss": 0.1})
    write(sweep_dir / "runs" / rows[2]["run_id"] / "result.json", completed_result(rows[2], fp, val_loss=3.6))
    # a failed run's result names no shape (a start-up crash writes none): still its own failure
    write(sweep_dir / "runs" / rows[3]["run_id"] / "result.json", {"status": "failed", "error": "trainer killed by signal 9"})
    status = ehrfm("sweep", "status", sweep_dir)
    assert status.returncode == 0 and "4 runs: 1 completed, 3 failed" in status.stdout, status.stdout
    lines = {ln.split(":")[0]: ln for ln in status.stdout.splitlines() if ": failed: " in ln}
    assert f"is not this run's: no tokenizer_fingerprint (planned {fp[:12]})" in lines[rows[0]["run_id"]]
    assert f"is not this run's: no n_layer (planned {rows[1]['n_layer']}), no d_model" in lines[rows[1]["run_id"]]
    assert "is not this run's" not in lines[rows[3]["run_id"]] and "signal 9" in lines[rows[3]["run_id"]]
    assert ehrfm("sweep", "collect", sweep_dir).returncode == 0
    table = {r["run_id"]: r for r in read_parquet(sweep_dir / "results.parquet").to_pylist()}
    assert [table[r["run_id"]]["loss"] for r in rows] == [None, None, 3.6, None]


def test_a_damaged_job_record_names_its_run_and_the_others_are_still_reported(sweep):
    """jobs/<id>.json torn (a full disk, a node dying mid-write where rename is not atomic): status,
    collect and launch used to exit 2 on it for the whole sweep. Now that run is `unknown` with the
    file named and what to do, never resubmitted (the job it named may be alive), the rest go on."""
    sweep_dir, rows = sweep
    ids = [r["run_id"] for r in rows]
    record = sweep_dir / "jobs" / f"{ids[0]}.json"
    write(record, '{"run_id": "' + ids[0] + '", "executor": "slurm", "job_')
    write(sweep_dir / "runs" / ids[1] / "result.json", completed_result(rows[1], fingerprint_of(sweep_dir)))

    status = ehrfm("sweep", "status", sweep_dir)
    assert status.returncode == 0, status.stderr
    assert "4 runs: 1 completed, 2 planned, 1 unknown" in status.stdout, status.stdout
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith(f"{ids[0]}: unknown: "))
    assert str(record) in line and "damaged" in line and "delete the file and relaunch" in line, line

    collect = ehrfm("sweep", "collect", sweep_dir)
    assert collect.returncode == 0 and str(record) in collect.stderr, collect.stderr
    table = {r["run_id"]: r for r in read_parquet(sweep_dir / "results.parquet").to_pylist()}
    assert table[ids[0]]["status"] == "unknown" and str(record) in table[ids[0]]["error"]
    assert table[ids[1]]["status"] == "completed"

    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would submit {ids[0]}" not in dry.stdout and f"would submit {ids[2]} (planned)" in dry.stdout, dry.stdout
    assert "1 unknown" in dry.stdout
    record.unlink()  # what the message says to do once no job of the run is alive
    assert f"would submit {ids[0]} (planned)" in ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run").stdout


def test_user_threads_reads_omp_num_threads():
    from sweeps.launch import LaunchConfig, local_slots, user_threads

    assert user_threads({"OMP_NUM_THREADS": "3"}) == 3 and user_threads({"OMP_NUM_THREADS": "4,2"}) == 4
    assert user_threads({}) is None and user_threads({"OMP_NUM_THREADS": "lots"}) is None and user_threads({"OMP_NUM_THREADS": "0"}) is None
    assert local_slots(LaunchConfig(max_parallel=1), 16, [], thread_cap=2).threads == 2
    assert local_slots(LaunchConfig(max_parallel=1, cpus_per_task=8), 16, [], thread_cap=2).threads == 8  # asked for: kept
    assert local_slots(LaunchConfig(max_parallel=4), 16, [], thread_cap=None).threads == 4


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores: with one, every trainer gets 1 thread anyway")
def test_local_launch_keeps_the_users_omp_num_threads(sweep):
    """OMP_NUM_THREADS=1 exported (a shared box), one job at a time: each trainer used to get every
    core (the wrapper overwrote OMP_NUM_THREADS with cores / jobs); now 1 thread, as the user set."""
    sweep_dir, rows = sweep
    for r in rows[1:]:  # train one run: the others are marked finished by hand (never resubmitted)
        write(sweep_dir / "runs" / r["run_id"] / "result.json", {"status": "diverged", "error": "not trained in this test"})
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--max-parallel", "1", env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ran 1 jobs locally (at most 1 at a time, 1 threads each)" in p.stdout, p.stdout
    log = (sweep_dir / "logs" / f"{rows[0]['run_id']}.log").read_text()
    assert json.loads((sweep_dir / "runs" / rows[0]["run_id"] / "result.json").read_text())["status"] == "completed", log[-500:]


# --- on the real SLURM cluster (scripts/slurm-local.sh up) ----------------------------------------


def _squeue_all(job_id: str) -> str:
    p = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return p.stdout.strip()


def _sbatch(*args) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--mem", "50M", "-c", "1", *args],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_a_job_slurm_ended_without_result_json_shows_why(sweep):
    """A job killed with its wrapper (the OOM killer's cgroup kill, `scancel`, a node failure) leaves
    no result.json: the run read `lost` or `interrupted` with no reason, and a relaunch resubmitted it
    blind. Now, while SLURM still lists the job (MinJobAge), status names its end state and reason;
    the run is still resubmitted (a relaunch resumes it). Real jobs: one that exits 3 (FAILED),
    one cancelled (CANCELLED)."""
    import time

    sweep_dir, rows = sweep
    ids = [r["run_id"] for r in rows]
    failed = _sbatch("--wrap", "exit 3")
    cancelled = _sbatch("--hold", "--wrap", "true")
    try:
        subprocess.run(["scancel", cancelled], check=True, capture_output=True)
        deadline = time.monotonic() + 300  # a hang guard only: SLURM's own pace never decides the test
        while (_squeue_all(failed), _squeue_all(cancelled)) != ("FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, (_squeue_all(failed), _squeue_all(cancelled))
            time.sleep(0.3)
        for rid, jid in ((ids[0], failed), (ids[1], cancelled)):
            write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": jid})
        (sweep_dir / "runs" / ids[1] / "checkpoint").mkdir(parents=True)  # it had checkpointed: interrupted
        status = ehrfm("sweep", "status", sweep_dir)
        assert status.returncode == 0, status.stderr
        assert "4 runs: 1 interrupted, 1 lost, 2 planned" in status.stdout, status.stdout
        assert f"{ids[0]}: lost: SLURM job {failed} ended FAILED (NonZeroExitCode)" in status.stdout, status.stdout
        assert f"{ids[1]}: interrupted: SLURM job {cancelled} ended CANCELLED" in status.stdout, status.stdout
        dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--dry-run")
        assert f"would submit {ids[0]} (lost)" in dry.stdout and f"would submit {ids[1]} (interrupted)" in dry.stdout, dry.stdout
    finally:
        subprocess.run(["scancel", failed, cancelled], capture_output=True)


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
@pytest.mark.parametrize("args, said", [
    # sbatch's last line here was its hint 'Try "sbatch --help" for more information', not the error
    (["--slurm-arg", "nosuch=1"], "sbatch: unrecognized option '--nosuch=1' (--slurm-arg nosuch=...)"),
    (["--constraint", "no-such-feature"], "Invalid feature specification (--constraint no-such-feature)"),
    (["--exclude", "no-such-node"], "Invalid node name specified (--exclude no-such-node)"),
    (["--slurm-arg", "mail-type=BOGUS"], "Invalid --mail-type specification (--slurm-arg mail-type=BOGUS)"),
])
def test_sbatch_refusal_is_one_line_naming_the_option(sweep, args, said):
    sweep_dir, rows = sweep
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", *args)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ehrfm sweep launch: error: sbatch refused the sweep's jobs: ") and said in lines[0], p.stderr
    assert f"{len(rows)} runs: {len(rows)} planned" in ehrfm("sweep", "status", sweep_dir).stdout  # nothing recorded as queued


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_a_time_limit_within_the_signal_delay_is_refused(sweep, executor):
    """--time 0:30 (or 2 minutes) with the default --signal-delay-s 120: USR2 came as each job
    started, so it checkpointed and requeued itself without training, --max-timeouts times
    (seen on the real cluster: 'Job has timed out. Ran 0 minutes out of requested 1 minutes')."""
    sweep_dir, rows = sweep
    if executor == "slurm" and shutil.which("sbatch") is None:
        pytest.skip("SLURM not installed")
    for time_text, seconds in (("0:30", 60), ("2", 120)):
        p = ehrfm("sweep", "launch", sweep_dir, "--executor", executor, "--time", time_text)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [
            f"ehrfm sweep launch: error: --signal-delay-s 120 is not shorter than --time {time_text} ({seconds} s): every job would be "
            "told to checkpoint and requeue as it starts, never training; give a longer --time or a smaller --signal-delay-s"], p.stderr
    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", executor, "--time", "2", "--signal-delay-s", "60", "--dry-run")
    assert dry.returncode == 0 and f"would submit {len(rows)} jobs" in dry.stdout, dry.stderr
    assert not (sweep_dir / "jobs").exists() or not list((sweep_dir / "jobs").glob("*.json"))


def test_a_launch_waiting_for_another_launch_says_so(sweep):
    """Two launches of one sweep: the second waits for the first to finish submitting (no run is
    submitted twice); it used to wait in silence, looking hung (a first launch stuck in a slow
    sbatch). Now it says what it waits for, then goes on once the lock is free."""
    import fcntl

    sweep_dir, rows = sweep
    with open(sweep_dir / ".launch.lock", "w") as lock:  # the other launch, mid-submission
        fcntl.flock(lock, fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(sweep_dir), "--executor", "local", "--dry-run"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            import select

            ready, _, _ = select.select([second.stderr], [], [], 120)  # a hang guard only (the line comes at once)
            assert ready, "the waiting launch said nothing"
            line = second.stderr.readline()
            assert line.strip() == (f"waiting for another `ehrfm sweep launch` of {sweep_dir} to finish submitting "
                                    f"({sweep_dir / '.launch.lock'})"), line
            assert second.poll() is None  # still waiting: the lock is held
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0 and f"would submit {len(rows)} jobs" in out, err


def test_a_moved_token_dir_is_named_with_how_to_re_point_the_sweep(tok, tmp_path):
    """The token dir moved after planning (a new scratch filesystem): launch said
    '<old path> is not a token dir: tokenizer.json not found (run `ehrfm tokenize` first)', advice
    that retokenizes (another fingerprint: a new sweep). Now it names sweep.json's tokens_dir and
    says to re-plan with the new path, which keeps every run and its result."""
    import shutil as sh

    from sweeps.plan import plan_sweep

    old, new = tmp_path / "tok", tmp_path / "scratch2" / "tok"
    sh.copytree(tok, old)
    sweep_dir = tmp_path / "sweep"
    plan = dict(budgets=[2e8, 6e8], sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    _, rows, _ = plan_sweep(old, out=sweep_dir, **plan)
    write(sweep_dir / "runs" / rows[0]["run_id"] / "result.json", completed_result(rows[0], fingerprint_of(sweep_dir)))
    new.parent.mkdir()
    old.rename(new)
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"ehrfm sweep launch: error: {sweep_dir / 'sweep.json'}: tokens_dir {old} is not a token dir any more (moved or deleted since "
        f"planning?); if it moved, plan the same sweep again with the new path (`ehrfm sweep plan --tokens NEW_PATH --out "
        f"{sweep_dir}` and the same options: the runs keep their ids and results)"], p.stderr
    _, again, _ = plan_sweep(new, out=sweep_dir, **plan)  # what the message says
    assert [r["run_id"] for r in again] == [r["run_id"] for r in rows]
    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run")
    assert dry.returncode == 0 and f"would submit {len(rows) - 1} jobs" in dry.stdout and "1 completed" in dry.stdout, dry.stderr


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_a_job_that_cannot_start_shows_why_it_waits(sweep):
    """--cpus-per-task above any node's CPUs: sbatch accepts the array, SLURM keeps it pending
    (PartitionConfig) forever, and status said only `queued`. Now it gives SLURM's reason."""
    import time

    sweep_dir, rows = sweep
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0].rstrip("+"))
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--cpus-per-task", cpus * 4, "--time", "20")
    jobs = [json.loads((sweep_dir / "jobs" / f"{r['run_id']}.json").read_text()).get("job_id") for r in rows] if p.returncode == 0 else []
    try:
        if p.returncode != 0:
            pytest.skip(f"this cluster refuses the request at submission: {p.stderr.strip()}")
        deadline = time.monotonic() + 300  # a hang guard only (the reason may wait for a scheduling pass of a busy slurmctld)
        while "PartitionConfig" not in subprocess.run(["squeue", "-h", "-r", "-o", "%r", "-j", jobs[0]], capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "the job never showed its pending reason"
            time.sleep(0.3)
        status = ehrfm("sweep", "status", sweep_dir)
        assert status.returncode == 0 and f"{len(rows)} runs: {len(rows)} queued" in status.stdout, status.stdout
        assert f"{rows[0]['run_id']}: queued: SLURM job {jobs[0]} waits: PartitionConfig" in status.stdout, status.stdout
    finally:
        subprocess.run(["scancel", *{str(j).split("_")[0] for j in jobs if j}], capture_output=True)


def test_without_squeue_status_answers_from_files_and_says_why_runs_are_unknown(sweep, tmp_path):
    """A sweep dir read where SLURM cannot be asked (a copy on a laptop, a login node whose
    controller is down): finished runs read from their files, unfinished SLURM runs are `unknown`
    and now say why; a relaunch never resubmits them."""
    sweep_dir, rows = sweep
    ids = [r["run_id"] for r in rows]
    write(sweep_dir / "runs" / ids[0] / "result.json", completed_result(rows[0], fingerprint_of(sweep_dir)))
    for rid in ids[:2]:
        write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": "4242_1"})
    no_slurm = {"PATH": str(tmp_path / "empty-bin")}  # no squeue (nor sbatch) on PATH
    status = ehrfm("sweep", "status", sweep_dir, env=no_slurm)
    assert status.returncode == 0, status.stderr
    assert "4 runs: 1 completed, 2 planned, 1 unknown" in status.stdout, status.stdout
    assert (f"{ids[1]}: unknown: SLURM could not be asked about job 4242_1 (no `squeue` on PATH): "
            "never resubmitted until it answers") in status.stdout, status.stdout
    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run", env=no_slurm)
    assert dry.returncode == 0 and f"would submit {ids[1]}" not in dry.stdout and "1 unknown" in dry.stdout, dry.stdout + dry.stderr
    collect = ehrfm("sweep", "collect", sweep_dir, env=no_slurm)
    assert collect.returncode == 0 and "warning" not in collect.stderr, collect.stderr  # nothing damaged: no warnings


@pytest.mark.skipif(shutil.which("squeue") is None, reason="needs SLURM's squeue (slurm-client)")
def test_squeue_failing_says_its_own_words(sweep, tmp_path):
    """squeue that cannot reach its controller: the unknown run's note quotes squeue's first line ("Unable to
    contact slurm controller"), which says what to fix; it said only "failed or timed out". The real squeue,
    pointed at a controller port nothing listens on."""
    sweep_dir, rows = sweep
    rid = rows[1]["run_id"]
    write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": "4242_1"})
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n"
                    "MessageTimeout=1\nTCPTimeout=1\nNodeName=localhost CPUs=1 State=UNKNOWN\n"
                    "PartitionName=debug Nodes=localhost Default=YES\n")
    env = {**ENV, "SLURM_CONF": str(conf)}
    # squeue's own words here (this Slurm's: 22.05 says "Unable to contact slurm controller"; another release may
    # refuse auth/none first): whatever they are, the note quotes its first line
    own = subprocess.run(["squeue", "-h", "-j", "4242"], env=env, capture_output=True, text=True, timeout=120)
    first = next(ln.strip() for ln in own.stderr.splitlines() if ln.strip())
    status = ehrfm("sweep", "status", sweep_dir, env={"SLURM_CONF": str(conf)})
    assert status.returncode == 0, status.stderr
    line = next((ln for ln in status.stdout.splitlines() if ln.lstrip().startswith(f"{rid}: unknown")), "")
    assert f"SLURM could not be asked about job 4242_1 (`squeue` exited {own.returncode}: {first[:300]}" in line, (line, first)
