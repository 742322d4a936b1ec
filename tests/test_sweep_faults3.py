"""Cluster life on a real SLURM cluster (scripts/slurm-local.sh up): why a job ended, what sbatch refused.

- a job that ended without result.json (`scancel`, the OOM killer, its time limit with
  --max-timeouts spent, a node failure): status showed SLURM's state only while squeue still
  listed it (MinJobAge), and without `sacct` nothing after; a time-out read "FAILED
  (NonZeroExitCode)". Now the job's own output (its submitit log) says why, also after SLURM forgot it;
- a trainer the OOM killer killed (its wrapper survived): "trainer killed by signal 9", and the
  job log's oom-kill line is now added;
- pending array tasks cancelled together are listed by squeue under the array's id alone: their
  runs were `lost` with no reason; now the array's record gives it;
- `launch --wait` exited 0 when a run was cancelled or timed out, and waited in silence on jobs
  that may never start (held, a drained node); now it says why once and exits 1 naming each run;
- `--mem` above every node's memory: sbatch's "Requested node configuration is not available"
  named no option; now the refusal names the resource options the launch asked for;
- a relaunch with other options skipped queued runs without saying their jobs keep the old ones;
- a sweep dir renamed while its jobs wait: status now names the dir the jobs were submitted from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_sweep import slurm_answered
from test_sweep_faults import ehrfm, write

from sweeps.launch import LaunchConfig, sbatch_error


def on_slurm(test):
    """Mark a test that submits to the real cluster."""
    skip = pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
    return pytest.mark.slurm(skip(test))


@pytest.fixture()
def sweep(tok, tmp_path) -> tuple[Path, list[dict]]:
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8], out, sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    return out, rows


def wait_for(predicate, what: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s  # a hang guard only: SLURM's own pace never decides the test
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return value


def text_of(path: Path) -> str:
    """The file's text; "" while it does not exist yet (a poll asks again)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def squeue_state(job_id: str) -> str:
    """The job's state; "" once SLURM no longer lists it; "?" when squeue failed (a busy slurmctld's
    "Socket timed out"): a poll asks again rather than take a hiccup for a job that is gone."""
    p = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if p.returncode != 0:
        return "" if "Invalid job id" in p.stderr else "?"  # a purged job's id is invalid: not listed
    return p.stdout.strip()


def submitit_log(sweep_dir: Path, job_id: str) -> Path:
    return sweep_dir / "submitit" / job_id / f"{job_id}_0_log.out"  # submitit's folder %j, file %j_%t_log.out


@on_slurm
def test_a_cancelled_job_says_so_from_its_own_log(sweep):
    """`scancel` of a running job: its run is interrupted or lost, and status quotes slurmstepd's
    own line from the job's log (real SLURM), not only the state squeue shows for a few minutes."""
    sweep_dir, rows = sweep
    rid = rows[0]["run_id"]
    jid = subprocess.run(["sbatch", "--parsable", "--hold", "--mem", "50M", "-c", "1", "-o", str(sweep_dir / "submitit" / "%j" / "%j_0_log.out"),
                          "--wrap", "echo started; exec sleep 600"], capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        log = submitit_log(sweep_dir, jid)
        log.parent.mkdir(parents=True)  # SLURM does not make the log's dir
        subprocess.run(["scontrol", "release", jid], check=True, capture_output=True)
        # squeue says RUNNING once the node is allocated, before slurmstepd has opened the log: a
        # scancel then ends the job with no log at all. The job's own first line says its step runs.
        wait_for(lambda: text_of(log).startswith("started"), f"job {jid}'s batch step to start")
        subprocess.run(["scancel", jid], check=True, capture_output=True)
        wait_for(lambda: "CANCELLED AT" in text_of(log), f"job {jid}'s log to say it was cancelled")
        write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": jid})
        wait_for(lambda: squeue_state(jid) == "CANCELLED", f"job {jid} to be over")
        status = slurm_answered(ehrfm, "sweep", "status", sweep_dir)
        assert status.returncode == 0, status.stderr
        assert f"{rid}: lost: SLURM job {jid} ended CANCELLED without a result.json; its log says: *** JOB {jid} ON " in status.stdout, status.stdout
        assert " CANCELLED AT " in status.stdout and f"*** ({submitit_log(sweep_dir, jid)}); a relaunch starts it again" in status.stdout
    finally:
        subprocess.run(["scancel", jid], capture_output=True)


@on_slurm
@pytest.mark.parametrize("line, said", [
    # slurm 22.05's task/cgroup after the OOM killer (no sacct needed to see it)
    ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=4000000001.batch. Some of your processes may have been killed "
     "by the cgroup out-of-memory handler.", "its log says: Detected 1 oom-kill event(s) in StepId=4000000001.batch."),
    ("slurmstepd-vm: error: *** JOB 4000000001 ON vm CANCELLED AT 2026-12-01T21:08:08 DUE TO TIME LIMIT ***",
     "its log says: *** JOB 4000000001 ON vm CANCELLED AT 2026-12-01T21:08:08 DUE TO TIME LIMIT ***"),
    ("slurmstepd-vm: error: *** JOB 4000000001 ON vm CANCELLED AT 2026-12-01T21:08:08 DUE TO NODE FAILURE ***",
     "its log says: *** JOB 4000000001 ON vm CANCELLED AT 2026-12-01T21:08:08 DUE TO NODE FAILURE ***"),
])
def test_a_job_slurm_forgot_says_why_it_ended_from_its_own_log(sweep, line, said):
    """A job SLURM no longer lists (MinJobAge passed; no accounting, so no sacct): its run read
    `interrupted` with no reason at all. Its own output still says why it ended."""
    sweep_dir, rows = sweep
    rid, jid = rows[0]["run_id"], "4000000001"  # an id this cluster does not know
    write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": jid})
    (sweep_dir / "runs" / rid / "checkpoint").mkdir(parents=True)
    write(submitit_log(sweep_dir, jid), f"submitit INFO (2026-12-01 21:08:00,405) - Starting with JobEnvironment(job_id={jid})\n{line}\n")
    status = slurm_answered(ehrfm, "sweep", "status", sweep_dir)
    assert status.returncode == 0, status.stderr
    assert f"{rid}: interrupted: SLURM job {jid} ended without a result.json; {said}" in status.stdout, status.stdout
    assert f"({submitit_log(sweep_dir, jid)}); a relaunch resumes it from its checkpoint" in status.stdout, status.stdout


@on_slurm
def test_a_run_out_of_time_limits_says_so(tok, tmp_path):
    """--time 2 with --max-timeouts 0: at the time limit the trainer checkpoints and submitit does
    not requeue; SLURM says only "FAILED (NonZeroExitCode)". The trainer holds at step 2
    (ehrfm.fault_points) until the time-limit signal stops it: no race with a fast machine."""
    from sweeps.plan import plan_sweep

    sweep_dir, holds = tmp_path / "sweep", tmp_path / "holds"
    _, rows, _ = plan_sweep(tok, [2e8], sweep_dir, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    rid = rows[0]["run_id"]
    # slurmctld checks time limits every 30 s (PERIODIC_TIMEOUT) and signals at the first check once now >= end -
    # delay - 30 s (send_job_warn_signal): --time 1 with a delay of 30 s signalled 0-30 s after the start, maybe before
    # submitit's USR2 handler or the trainer's hold at step 2 (up to ~30 s on a loaded machine; with a delay of 15 s it
    # came 29 s after the start on 2026-12-02). --time 2: the signal comes 60-90 s after the start, 30-60 s before the limit.
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--time", "2", "--signal-delay-s", "30", "--max-timeouts", "0",
              "--cpus-per-task", "1", "--mem", "1G", env={"EHRFM_HOLD_AT": "step-2", "EHRFM_HOLD_DIR": str(holds)})
    assert p.returncode == 0, p.stderr
    jid = json.loads((sweep_dir / "jobs" / f"{rid}.json").read_text())["job_id"]
    try:
        # SLURM ends the job FAILED (NonZeroExitCode) when submitit's "not requeued" error leaves it, or COMPLETED when
        # the SIGCONT that SLURM sends with the signal makes submitit's logging swallow that error (seen 2026-12-02);
        # either way the run is interrupted, its log says why, and a relaunch resumes it. ("": SLURM purged it.)
        wait_for(lambda: squeue_state(jid) in ("FAILED", "COMPLETED", ""), f"job {jid} to reach its time limit", timeout_s=600)
        status = slurm_answered(ehrfm, "sweep", "status", sweep_dir)
        said = (f"without a result.json; its log says: Job not requeued because: timed-out too many times. "
                f"({submitit_log(sweep_dir, jid)}); a relaunch resumes it from its checkpoint")
        assert any(f"{rid}: interrupted: SLURM job {jid} ended {how}{said}" in status.stdout
                   for how in ("FAILED (NonZeroExitCode) ", "")), status.stdout
    finally:
        subprocess.run(["scancel", jid], capture_output=True)


def node_memory_mb() -> int:
    return max(int(m.rstrip("+")) for m in subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True, check=True).stdout.split())


@on_slurm
@pytest.mark.parametrize("extra, named", [
    ([], "--mem {mem}"),
    (["--cpus-per-task", "1"], "--mem {mem}, --cpus-per-task 1"),
])
def test_mem_beyond_every_node_is_named(sweep, extra, named):
    """sbatch answers --mem above any node's memory with "Requested node configuration is not
    available", naming no option; the refusal now names what the launch asked of a node."""
    sweep_dir, rows = sweep
    mem = f"{node_memory_mb() * 1000}M"
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--time", "20", "--mem", mem, *extra)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        "ehrfm sweep launch: error: sbatch refused the sweep's jobs: sbatch: error: Batch job submission failed: Requested node "
        f"configuration is not available (no node offers what was asked: {named.format(mem=mem)})"], p.stderr
    assert f"{len(rows)} runs: {len(rows)} planned" in ehrfm("sweep", "status", sweep_dir).stdout  # nothing recorded as queued


def test_node_configuration_refusal_names_the_resources_asked():
    """The same rule without a cluster: every node resource the launch set, and no other."""
    said = "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    cfg = LaunchConfig(executor="slurm", mem="900G", gpus_per_node=2, nodes=3, constraint="a100")
    assert sbatch_error(said, RuntimeError(), cfg) == (
        f"{said} (no node offers what was asked: --mem 900G, --gpus-per-node 2, --nodes 3, --constraint a100)")
    assert sbatch_error(said, RuntimeError(), LaunchConfig(executor="slurm")) == said


@on_slurm
def test_a_trainer_the_oom_killer_killed_is_named_from_its_jobs_log(sweep):
    """Under a cgroup memory limit the OOM killer kills the trainer, not its job wrapper: the wrapper
    recorded "trainer killed by signal 9" and slurmstepd wrote its oom-kill line to the job's log
    only after that; without sacct nothing said "out of memory". Status and collect now add it."""
    from ehrfm.io import read_parquet
    from ehrfm.results import RunResult, Status, write_result

    sweep_dir, rows = sweep
    rid, jid = rows[0]["run_id"], "4000000002"  # an id this cluster does not know (past MinJobAge)
    killed = f"trainer killed by signal 9: step 3/23 (log: {sweep_dir / 'logs' / f'{rid}.log'})"
    write_result(sweep_dir / "runs" / rid, RunResult(Status.FAILED, error=killed, exit_code=-9))  # as sweeps.job writes it
    write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": jid})
    oom = "Detected 1 oom-kill event(s) in StepId=4000000002.0. Some of your processes may have been killed by the cgroup out-of-memory handler."
    write(submitit_log(sweep_dir, jid), f"slurmstepd-vm: error: {oom}\nsubmitit INFO - Job completed successfully\n")
    said = f"{killed}; its job's log says: {oom} ({submitit_log(sweep_dir, jid)})"
    status = ehrfm("sweep", "status", sweep_dir)
    assert status.returncode == 0 and f"{rid}: failed: {said}" in status.stdout, status.stdout
    assert ehrfm("sweep", "collect", sweep_dir).returncode == 0
    errors = {r["run_id"]: r["error"] for r in read_parquet(sweep_dir / "results.parquet").to_pylist()}
    assert errors[rid] == said


@on_slurm
def test_launch_wait_with_a_cancelled_run_exits_1_and_says_why(sweep, tmp_path):
    """`launch --wait` while the user `scancel`s one run's job: it printed "1 completed, 1
    interrupted" and exited 0, so `launch --wait && collect && fit` went on without the run. Now
    it exits 1 and names the run with how its job ended. Both trainers hold at step 1
    (ehrfm.fault_points) until the test has cancelled one: no race."""
    import sys

    from test_sweep_faults import ENV

    sweep_dir, rows = sweep
    cancelled, completed = (r["run_id"] for r in rows)
    holds = tmp_path / "holds"
    launch = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(sweep_dir), "--executor", "slurm", "--time", "20",
                               "--cpus-per-task", "1", "--mem", "1G", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "EHRFM_HOLD_AT": "step-1", "EHRFM_HOLD_DIR": str(holds)})
    try:
        wait_for(lambda: len(list(holds.glob("*.step-1.held"))) == 2, "both trainers to hold at step 1")
        jid = json.loads((sweep_dir / "jobs" / f"{cancelled}.json").read_text())["job_id"]
        subprocess.run(["scancel", jid], check=True, capture_output=True)
        (holds / f"{completed}.step-1.release").touch()
        out, err = launch.communicate(timeout=600)
    finally:
        launch.kill()
        recorded = [json.loads(p.read_text()).get("job_id") for p in (sweep_dir / "jobs").glob("*.json") if not p.name.endswith(".train.json")]
        subprocess.run(["scancel", *{str(j).split("_")[0] for j in recorded if j}], capture_output=True)
    assert launch.returncode == 1, out + err
    assert "2 SLURM runs finished: 1 completed, 1 interrupted" in out, out
    assert f"ehrfm sweep: warning: {cancelled}: interrupted: SLURM job {jid} ended CANCELLED" in err, err
    # (a busy slurmctld's squeue "Socket timed out" while the launch waits is said of any run: "unknown: SLURM could not be asked")
    warned = "\n".join(ln for ln in err.splitlines() if "SLURM could not be asked" not in ln)
    assert "a relaunch resumes it from its checkpoint" in err and completed not in warned, err


@on_slurm
def test_a_relaunch_with_other_options_says_queued_runs_keep_theirs(sweep):
    """Jobs pending (here held) with --mem 1G; the user relaunches with --mem 2G --partition P to
    get them going: "submitted 0 jobs: nothing to run (2 queued)", and nothing said that the new
    options were not applied. Now one warning names the options the queued jobs keep; a plain
    relaunch (every option at its default) says nothing."""
    sweep_dir, rows = sweep
    partition = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, check=True).stdout.split()[0]
    first = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--time", "20", "--mem", "1G", "--slurm-arg", "hold")
    assert first.returncode == 0, first.stderr
    try:
        again = slurm_answered(ehrfm, "sweep", "launch", sweep_dir, "--executor", "slurm", "--time", "20", "--mem", "2G", "--partition", partition)
        assert again.returncode == 0 and again.stdout.strip() == f"submitted 0 jobs: nothing to run ({len(rows)} queued)", again.stdout
        assert again.stderr.strip().splitlines() == [
            f"ehrfm sweep: warning: {len(rows)} queued runs keep the options their jobs were submitted with (--partition unset, "
            "--mem 1G), not this launch's: `scancel` their jobs and launch again to submit them with these"], again.stderr
        plain = slurm_answered(ehrfm, "sweep", "launch", sweep_dir, "--executor", "slurm")
        assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    finally:
        jobs = {json.loads((sweep_dir / "jobs" / f"{r['run_id']}.json").read_text()).get("job_id") for r in rows}
        subprocess.run(["scancel", *{str(j).split("_")[0] for j in jobs if j}], capture_output=True)


@on_slurm
def test_a_sweep_dir_moved_while_its_jobs_wait_says_where_they_write(sweep, tmp_path):
    """The sweep dir renamed while its jobs are pending: the jobs keep the old paths (they fail to
    start there, or a running one writes its results there) and status said only `queued`. Now
    each such run names the dir its job was submitted from. (The jobs are held: none starts.)"""
    sweep_dir, rows = sweep
    first = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--time", "20", "--mem", "1G", "--slurm-arg", "hold")
    assert first.returncode == 0, first.stderr
    moved = tmp_path / "renamed"
    sweep_dir.rename(moved)
    jobs = {r["run_id"]: json.loads((moved / "jobs" / f"{r['run_id']}.json").read_text())["job_id"] for r in rows}
    try:
        status = slurm_answered(ehrfm, "sweep", "status", moved)
        assert status.returncode == 0 and f"{len(rows)} runs: {len(rows)} queued" in status.stdout, status.stdout + status.stderr
        for rid, jid in jobs.items():
            assert (f"{rid}: queued: SLURM job {jid} waits: JobHeldUser (`scontrol show job {jid}` says more; it may never start as "
                    f"submitted); its job was submitted from {sweep_dir}, not {moved}: it reads and writes there") in status.stdout, status.stdout
    finally:
        subprocess.run(["scancel", *{j.split("_")[0] for j in jobs.values()}], capture_output=True)


@on_slurm
def test_launch_wait_says_once_why_a_job_waits(sweep):
    """`launch --wait` with jobs that cannot start as submitted (here held; a drained node or
    PartitionConfig alike) waited in silence, forever. Now it says once per run why each job waits;
    when the user then cancels them, it ends, exit 1, naming each run as lost."""
    import os
    import select
    import sys

    from test_sweep_faults import ENV

    sweep_dir, rows = sweep
    launch = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(sweep_dir), "--executor", "slurm", "--time", "20",
                               "--mem", "1G", "--slurm-arg", "hold", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    jobs = {}
    try:
        said, lines = b"", []
        while len(lines) < len(rows):  # raw reads: a buffered readline would hide the lines already read
            ready, _, _ = select.select([launch.stderr], [], [], 300)  # a hang guard only
            assert ready, f"the waiting launch said nothing of why its jobs wait: {said}"
            said += os.read(launch.stderr.fileno(), 65536)
            # a busy slurmctld's squeue "Socket timed out" is said too, as it happens ("unknown: SLURM could not be
            # asked ..."): a hiccup of the cluster, not a reason why a job waits
            lines = [ln for ln in said.decode().split("\n")[:-1] if "SLURM could not be asked" not in ln]
        jobs = {r["run_id"]: json.loads((sweep_dir / "jobs" / f"{r['run_id']}.json").read_text())["job_id"] for r in rows}
        assert sorted(lines) == sorted(f"ehrfm sweep: warning: {rid}: queued: SLURM job {jid} waits: JobHeldUser (`scontrol show job "
                                       f"{jid}` says more; it may never start as submitted)" for rid, jid in jobs.items())
        subprocess.run(["scancel", *jobs.values()], check=True, capture_output=True)
        out, err = launch.communicate(timeout=600)
    finally:
        launch.kill()
        recorded = [json.loads(p.read_text()).get("job_id") for p in (sweep_dir / "jobs").glob("*.json") if not p.name.endswith(".train.json")]
        subprocess.run(["scancel", *{str(j).split("_")[0] for j in recorded if j}], capture_output=True)
    assert launch.returncode == 1 and f"{len(rows)} SLURM runs finished: {len(rows)} lost" in out, out + err
    assert err.count(": lost: SLURM job ") == len(rows) and " waits: " not in err, err  # said once, while it waited


@on_slurm
def test_array_tasks_cancelled_while_pending_say_so(sweep):
    """`scancel 12_0 12_1` of a pending array: squeue lists them as "12" alone, not "12_0", so their
    runs read `lost` with no reason. The array's own record now gives its tasks' end."""
    sweep_dir, rows = sweep
    array = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--hold", "-o", "/dev/null", "--mem", "50M", "-c", "1", "--wrap", "true"],
                           capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        subprocess.run(["scancel", f"{array}_0", f"{array}_1"], check=True, capture_output=True)
        wait_for(lambda: squeue_state(array) == "CANCELLED", f"array {array} to be cancelled")
        for i, r in enumerate(rows):
            write(sweep_dir / "jobs" / f"{r['run_id']}.json", {"run_id": r["run_id"], "executor": "slurm", "job_id": f"{array}_{i}"})
        status = slurm_answered(ehrfm, "sweep", "status", sweep_dir)
        for i, r in enumerate(rows):
            assert (f"{r['run_id']}: lost: SLURM job {array}_{i} ended CANCELLED (JobHeldUser) without a result.json; "
                    "a relaunch starts it again") in status.stdout, status.stdout
    finally:
        subprocess.run(["scancel", array], capture_output=True)
