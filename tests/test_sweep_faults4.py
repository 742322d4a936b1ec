"""Sweep faults of cluster life, round 4: launchers stopped mid-submit, WSD trunks lost before their branches, stale records.

- `ehrfm sweep launch --executor slurm` stopped by SIGTERM (or Ctrl-C, SIGHUP) while sbatch ran:
  its jobs were queued but their records had no job id, so status said `lost` and a relaunch
  submitted every run a second time. Now the signal waits until each submitted job is on record;
  the launch then exits 143 (130) and a relaunch submits 0 jobs;
- a WSD trunk cancelled (or lost to a node failure) before its branch point: its branch, started
  by `afterany`, was refused by the trainer and recorded failed; the relaunch trained the trunk
  again but left the branch failed, missing until a `--retry-failed`. Now a branch refused for its
  trunk goes with the trunk it waited for (or once the trunk completed);
- a job record half-written (NFS) while its job waited was rewritten by the job without `executor`:
  once requeued the run read `interrupted` and a relaunch submitted it beside its queued job;
- a job whose submitit pickle could not be loaded (another version) said only "FAILED (NonZeroExitCode)";
- `--retry-failed` refused by sbatch, or stopped by Ctrl-C before a retried run started, left the
  failure moved aside: the run read `planned`, its failure gone from status and collect;
- a launcher SIGKILLed mid-submit left a record without job id: `lost` with no reason;
- a record whose job id now names another job (sweep dir copied from another cluster) kept the run
  `queued` forever.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep_faults import completed_result, ehrfm, fingerprint_of, write
from test_sweep_faults3 import on_slurm, squeue_state, submitit_log, wait_for

from ehrfm.results import RunResult, Status, write_result
from ehrfm.run_lock import run_dir_busy


@pytest.fixture()
def sweep(tok, tmp_path) -> tuple[Path, list[dict]]:
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8], out, sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    return out, rows


@pytest.fixture()
def wsd_sweep(tok, tmp_path) -> tuple[Path, list[dict]]:
    from sweeps.plan import plan_sweep

    out = tmp_path / "wsd"
    _, rows, _ = plan_sweep(tok, [1e9, 2.5e9], out, sizes=3, span_dex=0.5, context=64, min_steps=1,
                            train={"batch_size": 4}, schedule="wsd")
    return out, rows


@on_slurm
def test_a_launcher_stopped_while_sbatch_runs_keeps_its_jobs_on_record(sweep, tmp_path):
    """sbatch's parent (the launcher) gets SIGTERM while sbatch submits: the held jobs are on
    record with their job ids, the launch exits 143, and a relaunch submits 0 jobs (2 queued)."""
    sweep_dir, rows = sweep
    fake = tmp_path / "bin"
    fake.mkdir()
    sbatch = fake / "sbatch"  # the launcher is stopped while sbatch runs, as by a scheduler's kill or a closed terminal
    sbatch.write_text(f"#!/bin/sh\nkill -TERM $PPID\nexec {subprocess.run(['which', 'sbatch'], capture_output=True, text=True).stdout.strip()} \"$@\"\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    opts = ["--executor", "slurm", "--partition", "local", "--cpus-per-task", "1", "--mem", "200M", "--time", "10",
            "--signal-delay-s", "30", "--slurm-arg", "hold"]  # held: they never run, only their records matter
    launch = ehrfm("sweep", "launch", sweep_dir, *opts, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    job_ids = [json.loads((sweep_dir / "jobs" / f"{r['run_id']}.json").read_text()).get("job_id") for r in rows]
    try:
        assert launch.returncode == 143, launch.stderr
        assert all(job_ids), f"submitted jobs left without a job id on record: {job_ids}\n{launch.stderr}"
        assert "interrupted: 2 of 2 jobs were submitted" in launch.stderr
        again = ehrfm("sweep", "launch", sweep_dir, *opts)
        assert again.returncode == 0, again.stderr
        assert "submitted 0 jobs: nothing to run (2 queued)" in again.stdout
    finally:
        # every job sbatch took, on record or not (submitit makes a folder per job)
        taken = {p.name.split("_")[0] for p in (sweep_dir / "submitit").glob("[0-9]*")} | {str(j).split("_")[0] for j in job_ids if j}
        if taken:
            subprocess.run(["scancel", *taken], capture_output=True)


def test_a_branch_refused_for_its_lost_trunk_is_relaunched_with_it(wsd_sweep):
    """A trunk cancelled before its branch point (its record names a job that is gone, nothing
    saved: `lost`) and its branch refused by the trainer for it (exit 2, recorded failed): the
    relaunch trains both, trunk first, and keeps the branch's failure as jobs/<id>.failed-1.json."""
    sweep_dir, rows = wsd_sweep
    branch = next(r for r in rows if r["trunk_id"] != r["run_id"] and r["d_model"] == 16)
    trunk = branch["trunk_id"]
    (sweep_dir / "jobs").mkdir(exist_ok=True)
    (sweep_dir / "jobs" / f"{trunk}.json").write_text(json.dumps(
        {"run_id": trunk, "executor": "local", "job_id": "local-1", "host": os.uname().nodename, "job_pid": 0}))
    refused = (f"trainer exited with status 2: ehrfm train: error: trunk {sweep_dir / 'runs' / trunk} is not a run dir "
               "(no config.json): train the trunk first")
    write_result(sweep_dir / "runs" / branch["run_id"], RunResult(Status.FAILED, error=refused, exit_code=2))

    for r in rows:  # the other trunk and its branch finished: only the two faulted runs are left to run
        if r["run_id"] not in (trunk, branch["run_id"]):
            write(sweep_dir / "runs" / r["run_id"] / "result.json", completed_result(r, fingerprint_of(sweep_dir)))

    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would submit {trunk} (lost)" in dry.stdout and f"would submit {branch['run_id']} (failed)" in dry.stdout
    assert "would submit 2 jobs to local (not submitted: 2 completed)" in dry.stdout

    run = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--max-parallel", "1")
    assert run.returncode == 0, run.stderr
    result = json.loads((sweep_dir / "runs" / branch["run_id"] / "result.json").read_text())
    assert result["status"] == "completed" and result["trunk_id"] == trunk
    assert json.loads((sweep_dir / "jobs" / f"{branch['run_id']}.failed-1.json").read_text())["exit_code"] == 2
    assert "2 completed (not submitted: 2 completed)" in run.stdout


@on_slurm
def test_a_job_that_rewrites_a_damaged_record_keeps_it_a_slurm_record(tok, tmp_path):
    """A job record half-written (NFS) while its job waits: the job, starting, rewrote it from
    nothing, without `executor`, so the run read as a local one; after `scontrol requeue` its
    trainer was gone and the run `interrupted`, and a relaunch submitted it beside its requeued
    job. Now the job's record says slurm again and the relaunch submits 0 jobs (1 queued)."""
    from sweeps.plan import plan_sweep

    sweep_dir, holds = tmp_path / "sweep", tmp_path / "holds"
    _, rows, _ = plan_sweep(tok, [2e8], sweep_dir, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    rid = rows[0]["run_id"]
    opts = ["--executor", "slurm", "--partition", "local", "--cpus-per-task", "1", "--mem", "1G", "--time", "10", "--signal-delay-s", "30"]
    p = ehrfm("sweep", "launch", sweep_dir, *opts, "--slurm-arg", "hold",
              env={"EHRFM_HOLD_AT": "step-2", "EHRFM_HOLD_DIR": str(holds)})
    assert p.returncode == 0, p.stderr
    record = sweep_dir / "jobs" / f"{rid}.json"
    jid = json.loads(record.read_text())["job_id"]
    try:
        record.write_text(record.read_text()[:40])  # half-written
        subprocess.run(["scontrol", "release", jid], check=True, capture_output=True)
        wait_for(lambda: (holds / f"{rid}.step-2.held").exists(), "the trainer to hold at step 2")
        subprocess.run(["scontrol", "requeue", jid], check=True, capture_output=True)
        wait_for(lambda: squeue_state(jid) in ("PENDING", "REQUEUED") and not run_dir_busy(sweep_dir / "runs" / rid),
                 f"job {jid} to be requeued, its trainer gone")
        again = ehrfm("sweep", "launch", sweep_dir, *opts, "--dry-run")
        assert again.returncode == 0, again.stderr
        assert "submitted 0 jobs: nothing to run (1 queued)" in again.stdout, again.stdout
        assert json.loads(record.read_text())["executor"] == "slurm"
    finally:
        subprocess.run(["scancel", jid], capture_output=True)


@on_slurm
def test_a_job_whose_pickle_cannot_be_loaded_says_why(tok, tmp_path):
    """A requeued job whose submitit pickle this ehrfm cannot load (pickled by another version):
    SLURM says only "FAILED (NonZeroExitCode)", and nothing once it forgets the job. Status now
    quotes the exception from the job's own log, and a relaunch starts the run again."""
    from sweeps.plan import plan_sweep

    sweep_dir = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8], sweep_dir, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    rid = rows[0]["run_id"]
    opts = ["--executor", "slurm", "--partition", "local", "--cpus-per-task", "1", "--mem", "1G", "--time", "10", "--signal-delay-s", "30"]
    p = ehrfm("sweep", "launch", sweep_dir, *opts, "--slurm-arg", "hold")
    assert p.returncode == 0, p.stderr
    jid = json.loads((sweep_dir / "jobs" / f"{rid}.json").read_text())["job_id"]
    try:
        old = tmp_path / "old"  # a TrainJob class of a module this version does not have
        (old / "ehrfm_old_sweeps").mkdir(parents=True)
        (old / "ehrfm_old_sweeps" / "__init__.py").write_text("class TrainJob:\n    pass\n")
        pickled = sweep_dir / "submitit" / jid / f"{jid}_submitted.pkl"
        subprocess.run([sys.executable, "-c", "import pickle, sys, ehrfm_old_sweeps; from submitit.core.utils import DelayedSubmission; "
                        "pickle.dump(DelayedSubmission(ehrfm_old_sweeps.TrainJob()), open(sys.argv[1], 'wb'))", str(pickled)],
                       env={**os.environ, "PYTHONPATH": str(old)}, check=True)
        subprocess.run(["scontrol", "release", jid], check=True, capture_output=True)
        wait_for(lambda: squeue_state(jid) in ("", "FAILED"), f"job {jid} to fail")
        status = ehrfm("sweep", "status", sweep_dir)
        assert (f"{rid}: lost: SLURM job {jid} ended") in status.stdout, status.stdout
        assert ("its log says: the job raised ModuleNotFoundError: No module named 'ehrfm_old_sweeps' "
                f"({submitit_log(sweep_dir, jid)}); a relaunch starts it again") in status.stdout, status.stdout
    finally:
        subprocess.run(["scancel", jid], capture_output=True)


@pytest.mark.parametrize("trunk_ended, branch_goes", [("completed", True), ("failed", False)])
def test_a_branch_refused_before_its_trunk_finished_goes_once_the_trunk_completed(wsd_sweep, trunk_ended, branch_goes):
    """The trunk completed after its branch was refused (a teammate's relaunch trained it): the
    next launch trains the branch without --retry-failed. A trunk that failed keeps it failed."""
    sweep_dir, rows = wsd_sweep
    branch = next(r for r in rows if r["trunk_id"] != r["run_id"] and r["d_model"] == 16)
    trunk = next(r for r in rows if r["run_id"] == branch["trunk_id"])
    refused = f"trainer exited with status 2: ehrfm train: error: trunk {sweep_dir / 'runs' / trunk['run_id']} has no stable checkpoint"
    write_result(sweep_dir / "runs" / branch["run_id"], RunResult(Status.FAILED, error=refused, exit_code=2))
    for r in rows:
        if r["run_id"] not in (branch["run_id"], trunk["run_id"]):
            write(sweep_dir / "runs" / r["run_id"] / "result.json", completed_result(r, fingerprint_of(sweep_dir)))
    ended = completed_result(trunk, fingerprint_of(sweep_dir), status=trunk_ended, **({"error": "boom"} if trunk_ended == "failed" else {}))
    write(sweep_dir / "runs" / trunk["run_id"] / "result.json", ended)
    refused_at = (sweep_dir / "runs" / branch["run_id"] / "result.json").stat().st_mtime
    os.utime(sweep_dir / "runs" / trunk["run_id"] / "result.json", (refused_at + 60, refused_at + 60))  # the trunk ended later

    dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "local", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    if branch_goes:
        assert dry.stdout.splitlines() == [f"would submit {branch['run_id']} (failed)",
                                           "dry run: would submit 1 jobs to local (not submitted: 3 completed)"], dry.stdout
    else:
        assert "submitted 0 jobs: nothing to run (2 completed, 2 failed (pass --retry-failed" in dry.stdout, dry.stdout


@on_slurm
def test_a_refused_retry_keeps_the_failure_on_record(sweep):
    """`launch --retry-failed` with an option sbatch refuses: the failed run's result.json had been
    moved aside for the retry and stayed there, so the run read `planned` and its failure was gone
    from status and collect. Now it is put back: still `failed`, with its reason."""
    sweep_dir, rows = sweep
    rid = rows[0]["run_id"]
    write_result(sweep_dir / "runs" / rid, RunResult(Status.FAILED, error="trainer killed by signal 9", exit_code=-9))
    p = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--partition", "no-such-partition", "--retry-failed",
              "--time", "10", "--signal-delay-s", "30")
    assert p.returncode == 2 and "Invalid partition name specified (--partition no-such-partition)" in p.stderr, p.stderr
    status = ehrfm("sweep", "status", sweep_dir)
    assert f"{rid}: failed: trainer killed by signal 9" in status.stdout and "2 runs: 1 failed, 1 planned" in status.stdout, status.stdout
    assert not list((sweep_dir / "jobs").glob("*.failed-*.json"))


def test_ctrl_c_before_a_retried_run_started_keeps_its_failure(sweep, tmp_path):
    """`launch --executor local --retry-failed --max-parallel 1`, Ctrl-C while the first run trains
    and the failed one waits for a slot: the waiting run's failure (moved aside for the retry) is
    put back, so status still says `failed` and why, and the trained one is `interrupted`."""
    import signal

    sweep_dir, rows = sweep
    first, retried = rows[0]["run_id"], rows[1]["run_id"]
    write_result(sweep_dir / "runs" / retried, RunResult(Status.FAILED, error="trainer killed by signal 9", exit_code=-9))
    holds = tmp_path / "holds"
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(sweep_dir), "--executor", "local",
                                 "--max-parallel", "1", "--retry-failed"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=dict(os.environ, EHRFM_QUIET="1", OMP_NUM_THREADS="1",
                                                                  EHRFM_HOLD_AT="step-2", EHRFM_HOLD_DIR=str(holds)))
    wait_for(lambda: (holds / f"{first}.step-2.held").exists() or launcher.poll() is not None, "the first run to hold at step 2")
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C in the launching terminal
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 130, err[-2000:]
    status = ehrfm("sweep", "status", sweep_dir)
    assert f"{retried}: failed: trainer killed by signal 9" in status.stdout, status.stdout
    assert "2 runs: 1 failed, 1 interrupted" in status.stdout, status.stdout


@on_slurm
def test_a_run_whose_launcher_died_before_recording_its_job_says_so(sweep):
    """A launcher SIGKILLed between sbatch and its record leaves the record without a job id: the
    run read `lost` with no reason. Status now says a job may be queued for it and where to look."""
    sweep_dir, rows = sweep
    rid = rows[0]["run_id"]
    write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": None, "sweep_dir": str(sweep_dir)})
    status = ehrfm("sweep", "status", sweep_dir)
    assert (f"{rid}: lost: its launch stopped before it recorded a job id: sbatch may have queued one anyway "
            "(`squeue --name ehrfm-sweep`); a relaunch starts it again") in status.stdout, status.stdout


@on_slurm
def test_a_job_id_that_now_names_another_job_does_not_keep_the_run_queued(sweep, tmp_path):
    """A sweep dir copied from another cluster (or SLURM's job ids started again): its record names
    job id N, and N is now someone else's held job. The run read `queued` forever and was never
    launched; now the job's batch script (not this sweep's submitit one) says it is not the run's."""
    sweep_dir, rows = sweep
    rid = rows[0]["run_id"]
    script = tmp_path / "someone_elses_job.sh"
    script.write_text("#!/bin/sh\nsleep 600\n")
    jid = subprocess.run(["sbatch", "--parsable", "--hold", "-p", "local", "-c", "1", "--mem", "50M", "-o", "/dev/null", str(script)],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        write(sweep_dir / "jobs" / f"{rid}.json", {"run_id": rid, "executor": "slurm", "job_id": jid, "sweep_dir": str(sweep_dir)})
        status = ehrfm("sweep", "status", sweep_dir)
        assert (f"{rid}: lost: SLURM job {jid} is now another job ({script}), not this run's (a record from another cluster, "
                "or SLURM's job ids started again); a relaunch starts it again") in status.stdout, status.stdout
        dry = ehrfm("sweep", "launch", sweep_dir, "--executor", "slurm", "--dry-run")
        assert f"would submit {rid} (lost)" in dry.stdout, dry.stdout
    finally:
        subprocess.run(["scancel", jid], capture_output=True)
