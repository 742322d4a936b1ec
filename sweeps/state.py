"""The state of each run of a sweep, from files and from the scheduler.

    completed | failed | diverged   runs/<id>/result.json says so (the trainer, or the job wrapper
                                    when the trainer died, wrote it)
    queued | running                jobs/<id>.json names a job that SLURM or this machine (a live
                                    local process) still has; SLURM is asked about the recorded job
                                    ids, whoever submitted them (`squeue -j`), and a held job
                                    (any *_HOLD, SPECIAL_EXIT, pending for any reason) is queued
    interrupted                     the job is gone, runs/<id>/checkpoint/ exists: resumable
    running                         also: no visible job, but a trainer holds the run dir's lock
                                    (ehrfm.run_lock), e.g. a teammate's job SLURM hides from us
    lost                            the job is gone and nothing was saved (cancelled before start,
                                    killed without checkpoint): launch starts it again
    unknown                         a SLURM job that cannot be checked here (no squeue, controller
                                    down) or in a state this module does not know (SLURM_STATES):
                                    never resubmitted until SLURM answers with a known state
    planned                         never launched
    unplanned                       a run dir under runs/ that the current plan does not list
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import read_json
from ehrfm.run_lock import run_dir_busy

FINISHED = ("completed", "failed", "diverged")
ACTIVE = ("queued", "running")


@dataclass
class RunState:
    run_id: str
    state: str
    job_id: str | None = None
    executor: str | None = None
    result: dict | None = None


def runs_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "runs"


def record_path(sweep_dir: Path, run_id: str) -> Path:
    return Path(sweep_dir) / "jobs" / f"{run_id}.json"


def log_path(sweep_dir: Path, run_id: str) -> Path:
    return Path(sweep_dir) / "logs" / f"{run_id}.log"


def read_record(sweep_dir: Path, run_id: str) -> dict | None:
    """jobs/<id>.json, or None when there is none. UserError when it is damaged: the job it names
    may still be alive, so guessing (and resubmitting) would risk training the run twice."""
    path = record_path(sweep_dir, run_id)
    if not path.exists():
        return None
    return read_json(path, "job record", expect=dict,
                     hint="if no job of this run is alive (squeue), delete the file and relaunch")


_NUMBER_FIELDS = ("val_loss", "n_params", "n_params_total", "tokens", "flops", "wall_s", "tokens_per_s")


def read_result(run_dir: Path) -> dict | None:
    """runs/<id>/result.json, or None when the run has not written one.

    Raises:
        UserError: the file exists but is truncated, empty, not a JSON object, or wrongly typed
            (status not a string, a number field not a number, a completed run without a finite
            val_loss). Such a run is neither "interrupted" nor usable: the message names the file
            and what to do.
    """
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return None
    hint = "delete it and relaunch the sweep: the run resumes from its checkpoint and writes it again"
    result = read_json(path, "run result", expect=dict, hint=hint)
    problems = []
    status = result.get("status")
    if not isinstance(status, str):
        problems.append("status is not a string")
    for k in _NUMBER_FIELDS:
        v = result.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            problems.append(f"{k} is not a number")
    if status == "completed" and not problems:
        loss = result.get("val_loss")
        if loss is None or not math.isfinite(loss):
            problems.append("completed without a finite val_loss")
    if problems:
        raise UserError(f"run result {path} is damaged: {'; '.join(problems)}; {hint}")
    return result


# Every job state SLURM reports (squeue/sacct "JOB STATE CODES", slurm 20-24) -> the run's state.
# None: the job is over; the run dir's files then tell interrupted, lost or finished.
SLURM_STATES: dict[str, str | None] = {
    # waiting to start, held, or put back in the queue: never submit these again
    "PENDING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued", "REQUEUE_FED": "queued",
    "RESV_DEL_HOLD": "queued", "SPECIAL_EXIT": "queued", "CONFIGURING": "queued",
    # allocated and executing (or still cleaning up / stopped but alive)
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running", "STOPPED": "running",
    "SIGNALING": "running", "RESIZING": "running", "STAGE_OUT": "running",
    # over
    "COMPLETED": None, "CANCELLED": None, "FAILED": None, "TIMEOUT": None, "NODE_FAIL": None,
    "PREEMPTED": None, "BOOT_FAIL": None, "DEADLINE": None, "OUT_OF_MEMORY": None,
    # a federation sibling revoked because the job started on another cluster: it may be running there
    "REVOKED": "unknown",
}
# Job ids as SLURM writes them: 123, 123_4 (array task), 123+1 (heterogeneous component).
_JOB_ID = re.compile(r"\d+(?:_\d+)?(?:\+\d+)?")
_SQUEUE_CHUNK = 500  # ids per squeue call (command lines stay short)


def slurm_state_of(state: str) -> str | None:
    """The run state for one SLURM job state: "queued", "running", "unknown", or None (job over).

    Args:
        state: squeue's %T (e.g. "PENDING", "REQUEUE_HOLD"); sacct's form with a suffix
            ("CANCELLED by 0") and a trailing "+" are accepted.

    Any *_HOLD state is queued; a state missing from SLURM_STATES (a newer SLURM) is "unknown",
    so that a relaunch never resubmits a job it cannot read.
    """
    base = state.strip().upper().split(" ")[0].rstrip("+")
    if base in SLURM_STATES:
        return SLURM_STATES[base]
    if base.endswith("_HOLD"):
        return "queued"
    return "unknown"


def slurm_job_states(job_ids) -> dict[str, str] | None:
    """{job id: SLURM state} of the given job ids that SLURM still knows, WHOEVER submitted them;
    None when SLURM cannot be asked (no `squeue` here, controller down).

    Args:
        job_ids: recorded ids, e.g. ["123_0", "123_1", "130"]; ids of another form are not asked.

    Asks `squeue -h -r -j ID,... -o %i|%T` (never `-u $USER`: a teammate relaunching a shared
    sweep must see the jobs others submitted). A job id SLURM no longer knows is absent.
    """
    if shutil.which("squeue") is None:
        return None
    ids = sorted({str(j) for j in job_ids if j is not None and _JOB_ID.fullmatch(str(j))})
    states: dict[str, str] = {}
    for i in range(0, len(ids), _SQUEUE_CHUNK):
        chunk = ids[i:i + _SQUEUE_CHUNK]
        cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(chunk)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (subprocess.TimeoutExpired, OSError):
            return None
        if proc.returncode != 0:
            # squeue -j with ids that are all gone from the controller: "Invalid job id specified"
            if "invalid job id" in proc.stderr.lower():
                continue
            return None
        for line in proc.stdout.splitlines():
            jid, _, st = line.strip().partition("|")
            if jid:
                states[jid] = st
    return states


def _pid_alive(pid, needle: str | None = None) -> bool:
    """Is process `pid` alive (and, with `needle`, is it still ours: its command line has needle)?"""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # a zombie has exited
        if needle is not None:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                return needle.encode() in f.read()  # a reused pid is not our process
    except OSError:
        return True
    return True


def _slurm_state(record: dict, squeue: dict[str, str]) -> str | None:
    st = squeue.get(str(record.get("job_id")))
    return None if st is None else slurm_state_of(st)


def _local_state(record: dict) -> str | None:
    if record.get("host") and record["host"] != os.uname().nodename:
        return "running"  # launched from another machine: we cannot see it, so never relaunch it
    if _pid_alive(record.get("job_pid"), "submitit") or _pid_alive(record.get("trainer_pid"), "sweeps.run_one"):
        return "running"
    if not record.get("job_pid") and _pid_alive(record.get("launcher_pid"), "python"):
        return "queued"  # waiting for a free slot in a live `sweep launch --executor local`
    return None


def run_states(sweep_dir: str | Path, run_ids: list[str]) -> dict[str, RunState]:
    """State of each planned run, plus any run dir under runs/ that the plan does not list."""
    sweep_dir = Path(sweep_dir)
    ids = list(run_ids)
    rdir = runs_dir(sweep_dir)
    if rdir.is_dir():
        planned = set(ids)
        ids += sorted(p.name for p in rdir.iterdir() if p.is_dir() and p.name not in planned and ".tmp-" not in p.name)
    records = {rid: read_record(sweep_dir, rid) for rid in ids}
    squeue: dict[str, str] | None = None
    asked_slurm = False
    out: dict[str, RunState] = {}
    planned_ids = set(run_ids)
    for rid in ids:
        run_dir = rdir / rid
        record = records[rid]
        result = read_result(run_dir)
        executor = record.get("executor") if record else None
        job_id = str(record["job_id"]) if record and record.get("job_id") else None
        if result is not None and result.get("status") in FINISHED:
            out[rid] = RunState(rid, result["status"], job_id, executor, result)
            continue
        active = None
        if record is not None:
            if executor == "slurm":
                if not asked_slurm:
                    squeue = slurm_job_states(r["job_id"] for r in records.values() if r and r.get("executor") == "slurm")
                    asked_slurm = True
                # Without an answer from SLURM the job may still be alive: never resubmit it blindly.
                active = "unknown" if squeue is None else _slurm_state(record, squeue)
            else:
                active = _local_state(record)
        if active is None and run_dir_busy(run_dir):
            # a trainer holds the run dir although no job we can see runs it (another user's
            # private jobs, another machine, a job wrapper gone before its trainer): never twice
            active = "running"
        if active is not None:
            state = active
        elif (run_dir / "checkpoint").exists() or (run_dir / "checkpoint.prev").exists():  # .prev: killed mid-swap
            state = "interrupted"
        elif record is not None:
            state = "lost"
        else:
            state = "planned" if rid in planned_ids else "unplanned"
        out[rid] = RunState(rid, state, job_id, executor, result)
    return out
