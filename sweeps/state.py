"""The state of each run of a sweep, from files and from the scheduler.

    completed | failed | diverged   runs/<id>/result.json says so (the trainer, or the job wrapper
                                    when the trainer died, wrote it)
    queued | running                jobs/<id>.json names a job that SLURM (squeue) or this machine
                                    (a live local process) still has
    interrupted                     the job is gone, runs/<id>/checkpoint/ exists: resumable
    lost                            the job is gone and nothing was saved (cancelled before start,
                                    killed without checkpoint): launch starts it again
    unknown                         a SLURM job that cannot be checked here (no squeue, controller
                                    down): never resubmitted until SLURM answers
    planned                         never launched
    unplanned                       a run dir under runs/ that the current plan does not list
"""

from __future__ import annotations

import getpass
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import read_json

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


def slurm_job_states() -> dict[str, str] | None:
    """{job id: SLURM state} of this user's jobs still known to SLURM (array tasks one by one);
    None when SLURM cannot be asked (no `squeue` here, controller down).

    Pending array tasks appear as '<array>_<task>' thanks to `squeue -r`.
    """
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-u", getpass.getuser()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    states = {}
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
    if st is None:
        return None
    if st in ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"):
        return "running"
    if st in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "CONFIGURING", "SIGNALING"):
        return "queued"
    return None  # COMPLETED, FAILED, CANCELLED, TIMEOUT, ... (the job is over)


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
                    squeue, asked_slurm = slurm_job_states(), True
                # Without an answer from SLURM the job may still be alive: never resubmit it blindly.
                active = "unknown" if squeue is None else _slurm_state(record, squeue)
            else:
                active = _local_state(record)
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
