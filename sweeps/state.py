"""The state of each run of a sweep, from files and from the scheduler.

States, and where each comes from:
    completed | failed | diverged   runs/<id>/result.json says so (the trainer, or the job wrapper
                                    when the trainer died, wrote it)
    failed                          also: result.json is damaged (unreadable, wrongly typed) or
                                    belongs to another run (its shape, tokens, seed or tokenizer
                                    differ from the plan row: copied from another run or sweep);
                                    the reason names the file and the field. Never used as the
                                    run's result; `launch --retry-failed` moves it aside and the
                                    run resumes from its checkpoint
    queued | running                jobs/<id>.json names a job that SLURM or this machine (a live
                                    local process) still has; SLURM is asked about the recorded job
                                    ids, whoever submitted them (`squeue -j`), and a held job
                                    (any *_HOLD, SPECIAL_EXIT, pending for any reason) is queued
    interrupted                     the job is gone, runs/<id>/checkpoint/ exists: resumable
    running                         also: no visible job, but a trainer holds the run dir's lock
                                    (ehrfm.run_lock), e.g. a teammate's job SLURM hides from us
    lost                            the job is gone and nothing was saved (cancelled before start,
                                    killed without checkpoint): launch starts it again
                                    (lost and interrupted SLURM runs say why their job ended: squeue's
                                    end state while SLURM lists it, and the job's own submitit log,
                                    which outlives MinJobAge and needs no sacct: scancel, time
                                    limit, oom-kill, node failure, the exception a job raised (a
                                    job pickle of another version); any run whose job was submitted
                                    from another sweep dir path, moved since, names it; a record
                                    without a job id says its launcher died mid-submit)
    unknown                         a SLURM job that cannot be checked here (no squeue, controller
                                    down) or in a state this module does not know (SLURM_STATES),
                                    or a damaged jobs/<id>.json (the job it named may be alive):
                                    never resubmitted until SLURM answers with a known state (or
                                    the damaged record is deleted)
    planned                         never launched
    unplanned                       a run dir under runs/ that the current plan does not list, whatever
                                    its result.json says (never fitted or scored)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import one_line, read_json, temporary_parts
from ehrfm.results import ACTIVE, RunResult, Status
from ehrfm.results import read_result as _read_result
from ehrfm.run_lock import flock, run_dir_busy

_RESULT_HINT = ("relaunch the sweep with --retry-failed (or delete it and relaunch): the run resumes from its checkpoint "
                "and writes it again")
_RECORD_HINT = "if no job of this run is alive (squeue), delete the file and relaunch"
# result.json fields that must equal the plan row's (a result of another run or sweep differs in one)
_IDENTITY_FIELDS = ("n_layer", "d_model", "n_head", "context", "tokens", "seed")


@dataclass
class RunState:
    """One run's state (see the module docstring), its job and, when finished, its result."""
    run_id: str
    state: Status
    job_id: str | None = None
    executor: str | None = None
    result: RunResult | None = None
    note: str | None = None  # why: a damaged or foreign file, SLURM's end state or pending reason, SLURM not answering
    bad_file: bool = False  # the note is about a damaged or foreign file of the sweep dir


def saved_checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's saved checkpoints, newest first: RUN/checkpoint and RUN/checkpoint.prev where they exist.

    The layout is ehrfm.checkpoint's (not imported here: `sweep status` runs without torch); a kill in
    the middle of a checkpoint swap leaves only checkpoint.prev, which the trainer promotes when it resumes.
    """
    return [d for d in (run_dir / "checkpoint", run_dir / "checkpoint.prev") if d.exists()]


def runs_dir(sweep_dir: Path) -> Path:
    """SWEEP/runs: the run dirs of a sweep."""
    return Path(sweep_dir) / "runs"


def record_path(sweep_dir: Path, run_id: str) -> Path:
    """SWEEP/jobs/<run_id>.json: the launcher's record of a run's job."""
    return Path(sweep_dir) / "jobs" / f"{run_id}.json"


@contextlib.contextmanager
def record_lock(path: str | Path) -> Iterator[None]:
    """Hold SWEEP/jobs/<run_id>.lock while a job record is read, changed and written back.

    The launcher (job id, pid) and the job itself (start, pid, trainer pid) both update one record;
    a read-modify-write of one interleaved with the other's dropped the other's fields (a launcher
    descheduled between its read and its write lost the job's trainer_pid). The record is replaced
    by rename (ehrfm.io.write_json), so the lock is a sibling file, not the record. flock is
    advisory: it serialises the two writers on one host and over NFSv4 (which emulates it with POSIX
    locks); a filesystem whose flock is node-local (Lustre `localflock`) serialises only writers on
    one node. Where the filesystem refuses flock (ENOLCK, ENOSYS: ehrfm.run_lock.flock) this fails in one line naming
    the lock file, as the trainer's own run lock does.
    """
    lock = Path(path).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a", encoding="utf-8") as f:
        flock(f, fcntl.LOCK_EX, lock)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
        return read_json(path, "job record", expect=dict, hint=_RECORD_HINT)
    except (UserError, OSError):
        if damaged_ok:
            return None
        raise


def check_tokens_dir(tokens_dir: str, sweep_dir: Path) -> None:
    """Refuse, with what to do, a sweep whose token dir (sweep.json tokens_dir) is gone: moved or deleted since planning.

    Raises:
        UserError: tokens_dir/tokenizer.json does not exist.
    """
    if not (Path(tokens_dir) / "tokenizer.json").is_file():
        raise UserError(
            f"{Path(sweep_dir) / 'sweep.json'}: tokens_dir {tokens_dir} is not a token dir any more (moved or deleted since "
            "planning?); if it moved, plan the same sweep again with the new path (`ehrfm sweep plan --tokens NEW_PATH "
            f"--out {sweep_dir}` and the same options: the runs keep their ids and results)"
        )


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

    Asks `squeue -h -r -t all -j ID,... -o %i|%T|%r` (never `-u $USER`: a teammate relaunching a
    shared sweep must see the jobs others submitted; `-t all`: a job that ended lately is listed
    with its end state, e.g. OUT_OF_MEMORY, for MinJobAge). A job id SLURM no longer knows is absent.
    """
    jobs = _squeue(job_ids)
    return None if jobs is None else {jid: st for jid, (st, _) in jobs.items()}


# squeue's state for a job id that now names a job of another command than this sweep's (see _squeue)
_OTHER_JOB = "OTHER_JOB"


# Why the last _squeue call returned None (shown in the notes of runs that are `unknown` for it).
_squeue_failure = "SLURM not asked"


def _squeue(job_ids, submitted_from: dict[str, str] | None = None) -> dict[str, tuple[str, str]] | None:
    """{job id: (SLURM state, reason)} of slurm_job_states; None when SLURM cannot be asked.

    With submitted_from ({job id: the sweep dir its record says it was submitted from}), a job whose
    batch script (squeue %o) is not that sweep dir's submitit script is (_OTHER_JOB, its script): the id
    names someone else's job now (a sweep dir copied from another cluster, SLURM's ids started again),
    and must not keep the run `queued` or `running` forever.
    """
    global _squeue_failure
    if shutil.which("squeue") is None:
        _squeue_failure = "no `squeue` on PATH"
        return None
    asked = {str(j) for j in job_ids if j is not None and _JOB_ID.fullmatch(str(j))}
    # Array tasks cancelled together while pending are listed as their array's id alone ("12", not
    # "12_3"): ask for the array ids too, to read those tasks' end from it.
    ids = sorted(asked | {j.split("_")[0] for j in asked if "_" in j})
    states: dict[str, tuple[str, str]] = {}
    for i in range(0, len(ids), _SQUEUE_CHUNK):
        chunk = ids[i:i + _SQUEUE_CHUNK]
        cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%o", "-j", ",".join(chunk)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, encoding="utf-8", errors="replace")
        except subprocess.TimeoutExpired:
            _squeue_failure = "`squeue` did not answer in 60 s"
            return None
        except OSError as e:
            _squeue_failure = f"`squeue` could not be started ({e.strerror or e})"
            return None
        if proc.returncode != 0:
            # squeue -j with ids that are all gone from the controller: "Invalid job id specified"
            if "invalid job id" in proc.stderr.lower():
                continue
            # its own words say what to fix ("Unable to contact slurm controller (connect failure)",
            # a munge credential error): keep its first line (SLURM's text, never patient data)
            said = next((ln.strip() for ln in proc.stderr.splitlines() if ln.strip()), "")
            _squeue_failure = f"`squeue` exited {proc.returncode}" + (f": {one_line(said, 300)}" if said else "")
            return None
        for line in proc.stdout.splitlines():
            jid, st, reason, script = (line.strip().split("|", 3) + ["", "", ""])[:4]
            ours = (submitted_from or {}).get(jid)
            if ours and script.startswith("/") and not script.startswith(f"{ours}/submitit/"):
                states[jid] = (_OTHER_JOB, script)  # ("(null)" for --wrap jobs: not known, so trusted)
            elif jid:
                states[jid] = (st, reason.strip())
    for jid in asked - set(states):
        array = states.get(jid.split("_")[0])
        if "_" in jid and array is not None and slurm_state_of(array[0]) is None:  # the array record says the task ended
            states[jid] = array
    return states


# SLURM end states that say why a run's job is gone without result.json (its wrapper was killed
# with it): shown as the reason of a lost or interrupted run. COMPLETED says nothing more.
_ENDED_WHY = ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY")


# Lines of a job's own output that say why it ended: slurmstepd's "*** JOB 12 ON node CANCELLED AT
# <time> [DUE TO TIME LIMIT|NODE FAILURE|PREEMPTION] ***" (no "DUE TO": scancel) or "... STEPD
# TERMINATED ...", its cgroup's "Detected 1 oom-kill event(s) in StepId=12.batch ..." (22.05;
# "oom_kill event" later), and submitit's "Job not requeued because: timed-out too many times."
# (--max-timeouts spent). A requeue's "DUE TO JOB REQUEUE" is not an end: the job ran again.
_LOG_END = re.compile(r"\*\*\* JOB \d+ (?!.*DUE TO JOB REQUEUE).*(CANCELLED|TERMINATED).*\*\*\*|.*oom[_-]kill.*|.*out of memory.*"
                      r"|Job not requeued because: .*", re.I)
_LOG_TAIL_BYTES = 65536
# submitit's line when the job raised before or around the trainer (a job pickle of another ehrfm or
# submitit version after a requeue: "ModuleNotFoundError: ...", "AttributeError: Can't get attribute
# ..."), and the traceback's last line that says what was raised
_LOG_RAISED = "Submitted job triggered an exception"
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?")


def _log_reason(sweep_dir: Path, job_id: str) -> str | None:
    """The last line of a SLURM job's submitit log (SWEEP/submitit/<job id>/) that says why it ended, with its path; None if none.

    SLURM forgets an ended job after MinJobAge (squeue no longer lists it) and `sacct` may not be
    there (no accounting, a login node without it): the job's own output still says why it ended.
    """
    from submitit.core.utils import JobPaths

    paths = JobPaths(Path(sweep_dir) / "submitit" / "%j", job_id=job_id, task_id=0)
    found = None
    for path in (paths.stdout, paths.stderr):  # one file with stderr_to_stdout; both looked at anyway
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        raised = False
        for line in text.splitlines():
            m = _LOG_END.search(line)
            if m:
                said = re.sub(r"^slurmstepd\S*: (error: )?", "", m.group(0).strip())[:300]
                found = f"{said} ({path})"
            elif _LOG_RAISED in line:
                raised = True  # SLURM says only "FAILED (NonZeroExitCode)", and after MinJobAge nothing
            elif raised and _EXCEPTION_LINE.fullmatch(line.strip()):
                raised, found = False, f"the job raised {line.strip()[:300]} ({path})"
    return found


def _ended_note(sweep_dir: Path, record: dict, squeue: dict[str, tuple[str, str]] | None, state: Status) -> str | None:
    """Why a SLURM job ended without result.json, e.g. 'SLURM job 12_3 ended OUT_OF_MEMORY (reason)'; None when nothing says.

    From squeue while SLURM still lists the job over for a reason, and from the job's own log
    (_log_reason) also after SLURM forgot it, or when its state alone (FAILED) hides the cause.
    """
    if not record.get("job_id"):
        # the launcher was killed (SIGKILL, a node reboot) between sbatch and its record: a job may
        # be queued for this run although none is on record (a second job for the run finds the run
        # dir locked, exits "busy", or finds it finished: it never trains the run twice)
        name = Path(record.get("sweep_dir") or sweep_dir).name
        return f"its launch stopped before it recorded a job id: sbatch may have queued one anyway (`squeue --name ehrfm-{name}`); a relaunch starts it again"
    jid = str(record.get("job_id"))
    st, reason = (squeue or {}).get(jid, ("", ""))
    if st == _OTHER_JOB:
        return (f"SLURM job {jid} is now another job ({reason}), not this run's (a record from another cluster, or "
                "SLURM's job ids started again); a relaunch starts it again")
    base = st.strip().upper().split(" ")[0].rstrip("+")
    logged = _log_reason(sweep_dir, jid)
    if base not in _ENDED_WHY and logged is None:
        return None
    # a pending reason left on a job cancelled while it waited (JobArrayTaskLimit) says nothing of its end
    why = f" ({reason})" if reason.strip().lower() not in _ORDINARY_WAITS else ""
    ended = f"ended {base}{why}" if base in _ENDED_WHY else "ended"
    said = f"; its log says: {logged}" if logged else ""
    again = "resumes it from its checkpoint" if state == Status.INTERRUPTED else "starts it again"
    return f"SLURM job {jid} {ended} without a result.json{said}; a relaunch {again}"


# Pending reasons that pass by themselves (the queue moves, a begin time, an array throttle, a
# dependency); any other (PartitionConfig, BadConstraints, InvalidAccount, JobHeldUser, a launch
# failure's hold, ReqNodeNotAvail, ...) may keep the job waiting forever, so status shows it.
_ORDINARY_WAITS = ("", "none", "(null)", "resources", "priority", "begintime", "dependency", "jobarraytasklimit")


def _waiting_note(record: dict, squeue: dict[str, tuple[str, str]] | None) -> str | None:
    """'SLURM job 12_3 waits: PartitionConfig' for a queued job whose pending reason does not pass by itself, else None."""
    jid = str(record.get("job_id"))
    _, reason = (squeue or {}).get(jid, ("", ""))
    if reason.strip().lower() in _ORDINARY_WAITS:
        return None
    return f"SLURM job {jid} waits: {reason.strip()} (`scontrol show job {jid}` says more; it may never start as submitted)"


def _moved_note(record: dict | None, sweep_dir: Path) -> str | None:
    """Say so when the sweep dir moved after this run's job was submitted (its job uses the old paths), else None."""
    submitted_in = (record or {}).get("sweep_dir")
    if not submitted_in or Path(submitted_in) == Path(sweep_dir).resolve():
        return None
    # moved or renamed since (or seen under another mount path): a queued job fails to start, a running one writes there
    return f"its job was submitted from {submitted_in}, not {Path(sweep_dir).resolve()}: it reads and writes there"


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
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8", errors="replace") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # a zombie has exited
        if needle is not None:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                return needle.encode() in f.read()  # a reused pid is not our process
    except OSError:
        return True
    return True


def _slurm_state(record: dict, squeue: dict[str, tuple[str, str]]) -> Status | None:
    st = squeue.get(str(record.get("job_id")))
    return None if st is None or st[0] == _OTHER_JOB else slurm_state_of(st[0])


def _local_lost_note(record: dict) -> str:
    """Why a local run with a job record but no process, result or checkpoint is lost, and what a relaunch does.

    A `sweep launch` killed hard (SIGKILL, a closed terminal's session) left the runs it had queued
    recorded but never started, shown "lost" without a word (a SIGTERM'd launch sets them back to planned).
    """
    if not record.get("job_pid") and not record.get("trainer_pid"):
        who = f" (pid {record['launcher_pid']})" if record.get("launcher_pid") else ""
        return (f"queued by a `sweep launch`{who} that ended before starting it (killed?); "
                "`ehrfm sweep launch` trains it")
    return ("its job ended with no result and no checkpoint (killed before its first checkpoint?); "
            "`ehrfm sweep launch` trains it from step 0")


def _local_interrupted_note(run_dir: Path) -> str:
    """Why a run with a checkpoint but no result and no live job is interrupted, and what a relaunch does.

    Its trainer stopped after a checkpoint (a SIGTERM or Ctrl-C from anyone: its launch's, a `kill`,
    a shutdown) or was killed hard after one; the launch said only "interrupted: no reason recorded".
    """
    step = None
    for saved in saved_checkpoint_dirs(run_dir):
        with contextlib.suppress(UserError, OSError):
            state = read_json(saved / "state.json", "checkpoint state", expect=dict)
            step = state.get("step") if isinstance(state.get("step"), int) else None
            break
    at = f" at step {step}" if step is not None else ""
    return (f"its trainer ended without a result, after its last checkpoint{at} (stopped by a signal: a `kill`, "
            f"Ctrl-C, a shutdown?); `ehrfm sweep launch` resumes it from that checkpoint")


def _local_state(record: dict, run_dir: Path) -> Status | None:
    """RUNNING or QUEUED for a local job alive by its record's pids; None when none is.

    UNKNOWN for a job launched on another host whose trainer holds no lock on the run dir. On None the caller
    reads the run's result: interrupted, lost or finished.
    """
    if record.get("host") and record["host"] != os.uname().nodename:
        # Launched from another hostname: its pids mean nothing here. A trainer there holds the run dir's lock
        # (flock, seen across NFSv4 clients); a run queued there (or a trainer still reading its data) holds
        # none, so without the lock the run is unknown, never relaunched on a guess: the note says how to
        # release it when that host is gone (a restarted container gets a new hostname; it said "running" for ever).
        return Status.RUNNING if run_dir_busy(run_dir) else Status.UNKNOWN
    if _pid_alive(record.get("job_pid"), "submitit") or _pid_alive(record.get("trainer_pid"), "sweeps.run_one"):
        return Status.RUNNING
    if not record.get("job_pid") and _pid_alive(record.get("launcher_pid"), "python"):
        return Status.QUEUED  # waiting for a free slot in a live `sweep launch --executor local`
    return None


def _foreign(result: RunResult, row: dict | None, fingerprint: str | None) -> list[str]:
    """The identity fields where a finished result.json differs from its plan row ([] when it is the run's own).

    A completed result must also carry each of them (ehrfm.train writes them all): one without its
    tokenizer fingerprint (another tokenizer's run, the key deleted) or a bare {"status":
    "completed", "val_loss": 0.1} was taken as the run's own, its loss fitted beside the plan's N and D.
    """
    diffs = []
    completed = result.status == Status.COMPLETED

    def absent(v) -> bool:
        # RunResult reads a field left out of the file as None, as it does null; a list or an object is no value either
        return not isinstance(v, str | int | float)

    if row:
        for k in _IDENTITY_FIELDS:
            have, want = getattr(result, k), row.get(k)
            if not absent(have) and want is not None and have != want:
                diffs.append(f"{k} {have} (planned {want})")
            elif completed and absent(have) and want is not None:
                diffs.append(f"no {k} (planned {want})")
    have = result.tokenizer_fingerprint
    if fingerprint and not absent(have) and have != fingerprint:
        diffs.append(f"tokenizer_fingerprint {str(have)[:12]} (planned {fingerprint[:12]})")
    elif fingerprint and completed and row and absent(have):
        diffs.append(f"no tokenizer_fingerprint (planned {fingerprint[:12]})")
    return diffs


CONFIG_UNCHECKED = "what it trained cannot be checked against its plan without its config.json"


def _recipe_differences(run_dir: Path, sweep, row: dict) -> list[str]:
    """Where a completed run's config.json (what its trainer ran) differs from its plan: [] when it is the run's own.

    Compared: every TrainConfig field that decides what the run computes (ehrfm.config's IDENTITY role,
    as its run id hashes them: lr, batch size, eval tokens, schedule, ...) with the plan's
    (`run_train_config`), and the data it trained and evaluated on ("data": counts and sha256 of train
    and tuning) with sweep.json's. result.json carries the shape, tokens and seed only (`_foreign`): a run
    retrained by hand with another lr and eval sample, or a token dir re-tokenized in place while a
    launch ran (runs on two datasets), was collected as the sweep's own. A config.json missing or
    unreadable is a difference of its own (CONFIG_UNCHECKED): without it, another run's result copied
    in (lr 3e-2 for 1e-3) was collected as the sweep's, exit 0. A key an older ehrfm did not write is not compared.
    """
    from ehrfm.tokens import data_differences
    from sweeps.plan import identity_settings, run_train_config

    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{CONFIG_UNCHECKED}: it is missing"]
    except (OSError, ValueError, UnicodeDecodeError):
        return [f"{CONFIG_UNCHECKED}: it cannot be read as JSON (cut short or damaged)"]
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        return [f"{CONFIG_UNCHECKED}: it holds no run config (no 'train' object)"]
    diffs = []
    train = saved.get("train")
    if isinstance(train, dict):
        try:
            want = identity_settings(run_train_config(sweep, row, run_dir).to_dict())
        except (TypeError, ValueError, UserError):  # a sweep.json train the plan cannot make a run of: launch says so
            want = {}
        for k, v in want.items():
            if k not in train:
                continue
            have = train[k]
            same = (math.isclose(have, v, rel_tol=1e-9) if isinstance(have, (int, float)) and isinstance(v, (int, float))
                    and not isinstance(have, bool) and not isinstance(v, bool) else have == v)
            if not same:
                diffs.append(f"{k} {have!r} (planned {v!r})")
    if sweep.data and isinstance(saved.get("data"), dict):
        diffs += [f"data {d}" for d in data_differences(saved["data"], sweep.data)]
    return diffs


def _plan_of(sweep_dir: Path):
    """({run id: plan row}, tokenizer fingerprint, SweepConfig) of a planned sweep dir; ({}, None, None) without one."""
    from sweeps.plan import load_sweep

    try:
        sweep, rows = load_sweep(sweep_dir)
    except UserError:
        return {}, None, None
    return {r["run_id"]: r for r in rows}, sweep.tokenizer_fingerprint, sweep


def _finished_state(sweep_dir: Path, rid: str, result: RunResult, plan_row: dict | None, fingerprint: str | None,
                    job_id: str | None, executor: str | None, sweep=None, planned: bool = True) -> RunState:
    """The state of a run whose result.json is final: its own status, or failed when it is not the run's own.

    A run dir the plan does not list (`planned` False) is unplanned whatever its result says.

    Not its own: the result is another run's (`_foreign`) or, with `sweep`, a completed run trained with another
    recipe or data than planned (`_recipe_differences`).
    """
    run_dir = runs_dir(sweep_dir) / rid
    if not planned:
        # A run dir the plan does not list (copied in from another sweep, or left by an earlier plan): its result
        # was listed "completed" in results.parquet, where any reader fitting status == completed would take it.
        why = (f"run dir {run_dir} is not in {sweep_dir / 'plan.parquet'} (copied in, or left by an earlier plan); its "
               f"result.json says {result.status}: not this sweep's run, never fitted or scored")
        return RunState(rid, Status.UNPLANNED, job_id, executor, result, note=why)
    diffs = _foreign(result, plan_row, fingerprint)
    if diffs:
        why = (f"run result {run_dir / 'result.json'} is not this run's: {', '.join(diffs)} (copied from another "
               f"run or sweep?); {_RESULT_HINT}")
        return RunState(rid, Status.FAILED, job_id, executor, RunResult(Status.FAILED, error=why), note=why, bad_file=True)
    if sweep is not None and plan_row and result.status == Status.COMPLETED and (diffs := _recipe_differences(run_dir, sweep, plan_row)):
        shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        if any(d.startswith("data ") for d in diffs):  # the token dir is not the one planned: a relaunch is refused too
            todo = ("put back the token dir the sweep was planned on, or plan a new sweep on this one (another --out)")
        else:
            todo = (f"to train it as planned, remove {run_dir} and run `ehrfm sweep launch {sweep_dir}` again "
                    "(--retry-failed refuses a run dir that holds another run)")
        if diffs[0].startswith(CONFIG_UNCHECKED):
            why = f"run {run_dir}: {diffs[0]}; its loss may not be this sweep's run's; not collected; {todo}"
        else:
            why = (f"run {run_dir} trained other than planned ({shown}; its config.json): its loss is not this sweep's "
                   f"(retrained by hand, or the token dir changed while the sweep ran?); not collected; {todo}")
        return RunState(rid, Status.FAILED, job_id, executor, RunResult(Status.FAILED, error=why), note=why, bad_file=True)
    note = None
    if result.status == Status.FAILED and executor == "slurm" and job_id and (result.exit_code or 0) < 0:
        # "trainer killed by signal 9": the OOM killer's cgroup line reaches the job's log only
        # after the wrapper wrote result.json, and sacct may not be there to say OUT_OF_MEMORY
        logged = _log_reason(sweep_dir, job_id)
        note = f"{result.error}; its job's log says: {logged}" if logged else None
    return RunState(rid, result.status, job_id, executor, result, note=note)


def launch_in_progress(sweep_dir: str | Path) -> bool:
    """True when a `sweep launch` holds SWEEP/.launch.lock now (it is deciding or submitting).

    A SLURM launch writes each run's job record before its sbatch and the job id after it (a
    whole wave of a wsd sweep at a time); flock is seen across a cluster's nodes on NFSv4.
    """
    path = Path(sweep_dir) / ".launch.lock"
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError:
        return False
    with f:
        try:
            flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB, path)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def run_states(sweep_dir: str | Path, run_ids: list[str], plan: list[dict] | None = None,
               fingerprint: str | None = None, own_launch: bool = False, sweep=None) -> dict[str, RunState]:
    """State of each planned run, plus any run dir under runs/ that the plan does not list.

    Args:
        sweep_dir: the sweep dir.
        run_ids: the runs to report (the plan's, usually).
        plan: the sweep's plan rows, to check that each result.json is its run's own (default:
            read from the sweep dir, with its tokenizer fingerprint).
        fingerprint: the sweep's tokenizer fingerprint (with `plan`).
        sweep: the sweep's SweepConfig (with `plan`), to check each completed run's recipe and data against
            (`_recipe_differences`); read from the sweep dir without `plan`.
        own_launch: the caller is the launch holding SWEEP/.launch.lock (a SLURM record without a
            job id is then an earlier launch's, stopped before its sbatch, never one being submitted).

    A damaged or foreign result.json makes its run failed (RunState.note says why, naming the
    file and field), a damaged job record makes it unknown: one bad file never stops the others.
    """
    sweep_dir = Path(sweep_dir)
    if plan is None:
        by_plan, fingerprint, sweep = _plan_of(sweep_dir)
    else:
        by_plan = {r["run_id"]: r for r in plan}
    ids = list(run_ids)
    rdir = runs_dir(sweep_dir)
    if rdir.is_dir():
        planned = set(ids)
        ids += sorted(p.name for p in rdir.iterdir() if p.is_dir() and p.name not in planned
                      and temporary_parts(p.name) is None)
    records, record_notes = {}, {}
    for rid in ids:
        try:
            records[rid] = read_record(sweep_dir, rid)
        except (UserError, OSError) as e:
            records[rid], record_notes[rid] = None, str(e) if isinstance(e, UserError) else \
                f"job record {record_path(sweep_dir, rid)} cannot be read ({e.strerror or e}); {_RECORD_HINT}"
    squeue: dict[str, tuple[str, str]] | None = None
    asked_slurm = False
    submitting: bool | None = None  # launch_in_progress, asked once
    out: dict[str, RunState] = {}
    planned_ids = set(run_ids)
    for rid in ids:
        run_dir = rdir / rid
        record = records[rid]
        executor = record.get("executor") if record else None
        job_id = str(record["job_id"]) if record and record.get("job_id") else None
        try:
            result = read_result(run_dir)
        except UserError as e:  # damaged: reported as this run's failure, the other runs still read
            out[rid] = RunState(rid, Status.FAILED, job_id, executor, RunResult(Status.FAILED, error=str(e)), note=str(e), bad_file=True)
            continue
        except OSError as e:
            why = f"run result {run_dir / 'result.json'} cannot be read ({e.strerror or e}); {_RESULT_HINT}"
            out[rid] = RunState(rid, Status.FAILED, job_id, executor, RunResult(Status.FAILED, error=why), note=why, bad_file=True)
            continue
        if result is not None and result.finished:
            out[rid] = _finished_state(sweep_dir, rid, result, by_plan.get(rid), fingerprint, job_id, executor, sweep,
                                       planned=rid in by_plan if by_plan else rid in planned_ids)
            continue
        if rid in record_notes:  # the job it named may still be alive: never resubmitted on a guess
            out[rid] = RunState(rid, Status.UNKNOWN, None, None, result, note=record_notes[rid], bad_file=True)
            continue
        active = None
        if record is not None:
            if executor == "slurm" and not job_id and not own_launch and \
                    (submitting := launch_in_progress(sweep_dir) if submitting is None else submitting):
                # a live launch wrote this record and has not had sbatch's job id yet: not lost
                active = Status.QUEUED
            elif executor == "slurm":
                if not asked_slurm:
                    slurm = [r for r in records.values() if r and r.get("executor") == "slurm"]
                    squeue = _squeue([r["job_id"] for r in slurm],
                                     {str(r["job_id"]): r["sweep_dir"] for r in slurm if r.get("job_id") and r.get("sweep_dir")})
                    asked_slurm = True
                # Without an answer from SLURM the job may still be alive: never resubmit it blindly.
                active = Status.UNKNOWN if squeue is None else _slurm_state(record, squeue)
            else:
                active = _local_state(record, run_dir)
        if active is None and run_dir_busy(run_dir):
            # a trainer holds the run dir although no job we can see runs it (another user's
            # private jobs, another machine, a job wrapper gone before its trainer): never twice
            active = Status.RUNNING
        if active is None:
            # The job may have finished between the result.json read above and the question to squeue
            # (or the pid check): read it again before calling the run interrupted or lost. Without
            # this, a run that completed in that window was reported "interrupted" and a `launch --wait`
            # whose last run it was ended on that.
            with contextlib.suppress(UserError, OSError):  # damaged now: the first read stands, the next status says
                result = read_result(run_dir) or result
            if result is not None and result.finished:
                out[rid] = _finished_state(sweep_dir, rid, result, by_plan.get(rid), fingerprint, job_id, executor, sweep,
                                       planned=rid in by_plan if by_plan else rid in planned_ids)
                continue
        note = None
        if active is not None:
            state = active
        elif saved_checkpoint_dirs(run_dir):
            state = Status.INTERRUPTED
        elif record is not None:
            state = Status.LOST
        else:
            state = Status.PLANNED if rid in planned_ids else Status.UNPLANNED
        if state in (Status.INTERRUPTED, Status.LOST) and executor == "slurm":
            note = _ended_note(sweep_dir, record, squeue, state)  # e.g. killed with its wrapper by the OOM killer or scancel
        elif state == Status.LOST:
            note = _local_lost_note(record)
        elif state == Status.INTERRUPTED:
            note = _local_interrupted_note(run_dir)
        elif state == Status.UNKNOWN and executor == "local":
            note = (f"launched by `ehrfm sweep launch` on host {record.get('host')}, not this one "
                    f"({os.uname().nodename}), and no trainer holds its run dir: queued there, or that host is gone (a "
                    f"restarted container has a new hostname); if it is gone, delete {record_path(sweep_dir, rid)} and "
                    "relaunch (an interrupted run resumes from its checkpoint)")
        elif state == Status.UNKNOWN and executor == "slurm" and squeue is None:
            note = f"SLURM could not be asked about job {job_id} ({_squeue_failure}): never resubmitted until it answers"
        elif state == Status.QUEUED and executor == "slurm" and not job_id:
            note = f"being submitted by a running `ehrfm sweep launch` (it holds {sweep_dir / '.launch.lock'})"
        elif state == Status.QUEUED and executor == "slurm":
            note = _waiting_note(record, squeue)  # e.g. more CPUs than any node has: pending forever
        moved = _moved_note(record, sweep_dir) if state in (*ACTIVE, Status.INTERRUPTED, Status.LOST) else None
        if moved:
            note = f"{note}; {moved}" if note else moved
        out[rid] = RunState(rid, state, job_id, executor, result, note=note)
    return out
