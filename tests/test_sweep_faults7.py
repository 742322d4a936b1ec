"""Sweep faults of a seventh break-it pass: a flaky cluster, as a demanding user meets it (real processes).

- A job process that crashes at start-up (SIGSEGV before any handler: no traceback, nothing written)
  left its run `lost`, and every plain relaunch submitted it again, forever. Now each such crash is
  counted in the job record (by job id, so a relaunch never counts one twice); after
  STARTUP_CRASHES_MAX in a row the run is `failed`, its error saying it crashed at start-up N times
  and how to retry (`--retry-failed`, which gives it as many tries again). Locally and on SLURM.
- A full disk (a real tmpfs filled up) under a local launch: the launcher stopped (exit 2) at the first
  job record it could not write, while the jobs it had started trained on, unwatched. Now it starts no
  more jobs, watches the running ones to their end, then exits 2 naming the file and the errno; nothing
  is half-written and a relaunch, the disk freed, completes every run.
- SLURM's time-limit signal (USR2) reaching a job while it is unpickled, before submitit installs its
  handler: USR2's default action killed the job, which ended FAILED without a requeue (and, with the
  count above, as a crash at start-up). Now the job keeps the signal and hands it to submitit's handler
  once installed: the job checkpoints and requeues itself as at any other moment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ehrfm.fault_points import wait_held
from sweeps.launch import STARTUP_CRASHES_MAX

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def _one_run_sweep(tok, tmp_path):
    from test_sweep import plan_rows

    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(tok, [2e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    return out, rid


def _crash_local_job_at_start(out, rid, holds) -> subprocess.CompletedProcess:
    """A local launch whose job process is killed by SIGSEGV in its start-up (unpickled, no handler yet)."""
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(ENV, EHRFM_HOLD_AT="job-start", EHRFM_HOLD_DIR=str(holds)))
    held = wait_held(holds, rid, "job-start", is_alive=lambda: launcher.poll() is None)
    (holds / f"{rid}.job-start.held").unlink()  # the next attempt announces itself again
    os.kill(held["pid"], signal.SIGSEGV)
    stdout, stderr = launcher.communicate(timeout=300)
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)


def test_a_local_job_crashing_at_start_up_is_resubmitted_a_bounded_number_of_times_then_failed(tok, tmp_path):
    from test_sweep import ehrfm

    out, rid = _one_run_sweep(tok, tmp_path)
    holds = tmp_path / "holds"
    for i in range(1, STARTUP_CRASHES_MAX):
        launch = _crash_local_job_at_start(out, rid, holds)
        assert launch.returncode == 1 and "1 lost" in launch.stdout, f"crash {i}: {launch.stdout}{launch.stderr[-2000:]}"
        assert not (out / "runs" / rid / "result.json").exists()
        crashes = json.loads((out / "jobs" / f"{rid}.json").read_text())["startup_crashes"]
        # one entry per launch, keyed by it: a job id is a pid, which a new container gives again (then
        # a count of distinct pids stayed at 1 and the run was relaunched forever)
        assert [c.endswith(f"(launch {k})") for k, c in enumerate(crashes, 1)] == [True] * i, crashes
    launch = _crash_local_job_at_start(out, rid, holds)  # the last one allowed
    assert launch.returncode == 1 and "1 failed" in launch.stdout, launch.stdout + launch.stderr[-2000:]
    error = json.loads((out / "runs" / rid / "result.json").read_text())["error"]
    assert error.startswith(f"its job process crashed at start-up {STARTUP_CRASHES_MAX} times in a row"), error
    assert f"`ehrfm sweep launch {out} --retry-failed`" in error, error
    status = ehrfm("sweep", "status", out)
    assert f"{rid}: failed: {error}" in status.stdout, status.stdout
    again = ehrfm("sweep", "launch", out, "--executor", "local")  # a plain relaunch: no more tries
    assert again.returncode == 0 and "submitted 0 jobs" in again.stdout + again.stderr, again.stdout + again.stderr

    retry = ehrfm("sweep", "launch", out, "--executor", "local", "--retry-failed")  # fixed: it trains
    assert retry.returncode == 0 and "1 completed" in retry.stdout, retry.stdout + retry.stderr[-2000:]


def test_a_crash_at_start_up_after_a_run_that_trained_starts_a_new_row(tok, tmp_path):
    """The count is of crashes in a row: a job that started its trainer ends the row."""
    out, rid = _one_run_sweep(tok, tmp_path)
    record = out / "jobs" / f"{rid}.json"
    holds = tmp_path / "holds"
    assert _crash_local_job_at_start(out, rid, holds).returncode == 1
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "startup_crashes": [f"local-{i}" for i in range(STARTUP_CRASHES_MAX - 1)],
                                  "trainer_pid": 1}))  # as if the job after the crash had started its trainer
    launch = _crash_local_job_at_start(out, rid, holds)
    assert launch.returncode == 1 and "1 lost" in launch.stdout, launch.stdout + launch.stderr[-2000:]
    assert len(json.loads(record.read_text())["startup_crashes"]) == 1


SLURM_ARGS = ("--executor", "slurm", "--time", "20", "--cpus-per-task", "1", "--mem", "1G")


def _slurm_job_held_at_start(out, rid, holds) -> tuple[str, dict]:
    """Launch the one-run sweep `out` on SLURM, its job held at `job-start` (unpickled, no handler yet): (job id, hold)."""
    from test_sweep import ehrfm

    launch = ehrfm("sweep", "launch", out, *SLURM_ARGS, env={"EHRFM_HOLD_AT": "job-start", "EHRFM_HOLD_DIR": str(holds)})
    assert launch.returncode == 0 and "submitted 1 jobs" in launch.stdout + launch.stderr, launch.stdout + launch.stderr
    jid = json.loads((out / "jobs" / f"{rid}.json").read_text())["job_id"]
    try:
        return jid, wait_held(holds, rid, "job-start", timeout_s=300)
    except BaseException:
        subprocess.run(["scancel", jid], capture_output=True)
        raise


def _held_slurm_sweep(tok, tmp_path):
    """A one-run sweep launched on SLURM, its job held at `job-start`: (sweep dir, run id, holds dir, job id, hold)."""
    out, rid = _one_run_sweep(tok, tmp_path)
    holds = tmp_path / "holds"
    return (out, rid, holds, *_slurm_job_held_at_start(out, rid, holds))


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_a_slurm_job_crashing_at_start_up_is_resubmitted_a_bounded_number_of_times_then_failed(tok, tmp_path):
    from test_sweep import ehrfm, slurm_answered
    from test_sweep_faults3 import squeue_state, wait_for

    out, rid = _one_run_sweep(tok, tmp_path)
    holds = tmp_path / "holds"
    for i in range(1, STARTUP_CRASHES_MAX + 1):
        jid, held = _slurm_job_held_at_start(out, rid, holds)
        try:
            (holds / f"{rid}.job-start.held").unlink()
            os.kill(held["pid"], signal.SIGSEGV)
            wait_for(lambda jid=jid: squeue_state(jid) in ("", "FAILED"), f"job {jid} to end")
        finally:
            subprocess.run(["scancel", jid], capture_output=True)
        status = slurm_answered(ehrfm, "sweep", "status", out)
        assert f"{rid}: lost" in status.stdout, f"crash {i}: {status.stdout}"
    record = (out / "jobs" / f"{rid}.json").read_text()
    dry = slurm_answered(ehrfm, "sweep", "launch", out, *SLURM_ARGS, "--dry-run")  # says what it would record, writes nothing
    assert f"would record {rid} failed" in dry.stdout and "nothing to run (1 failed" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert not (out / "runs" / rid / "result.json").exists() and (out / "jobs" / f"{rid}.json").read_text() == record
    last = slurm_answered(ehrfm, "sweep", "launch", out, *SLURM_ARGS)  # counts the last crash: no more tries
    assert "nothing to run (1 failed" in last.stdout + last.stderr, last.stdout + last.stderr
    error = json.loads((out / "runs" / rid / "result.json").read_text())["error"]
    assert error.startswith(f"its job process crashed at start-up {STARTUP_CRASHES_MAX} times in a row"), error
    assert "--retry-failed" in error, error


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root only): a real filesystem that fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_under_a_local_launch_stops_new_jobs_but_watches_the_running_ones_to_their_end(tok, tmp_path, small_disk):
    from test_sweep import ehrfm, plan_rows

    from sweeps.plan import plan_sweep

    out, holds = small_disk / "sweep", tmp_path / "holds"
    plan_sweep(tok, [2e8, 3e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    first, second = sorted(r["run_id"] for r in plan_rows(out))
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local", "--max-parallel", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(ENV, EHRFM_HOLD_AT="step-2", EHRFM_HOLD_DIR=str(holds)))
    for rid in (first, second):
        wait_held(holds, rid, "step-2", is_alive=lambda: launcher.poll() is None)
    filler = _fill(small_disk)
    (holds / f"{first}.step-2.release").touch()  # the first run goes on, on a full disk; the second stays held
    err: list[str] = []  # the launcher's stderr, read by a thread (its jobs hold the pipe open: no EOF while they live)
    reader = threading.Thread(target=lambda: err.extend(iter(launcher.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300  # a hang guard only
        while not any("cannot be written" in ln for ln in err) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        said = "".join(err)
        assert "cannot be written" in said and launcher.poll() is None, said  # still watching the held run
        assert "No space left on device" in said and "no more jobs start; waiting for the 1 running ones to end" in said, said
    finally:
        filler.unlink()
        (holds / f"{second}.step-2.release").touch()
    launcher.wait(timeout=300)
    reader.join(timeout=60)
    lines = [ln for ln in err if ln.strip()]
    assert launcher.returncode == 2 and "No space left on device (ENOSPC)" in lines[-1] and str(out) in lines[-1], "".join(err)
    assert json.loads((out / "runs" / second / "result.json").read_text())["status"] == "completed"  # watched to its end
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], sorted(str(p) for p in out.rglob("*.tmp-*"))
    status = ehrfm("sweep", "status", out)  # its result could not be written: lost, trained again by a plain relaunch
    assert re.search(rf"{first} .* lost ", status.stdout), status.stdout
    again = ehrfm("sweep", "launch", out, "--executor", "local")
    assert again.returncode == 0 and "1 completed" in again.stdout, again.stdout + again.stderr[-2000:]
    assert json.loads((out / "runs" / first / "result.json").read_text())["status"] == "completed"


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_a_slurm_time_limit_signal_before_submitits_handler_requeues_the_job(tok, tmp_path):
    from test_sweep import ehrfm, slurm_answered
    from test_sweep_faults3 import squeue_state, submitit_log, text_of, wait_for

    out, rid, holds, jid, held = _held_slurm_sweep(tok, tmp_path)
    try:
        os.kill(held["pid"], signal.SIGUSR2)  # what `--signal=USR2@...` sends near the time limit, in the job's start-up
        (holds / f"{rid}.job-start.release").touch()
        wait_for(lambda: squeue_state(jid) not in ("RUNNING", "COMPLETING", "?"), f"job {jid} to leave RUNNING")
        log = text_of(submitit_log(out, jid))
        assert "Caught signal SIGUSR2" in log and "Job not requeued" not in log, log[-3000:]
        assert squeue_state(jid) in ("PENDING", "REQUEUED", "REQUEUE_HOLD"), (squeue_state(jid), log[-3000:])
        status = slurm_answered(ehrfm, "sweep", "status", out)
        assert re.search(rf"{rid} .* queued ", status.stdout), status.stdout
    finally:
        subprocess.run(["scancel", jid], capture_output=True)


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_a_slurm_job_stopped_by_a_signal_at_start_up_is_no_crash(tok, tmp_path):
    """SIGTERM (a stop) killing a SLURM job in its start-up: `lost`, relaunched, and not counted as a crash."""
    from test_sweep import ehrfm
    from test_sweep_faults3 import squeue_state, wait_for

    out, rid, holds, jid, held = _held_slurm_sweep(tok, tmp_path)
    try:
        os.kill(held["pid"], signal.SIGTERM)
        wait_for(lambda: squeue_state(jid) in ("", "FAILED"), f"job {jid} to end")
    finally:
        subprocess.run(["scancel", jid], capture_output=True)
    dry = ehrfm("sweep", "launch", out, *SLURM_ARGS, "--dry-run")
    assert "would submit 1" in dry.stdout.lower(), dry.stdout + dry.stderr
    assert not json.loads((out / "jobs" / f"{rid}.json").read_text()).get("startup_crashes")


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_a_launch_sbatch_refuses_keeps_the_runs_earlier_record_and_its_crash_count(tok, tmp_path):
    """Before: a launch undone (sbatch refused it, or Ctrl-C before its job started) deleted the run's job
    record, and with it the count of its crashes at start-up: the run got STARTUP_CRASHES_MAX tries again.
    Now the record this launch replaced is put back, as it was."""
    from test_sweep import ehrfm

    out, rid = _one_run_sweep(tok, tmp_path)
    path = out / "jobs" / f"{rid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = {"run_id": rid, "executor": "slurm", "job_id": "999999", "host": os.uname().nodename, "sweep_dir": str(out),
               "launches": 2, "previous_job_ids": ["999998"], "startup_crashes": ["999998", "999999"]}
    path.write_text(json.dumps(earlier))
    refused = ehrfm("sweep", "launch", out, *SLURM_ARGS, "--partition", "no_such_partition")
    assert refused.returncode != 0 and "sbatch refused" in refused.stderr, refused.stdout + refused.stderr
    assert json.loads(path.read_text()) == earlier
