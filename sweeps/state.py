"""The state of each run of a sweep, from files and from the scheduler.

States, and where each comes from:
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

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import read_json
from ehrfm.results import RunResult, Status
from ehrfm.results import read_result as _read_result
from ehrfm.run_lock import run_dir_busy

_RESULT_HINT = "delete it and relaunch the sweep: the run resumes from its checkpoint and writes it again"


@dataclass
class RunState:
    """One run's state (see the module docstring), its job and, when finished, its result."""
    run_id: str
    state: Status
    job_id: str | None = None
    executor: str | None = None
    result: RunResult | None = None


def runs_dir(sweep_dir: Path) -> Path:
    """SWEEP/runs: the run dirs of a sweep."""
    return Path(sweep_dir) / "runs"


def record_path(sweep_dir: Path, run_id: str) -> Path:
    """SWEEP/jobs/<run_id>.json: the launcher's record of a run's job."""
    return Path(sweep_dir) / "jobs" / f"{run_id}.json"


def log_path(sweep_dir: Path, run_id: str) -> Path:
    """SWEEP/logs/<run_id>.log: a run's job log."""
    return Path(sweep_dir) / "logs" / f"{run_id}.log"


def read_record(sweep_dir: Path, run_id: str) -> dict | None:
    """jobs/<id>.json, or None when there is none.

    UserError when it is damaged: the job it names may still be alive, so guessing (and
    resubmitting) would risk training the run twice.
    """
    return read_record_file(record_path(sweep_dir, run_id))


def read_record_file(path: Path, damaged_ok: bool = False) -> dict | None:
    """A job record at `path`, or None when there is none.

    A job record (jobs/<id>.json) at `path`, or None when there is none (or, with damaged_ok,
    when it cannot be read). UserError when it is damaged and not damaged_ok.
    """
    if not path.exists():
        return None
    try:
        return read_json(path, "job record", expect=dict,
                         hint="if no job of this run is alive (squeue), delete the file and relaunch")
    except (UserError, OSError):
        if damaged_ok:
            return None
        raise


def read_result(run_dir: Path) -> RunResult | None:
    """runs/<id>/result.json (ehrfm.results.read_result), or None when the run has not written one.

    Raises:
        UserError: the file is damaged; the message names it and says to delete it and relaunch.
    """
    return _read_result(run_dir, hint=_RESULT_HINT)


# Every job state SLURM reports (squeue/sacct "JOB STATE CODES", slurm 20-24) -> the run's state.
# None: the job is over; the run dir's files then tell interrupted, lost or finished.
_Q, _R = Status.QUEUED, Status.RUNNING
SLURM_STATES: dict[str, Status | None] = {
    # waiting to start, held, or put back in the queue: never submit these again
    "PENDING": _Q, "REQUEUED": _Q, "REQUEUE_HOLD": _Q, "REQUEUE_FED": _Q, "RESV_DEL_HOLD": _Q, "SPECIAL_EXIT": _Q,
    "CONFIGURING": _Q,
    # allocated and executing (or still cleaning up / stopped but alive)
    "RUNNING": _R, "COMPLETING": _R, "SUSPENDED": _R, "STOPPED": _R, "SIGNALING": _R, "RESIZING": _R, "STAGE_OUT": _R,
    # over
    "COMPLETED": None, "CANCELLED": None, "FAILED": None, "TIMEOUT": None, "NODE_FAIL": None,
    "PREEMPTED": None, "BOOT_FAIL": None, "DEADLINE": None, "OUT_OF_MEMORY": None,
    # a federation sibling revoked because the job started on another cluster: it may be running there
    "REVOKED": Status.UNKNOWN,
}
# Job ids as SLURM writes them: 123, 123_4 (array task), 123+1 (heterogeneous component).
_JOB_ID = re.compile(r"\d+(?:_\d+)?(?:\+\d+)?")
_SQUEUE_CHUNK = 500  # ids per squeue call (command lines stay short)


def slurm_state_of(state: str) -> Status | None:
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
        return Status.QUEUED
    return Status.UNKNOWN


def slurm_job_states(job_ids) -> dict[str, str] | None:
    """SLURM states of the given job ids.

    {job id: SLURM state} of the given job ids that SLURM still knows, WHOEVER submitted them;
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


def _slurm_state(record: dict, squeue: dict[str, str]) -> Status | None:
    st = squeue.get(str(record.get("job_id")))
    return None if st is None else slurm_state_of(st)


def _local_state(record: dict) -> Status | None:
    if record.get("host") and record["host"] != os.uname().nodename:
        return Status.RUNNING  # launched from another machine: we cannot see it, so never relaunch it
    if _pid_alive(record.get("job_pid"), "submitit") or _pid_alive(record.get("trainer_pid"), "sweeps.run_one"):
        return Status.RUNNING
    if not record.get("job_pid") and _pid_alive(record.get("launcher_pid"), "python"):
        return Status.QUEUED  # waiting for a free slot in a live `sweep launch --executor local`
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
        if result is not None and result.finished:
            out[rid] = RunState(rid, result.status, job_id, executor, result)
            continue
        active = None
        if record is not None:
            if executor == "slurm":
                if not asked_slurm:
                    squeue = slurm_job_states(r["job_id"] for r in records.values() if r and r.get("executor") == "slurm")
                    asked_slurm = True
                # Without an answer from SLURM the job may still be alive: never resubmit it blindly.
                active = Status.UNKNOWN if squeue is None else _slurm_state(record, squeue)
            else:
                active = _local_state(record)
        if active is None and run_dir_busy(run_dir):
            # a trainer holds the run dir although no job we can see runs it (another user's
            # private jobs, another machine, a job wrapper gone before its trainer): never twice
            active = Status.RUNNING
        if active is not None:
            state = active
        elif (run_dir / "checkpoint").exists() or (run_dir / "checkpoint.prev").exists():  # .prev: killed mid-swap
            state = Status.INTERRUPTED
        elif record is not None:
            state = Status.LOST
        else:
            state = Status.PLANNED if rid in planned_ids else Status.UNPLANNED
        out[rid] = RunState(rid, state, job_id, executor, result)
    return out
