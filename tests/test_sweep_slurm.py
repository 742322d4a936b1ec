"""Sweeps on a REAL SLURM cluster (scripts/slurm-local.sh up): arrays, requeue, failures, relaunch.

Skipped only when `sbatch` is not installed; a cluster that is installed but down fails the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from test_sweep import TINY, break_one_run, ehrfm, launched_ok, launched_sweep, plan_rows, slurm_answered

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH): run `sudo bash scripts/slurm-local.sh install && sudo bash scripts/slurm-local.sh up`"),
]


# Where the requeue test holds its runs (ehrfm.fault_points): early, but after some real training.
HOLD_STEP = 5


def squeue_state(job_id: str) -> tuple[str, str]:
    """(state, reason) of a job, ("", "") when SLURM no longer lists it, ("?", why) when squeue failed.

    A busy slurmctld can answer "Socket timed out": the polls below ask again rather than fail the test.
    """
    p = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True)
    if p.returncode != 0:
        return "?", p.stderr.strip()
    out = p.stdout
    for line in out.splitlines():
        jid, st, reason = line.split("|")
        if jid == job_id:
            return st, reason
    return "", ""


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def job_steps(job_id: str) -> list[str]:
    """Steps SLURM still runs for a job (an array task's steps are listed under its own id)."""
    p = subprocess.run(["squeue", "-h", "-s", "-o", "%i"], capture_output=True, text=True)
    if p.returncode != 0:  # slurmctld busy: say "still running steps", so the poll asks again
        return [f"{job_id}.?"]
    return [s for s in p.stdout.split() if s.startswith(f"{job_id}.")]


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def release_requeued(job_id: str, old_pids: list[int | None]) -> None:
    """SLURM holds a requeued job ~2 minutes (BeginTime); let it start sooner, but not at once: a
    job restarted within a second or so of its kill is refused by slurmd ("Job N already killed,
    do not launch batch job") and fails, which the 2-minute hold exists to prevent. So wait for
    the old attempt's processes (`old_pids`, read from the job record before it was interrupted:
    a record read later may already name the new attempt's) and steps to be gone, then a few
    seconds more. On a loaded machine SLURM's own hold may run out first (the jobs are released
    one after the other): a job already started again needs nothing."""
    def old_attempt_gone():
        state = squeue_state(job_id)[0]
        if state in ("?", "COMPLETING", "REQUEUED") or any(alive(pid) for pid in old_pids):  # still leaving
            return False
        return state != "PENDING" or not job_steps(job_id)

    wait_until(old_attempt_gone, 300, f"the old attempt of job {job_id} to end")
    if squeue_state(job_id)[0] != "PENDING":
        return  # started again by SLURM itself (or already done): nothing to release
    time.sleep(5)
    # On a loaded machine the waits above can outlast SLURM's own hold: the job may already have
    # started, and scontrol then refuses to move the start time of a job no longer pending. That
    # is the state we want, not an error; only a job still pending and not released is.
    p = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, text=True)
    if p.returncode != 0 and squeue_state(job_id)[0] == "PENDING":
        raise AssertionError(f"could not release requeued job {job_id}: {p.stderr.strip()}")


def sinfo_answers() -> subprocess.CompletedProcess:
    """`sinfo`'s answer once SLURM answers: a busy slurmctld's "Socket timed out" is asked again for a minute (a hang
    guard only) before the cluster is taken for down."""
    deadline = time.monotonic() + 60
    while (p := subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(2)
    return p


@pytest.fixture(scope="module", autouse=True)
def cluster_is_up():
    p = sinfo_answers()
    assert p.returncode == 0 and p.stdout.strip(), f"sbatch is installed but SLURM is not running (sinfo: {p.stderr.strip()}); run `sudo bash scripts/slurm-local.sh up`"


slurm_sweep = launched_sweep("slurm_sweep", "--executor", "slurm", "--time", "20", "--cpus-per-task", "1", "--mem", "2G",
                             "--max-parallel", "2", "--wait")


def test_slurm_sweep_completes_collects_and_relaunch_submits_nothing(slurm_sweep):
    out, rows = launched_ok(slurm_sweep, "submitted 4 jobs to SLURM as array", "4 SLURM runs finished: 4 completed")
    # One array job, throttled to 2 tasks at a time, requeueable, with submitit's signal before the limit.
    array_id = json.loads((out / "jobs" / f"{rows[0]['run_id']}.json").read_text())["job_id"].split("_")[0]
    scripts = [p.read_text() for p in (out / "submitit").rglob("*submission.sh")]
    assert len(scripts) == 1
    script = scripts[0]
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --signal=USR2@120" in script and "#SBATCH --mem=2G" in script and "#SBATCH --time=20" in script
    job_ids = {json.loads((out / "jobs" / f"{r['run_id']}.json").read_text())["job_id"] for r in rows}
    assert job_ids == {f"{array_id}_{i}" for i in range(4)}

    assert ehrfm("sweep", "collect", out).returncode == 0
    results = {r["run_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    for r in rows:
        got = results[r["run_id"]]
        assert got["status"] == "completed" and got["loss"] > 0 and got["tokens"] == r["tokens"]
        assert got["loss"] == json.loads((out / "runs" / r["run_id"] / "result.json").read_text())["val_loss"]
        assert got["job_id"] in job_ids

    again = ehrfm("sweep", "launch", out, "--executor", "slurm")
    assert again.returncode == 0 and again.stdout.strip() == "submitted 0 jobs: nothing to run (4 completed)"
    status = ehrfm("sweep", "status", out)
    assert status.stdout.count(" completed ") == 4 and all(j in status.stdout for j in job_ids)


def test_slurm_requeue_and_preemption_resume_with_identical_loss(synth_tokens, tmp_path):
    """`scontrol requeue` of one running job and submitit's USR2 preemption signal to another:
    both checkpoint, are requeued, resume from the checkpoint, and end with the loss of an
    uninterrupted run of the same config.

    No race: both trainers hold at step HOLD_STEP (ehrfm.fault_points) until the test has
    interrupted them, so each stops at exactly that step however fast the machine is."""
    from ehrfm.fault_points import release, wait_held
    from sweeps.plan import plan_sweep

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    point = f"step-{HOLD_STEP}"
    plan_sweep(synth_tokens, [4e10, 5e10], out, sizes=1, context=64, train={"batch_size": 8})
    rows = plan_rows(out)
    assert len(rows) == 2 and all(r["steps"] > HOLD_STEP for r in rows)
    hold_env = {"EHRFM_HOLD_AT": point, "EHRFM_HOLD_DIR": str(holds)}  # sbatch passes the environment on
    p = ehrfm("sweep", "launch", out, "--executor", "slurm", "--time", "20", "--cpus-per-task", "1", env=hold_env)
    assert p.returncode == 0, p.stderr
    # Already queued or running: a relaunch does not submit them twice.
    again = slurm_answered(ehrfm, "sweep", "launch", out, "--executor", "slurm")
    assert again.stdout.startswith("submitted 0 jobs: nothing to run (") and ("queued" in again.stdout or "running" in again.stdout), again.stdout

    jobs = {r["run_id"]: json.loads((out / "jobs" / f"{r['run_id']}.json").read_text())["job_id"] for r in rows}
    requeued, preempted = (r["run_id"] for r in rows)
    for rid in (requeued, preempted):
        wait_held(holds, rid, point, is_alive=lambda rid=rid: squeue_state(jobs[rid])[0] in ("PENDING", "RUNNING", "CONFIGURING", "?"))
    # the first attempt's job and trainer pids, read while it is held: release_requeued waits for them to end
    first_pids = {rid: [json.loads((out / "jobs" / f"{rid}.json").read_text()).get(k) for k in ("pid", "trainer_pid")]
                  for rid in (requeued, preempted)}
    subprocess.run(["scontrol", "requeue", jobs[requeued]], check=True, capture_output=True)
    subprocess.run(["scancel", "--signal=USR2", jobs[preempted]], check=True, capture_output=True)  # what SLURM sends before the time limit
    for rid in (requeued, preempted):
        # scontrol and scancel return once slurmctld took the request; slurmd, slurmstepd (and, for USR2,
        # submitit's handler) pass the signal on to the trainer later: a release before it arrives lets the
        # trainer train past the point. Its own line says it stopped there.
        wait_until(lambda rid=rid: f"interrupted at step {HOLD_STEP}/" in (out / "logs" / f"{rid}.log").read_text(), 300,
                   f"{rid}'s trainer to stop at step {HOLD_STEP}")
        release(holds, rid, point)  # the resumed attempt starts past the point; release it anyway
        release_requeued(jobs[rid], first_pids[rid])
    from sweeps.launch import wait_for_runs

    final = wait_for_runs(out, [requeued, preempted], poll_s=1.0, timeout_s=600)
    assert final == {requeued: "completed", preempted: "completed"}

    # The reference: the same plan (same run ids, same configs) trained without interruption.
    reference = tmp_path / "reference"
    plan_sweep(synth_tokens, [4e10, 5e10], reference, sizes=1, context=64, train={"batch_size": 8})
    assert ehrfm("sweep", "launch", reference, "--executor", "local").returncode == 0
    for rid in (requeued, preempted):
        log = (out / "logs" / f"{rid}.log").read_text()
        assert log.count(f"interrupted at step {HOLD_STEP}/") == 1, log  # it really stopped at the held step ...
        assert log.count(f"job {jobs[rid]} rank 0/1") == 2  # ... and the same job started again
        record = json.loads((out / "jobs" / f"{rid}.json").read_text())
        assert record["starts"] == 2 and record["job_id"] == jobs[rid]
        resumed = json.loads((out / "runs" / rid / "result.json").read_text())
        uninterrupted = json.loads((reference / "runs" / rid / "result.json").read_text())
        assert resumed["tokens"] == uninterrupted["tokens"] == plan_rows(out)[[r["run_id"] for r in rows].index(rid)]["tokens"]
        assert resumed["val_loss"] == uninterrupted["val_loss"], (rid, resumed["val_loss"], uninterrupted["val_loss"])
    # submitit's own checkpoint path ran for the USR2 job (it requeued itself).
    submitit_log = "".join(p.read_text() for p in (out / "submitit").rglob(f"{jobs[preempted]}_*log.out"))
    assert "Calling checkpoint method" in submitit_log and "Requeued job" in submitit_log


def test_slurm_failed_run_is_recorded_while_others_complete(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, [1e9], out, sizes=3, context=64, train={"batch_size": 8})
    bad = break_one_run(out)
    p = ehrfm("sweep", "launch", out, "--executor", "slurm", "--time", "20", "--wait")
    assert p.returncode == 1 and "1 completed" in p.stdout and "1 failed" in p.stdout, p.stdout + p.stderr[-2000:]
    assert ehrfm("sweep", "collect", out).returncode == 0
    results = {r["run_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert results[bad]["status"] == "failed" and results[bad]["loss"] is None
    assert "not divisible by n_head=3" in results[bad]["error"]
    others = [r for rid, r in results.items() if rid != bad]
    assert others and all(r["status"] == "completed" and r["loss"] > 0 for r in others)
    again = ehrfm("sweep", "launch", out, "--executor", "slurm")
    assert "submitted 0 jobs" in again.stdout and "--retry-failed" in again.stdout


def test_slurm_ddp_tasks_match_single_process(slurm_sweep, synth_tokens, tmp_path):
    """--tasks-per-node 2: one srun task per rank, one gloo DDP group; same loss as one process."""
    from sweeps.plan import plan_sweep

    single, _ = slurm_sweep
    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, [1e9], out, sizes=3, context=64, train={"batch_size": 8})
    p = ehrfm("sweep", "launch", out, "--executor", "slurm", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "20", "--wait")
    assert p.returncode == 0 and "2 SLURM runs finished: 2 completed" in p.stdout, p.stderr[-2000:]
    script = next((out / "submitit").rglob("*submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script
    for r in plan_rows(out):
        log = (out / "logs" / f"{r['run_id']}.log").read_text()
        assert "rank 0/2" in log and "rank 1/2" in log
        ddp = json.loads((out / "runs" / r["run_id"] / "result.json").read_text())
        one = json.loads((single / "runs" / r["run_id"] / "result.json").read_text())  # same plan entry, same id
        assert ddp["world_size"] == 2 and ddp["tokens"] == one["tokens"] and ddp["steps"] == one["steps"]
        assert ddp["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)


def test_slurm_refusal_is_one_clear_error_and_leaves_runs_planned(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, **TINY)
    dry = ehrfm("sweep", "launch", out, "--executor", "slurm", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count(" (planned)\n") == 4 and "dry run: would submit 4 jobs to slurm" in dry.stdout
    p = ehrfm("sweep", "launch", out, "--executor", "slurm", "--partition", "no-such-partition")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "ehrfm sweep launch: error: sbatch refused the sweep's jobs: sbatch: error: Batch job submission failed: Invalid partition name "
        "specified (--partition no-such-partition)"  # the option it refused is named (test_sweep_faults: every kind)
    ]
    # GPUs reach sbatch (this test cluster has none, so SLURM refuses the GRES request).
    gpu = ehrfm("sweep", "launch", out, "--executor", "slurm", "--gpus-per-node", "2")
    assert gpu.returncode == 2 and len(gpu.stderr.strip().splitlines()) == 1 and "gres" in gpu.stderr.lower(), gpu.stderr
    status = ehrfm("sweep", "status", out)
    assert "4 runs: 4 planned" in status.stdout  # nothing recorded as queued


def test_relaunch_by_a_teammate_submits_nothing_for_running_runs(synth_tokens, tmp_path):
    """A shared sweep relaunched by another user (USER/LOGNAME another name, so `squeue -u $USER`
    would see none of these jobs): SLURM is asked about the recorded job ids, so the running and
    queued runs are submitted 0 times. A run whose job SLURM does not show (another user's
    private jobs) but whose trainer holds the run dir's lock is still running."""
    from ehrfm.fault_points import release
    from sweeps.plan import plan_sweep
    from sweeps.state import run_states

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    plan_sweep(synth_tokens, out=out, **TINY)
    rows = plan_rows(out)
    hold_env = {"EHRFM_HOLD_AT": "step-1", "EHRFM_HOLD_DIR": str(holds)}  # trainers wait at step 1: running, no race
    p = ehrfm("sweep", "launch", out, "--executor", "slurm", "--time", "20", "--cpus-per-task", "1", "--mem", "1G",
              "--max-parallel", "2", env=hold_env)
    assert p.returncode == 0, p.stderr
    jobs = {r["run_id"]: json.loads((out / "jobs" / f"{r['run_id']}.json").read_text())["job_id"] for r in rows}
    try:
        held = wait_until(lambda: sorted(h.name.split(".")[0] for h in holds.glob("*.held")) if len(list(holds.glob("*.held"))) == 2 else None,
                          300, "two trainers to hold at step 1")
        teammate = {"USER": "a-teammate", "LOGNAME": "a-teammate"}
        again = slurm_answered(ehrfm, "sweep", "launch", out, "--executor", "slurm", env=teammate)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "submitted 0 jobs: nothing to run (2 queued, 2 running)"
        status = slurm_answered(ehrfm, "sweep", "status", out, env=teammate)
        assert "4 runs: 2 queued, 2 running" in status.stdout
        # The job of one running run made invisible (as SLURM's PrivateData=jobs would): its trainer's lock still says running.
        hidden = held[0]
        record = json.loads((out / "jobs" / f"{hidden}.json").read_text())
        (out / "jobs" / f"{hidden}.json").write_text(json.dumps({**record, "job_id": "999999999"}))
        assert run_states(out, [r["run_id"] for r in rows])[hidden].state == "running"
        (out / "jobs" / f"{hidden}.json").write_text(json.dumps(record))
    finally:  # our jobs, and any a faulty relaunch submitted
        now = [json.loads(p.read_text()).get("job_id") for p in (out / "jobs").glob("*.json") if not p.name.endswith(".train.json")]
        subprocess.run(["scancel", *{str(j).split("_")[0] for j in [*jobs.values(), *now] if j}], capture_output=True)
        for r in rows:
            release(holds, r["run_id"], "step-1")
