"""SLURM job states -> run states: held means queued, an unknown state is `unknown`, and SLURM is
asked about the recorded job ids whoever submitted them (never `squeue -u $USER`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from test_sweep import TINY

from sweeps.state import SLURM_STATES, run_states, slurm_state_of

# The whole table of SLURM job state codes (squeue/sacct man pages), and what each means for a run.
EXPECTED = {
    "PENDING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued", "REQUEUE_FED": "queued",
    "RESV_DEL_HOLD": "queued", "SPECIAL_EXIT": "queued", "CONFIGURING": "queued",
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running", "STOPPED": "running",
    "SIGNALING": "running", "RESIZING": "running", "STAGE_OUT": "running",
    "COMPLETED": None, "CANCELLED": None, "FAILED": None, "TIMEOUT": None, "NODE_FAIL": None,
    "PREEMPTED": None, "BOOT_FAIL": None, "DEADLINE": None, "OUT_OF_MEMORY": None,
    "REVOKED": "unknown",
}


def test_every_slurm_state_has_its_meaning():
    assert {s: slurm_state_of(s) for s in EXPECTED} == EXPECTED
    assert set(SLURM_STATES) == set(EXPECTED)
    # Any other hold is still a queued job; sacct's decorated forms read the same.
    assert slurm_state_of("FUTURE_HOLD") == "queued" and slurm_state_of(" resv_del_hold ") == "queued"
    assert slurm_state_of("CANCELLED by 1042") is None and slurm_state_of("REQUEUED+") == "queued"
    # A state this code does not know (a newer SLURM) is never read as "over": not resubmitted.
    assert slurm_state_of("POWER_UP_NODE") == "unknown" and slurm_state_of("") == "unknown"


# --- on the real SLURM cluster (scripts/slurm-local.sh up) ----------------------------------------

slurm = pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")


def sbatch(*args) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--mem", "50M", "-c", "1", *args],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def squeue_state(job_id: str) -> str:
    p = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return p.stdout.strip()


def wait_for_state(job_id: str, state: str, timeout_s: float = 180) -> None:
    """Poll SLURM until the job reaches `state` (how long the scheduler takes never decides the test)."""
    deadline = time.monotonic() + timeout_s
    while squeue_state(job_id) != state:
        assert time.monotonic() < deadline, f"job {job_id} never reached {state} (now {squeue_state(job_id)!r})"
        time.sleep(0.3)


@slurm
@pytest.mark.slurm
def test_held_jobs_of_another_user_are_queued_and_never_resubmitted(synth_tokens, tmp_path, monkeypatch):
    """Records name real jobs: user-held (PENDING), SPECIAL_EXIT (requeued held), RUNNING, and one
    SLURM no longer knows. Read as another user: queued, queued, running, lost; a relaunch would
    submit only the lost run."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, out=out, **TINY)  # 4 runs
    ids = [r["run_id"] for r in rows]
    assert len(ids) == 4
    jobs = []
    try:
        held = sbatch("--hold", "--wrap", "true")
        special = sbatch("--wrap", "sleep 600")
        running = sbatch("--wrap", "sleep 600")
        jobs = [held, special, running]
        wait_for_state(special, "RUNNING")
        subprocess.run(["scontrol", "requeuehold", "State=SpecialExit", special], check=True, capture_output=True)
        wait_for_state(special, "SPECIAL_EXIT")
        wait_for_state(running, "RUNNING")
        gone = str(int(max(map(int, jobs))) + 100000)  # an id SLURM has never had
        (out / "jobs").mkdir()
        for rid, jid in zip(ids, [held, special, running, gone], strict=True):
            (out / "jobs" / f"{rid}.json").write_text(json.dumps({"run_id": rid, "executor": "slurm", "job_id": jid}))
        monkeypatch.setenv("USER", "a-teammate")  # what `squeue -u $USER` would have asked for
        monkeypatch.setenv("LOGNAME", "a-teammate")
        states = {rid: st.state for rid, st in run_states(out, ids).items()}
        assert states == {ids[0]: "queued", ids[1]: "queued", ids[2]: "running", ids[3]: "lost"}
        env = {"USER": "a-teammate", "LOGNAME": "a-teammate"}
        dry = subprocess.run([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "slurm", "--dry-run"],
                             capture_output=True, text=True, env={**os.environ, "EHRFM_QUIET": "1", **env})
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines() == [
            f"would submit {ids[3]} (lost)",
            "dry run: would submit 1 jobs to slurm (not submitted: 2 queued, 1 running)",
        ]
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True)
