"""Launch a planned sweep through submitit: a SLURM job array, or local processes on this machine.

Relaunching is always safe: each run's state (sweeps/state.py) decides whether it is submitted.
    completed, diverged        never again
    failed                     only with retry_failed (the old result.json is archived first)
    queued, running            never twice
    planned, lost, interrupted submitted; an interrupted run resumes from its checkpoint

SLURM: one array job per launch (`--max-parallel` is the array throttle `%N`), `--requeue`, and
submitit's `--signal=USR2@signal_delay_s`, so a job nearing its time limit checkpoints and requeues
itself (up to max_timeouts times); a job killed by `scontrol requeue` or preemption resumes from
its checkpoint when SLURM restarts it. Multi-GPU jobs run one task per GPU (`tasks_per_node`
defaults to `gpus_per_node`), each task one trainer rank of a torch DDP group (gloo on CPU).
Local: submitit's LocalExecutor, at most `max_parallel` jobs at a time with `cores / max_parallel`
threads each (at most the launcher's $OMP_NUM_THREADS when set, unless --cpus-per-task says
otherwise: a user who limited the threads keeps that limit); the call blocks until every launched
run has finished (Ctrl-C checkpoints them).

Ctrl-C, SIGTERM or SIGHUP while sbatch submits wait until every submitted job is on record, then
stop the launch (exit 130/143): a relaunch submits only what is missing. Runs a stopped or refused
launch did not submit are as before it (a failed one keeps its result.json, moved back).

WSD sweeps (sweeps/plan.py): a branch starts only after its trunk has ended. On SLURM the trunks
are submitted first and each trunk's branches as a job array with `--dependency=afterany:<trunk
job>` (a requeued trunk keeps its dependants waiting); locally a branch waits for a free slot
and its trunk. A branch whose trunk failed or diverged before its branch point is refused by
the trainer, and its job records it failed with the trainer's reason (the trunk's error). A branch
whose trunk is running under another launch is not submitted ("waiting for trunk"). A branch refused
only because its trunk was not there yet (trunk cancelled, lost, preempted) is launched again with
its trunk, or once the trunk completed, without --retry-failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ehrfm.errors import Terminated, UserError
from ehrfm.io import progress, sigint_blocked, summary, warn, write_json
from ehrfm.results import ACTIVE, RunResult, Status, write_result
from sweeps.job import TrainJob
from sweeps.plan import check_plan_rows, check_tokenizer, load_sweep, run_train_config
from sweeps.state import (
    check_tokens_dir,
    log_path,
    read_record_file,
    read_result,
    record_lock,
    record_path,
    run_states,
    runs_dir,
    saved_checkpoint_dirs,
)

EXECUTORS = ("slurm", "local")
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "scontrol")


# Run states that `launch` submits (failed ones only with retry_failed).
_LAUNCHED = (Status.PLANNED, Status.LOST, Status.INTERRUPTED)
# A job may still run: active, or "unknown" (SLURM did not answer this time), waited on like one.
_BUSY = (*ACTIVE, Status.UNKNOWN)
# The trainer's exit code when it refused its config before training (UserError; sweeps/run_one.py)
_EXIT_REFUSED = 2
# A job process that dies at start-up, before it starts the trainer and without a traceback (a signal
# before any handler: SIGSEGV in a library, a broken interpreter), leaves its run `lost` and a plain
# relaunch submits it again: at most this many times in a row, then the run is recorded failed, saying so.
STARTUP_CRASHES_MAX = 3


@dataclass
class LaunchConfig:
    """How to run a sweep's jobs; saved as SWEEP/launch.json (and appended to launches.jsonl).

    Each field's docstring is its `ehrfm sweep launch` help.
    """

    executor: str = "local"
    """slurm: a submitit job array; local: processes on this machine."""
    partition: str | None = None
    """SLURM partition."""
    account: str | None = None
    """SLURM account."""
    qos: str | None = None
    """SLURM quality of service."""
    time: str = "24:00:00"
    """Time limit per job: minutes, HH:MM:SS or D-HH:MM:SS; jobs checkpoint and requeue at the limit."""
    cpus_per_task: int | None = None
    """CPUs per task, also the trainer's threads."""
    mem: str | None = None
    """Memory per node, as sbatch --mem: 16G, 4000M."""
    gpus_per_node: int = 0
    """GPUs per job (per node); a multi-GPU job runs one DDP task per GPU."""
    tasks_per_node: int | None = None
    """DDP ranks per node (default: one per GPU; on CPU, N gloo ranks)."""
    nodes: int = 1
    """Nodes per job (multi-node DDP)."""
    max_parallel: int | None = None
    """Jobs running at once (SLURM array throttle; local default: cores / cpus-per-task)."""
    constraint: str | None = None
    """SLURM node features (--constraint)."""
    exclude: str | None = None
    """SLURM nodes to avoid (--exclude)."""
    signal_delay_s: int = 120
    """Seconds before the time limit when jobs are told (USR2) to checkpoint."""
    max_timeouts: int = 5
    """Requeues after reaching the time limit (preemptions do not count)."""
    slurm_args: dict = field(default_factory=dict)
    """Any other sbatch option (repeatable KEY=VALUE), e.g. mail-type=END."""
    setup: list = field(default_factory=list)
    """Shell line run before each job (repeatable), e.g. 'module load cuda'."""
    retry_failed: bool = False
    """Also resubmit runs that failed."""
    wait: bool = False
    """SLURM: wait until the submitted runs finish (local always waits)."""
    dry_run: bool = False
    """List the runs that would be submitted, submit nothing."""
    logger: str | None = field(default=None, metadata={"choices": ("none", "tensorboard", "wandb")})
    """Every run also logs its metrics there (TensorBoard event files beside metrics.jsonl; W&B offline, run
    name = run id, group = the sweep); default: $EHRFM_LOGGER, else none (none: no logger, whatever
    $EHRFM_LOGGER says)."""
    poll_s: float = 5.0
    """Seconds between checks of the running jobs."""


@dataclass
class LaunchReport:
    """What a launch did: runs submitted, their job ids, and the runs skipped per state."""
    submitted: list[str]
    job_ids: dict[str, str]
    skipped: dict[str, list[str]]  # state -> run ids not submitted
    final_states: dict[str, str] = field(default_factory=dict)  # after waiting
    archived: dict[str, str] = field(default_factory=dict)  # failed result.json moved aside for a retry: run id -> jobs/<id>.failed-N.json
    # each run's job record as it was before this launch replaced it ({} if none): an undone launch puts it back
    previous_records: dict[str, dict] = field(default_factory=dict)

    def reason(self) -> str:
        """The skipped runs as text, e.g. "3 completed, 1 failed (pass --retry-failed ...)", or "none"."""
        parts = [f"{len(v)} {k}" for k, v in sorted(self.skipped.items()) if v]
        text = ", ".join(parts) if parts else "none"
        if self.skipped.get(Status.FAILED):
            text += " (pass --retry-failed to resubmit failed runs)"
        return text


def parse_time_minutes(text: str) -> int:
    """sbatch-style time ('90', '1:30:00', '2-00:00:00', '45:00') -> whole minutes (>= 1)."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise UserError(f"--time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is None and b is None:  # plain minutes
        minutes = int(a)
    elif c is not None:  # [D-]HH:MM:SS
        minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    elif days is not None:  # D-HH or D-HH:MM
        minutes = int(a) * 60 + int(b or 0)
    else:  # MM:SS
        minutes = int(a) + (1 if int(b) else 0)
    minutes += int(days or 0) * 24 * 60
    if minutes < 1:
        raise UserError(f"--time {text!r} is shorter than a minute")
    return minutes


def check_signal_delay(signal_delay_s: int, time_min: int, time_text: str) -> None:
    """Refuse a checkpoint signal that would come at or before a job's start.

    USR2 goes to a job `signal_delay_s` seconds before its time limit: at or above the limit it
    arrives as the job starts, so every attempt checkpoints and requeues itself without training
    (until --max-timeouts is spent).

    Raises:
        UserError: signal_delay_s is negative, or not shorter than the time limit.
    """
    if signal_delay_s < 0:
        raise UserError(f"--signal-delay-s {signal_delay_s}: expected seconds >= 0")
    if signal_delay_s >= time_min * 60:
        raise UserError(
            f"--signal-delay-s {signal_delay_s} is not shorter than --time {time_text} ({time_min * 60} s): every job "
            "would be told to checkpoint and requeue as it starts, never training; give a longer --time or a smaller --signal-delay-s"
        )


def check_executor(executor: str) -> None:
    """Refuse an unknown executor, or "slurm" where the SLURM commands are not on PATH.

    Raises:
        UserError: the executor is not one of EXECUTORS, or sbatch, srun, squeue or scontrol is missing.
    """
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if executor == "slurm":
        missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
        if missing:
            raise UserError(
                f"--executor slurm: SLURM command(s) {', '.join(missing)} not found on PATH; run on a SLURM "
                "login node, start a local cluster (scripts/slurm-local.sh up) or use --executor local"
            )


def launch_sweep(sweep_dir: str | Path, cfg: LaunchConfig) -> LaunchReport:
    """Submit every run of the sweep that needs to run (see the module docstring).

    Args:
        sweep_dir: a planned sweep dir.
        cfg: the executor ("slurm" or "local") and its resources, retry and wait options.

    Returns:
        LaunchReport: the runs submitted, their job ids, the runs skipped per state and, after
        waiting (local runs, or SLURM with cfg.wait), their final states.

    Raises:
        UserError: a bad executor, resources or --time, a bad sweep dir, or a token dir whose
            tokenizer changed since planning.
    """
    sweep_dir = Path(sweep_dir).resolve()
    check_executor(cfg.executor)
    sweep, plan = load_sweep(sweep_dir)
    check_tokens_dir(sweep.tokens_dir, sweep_dir)  # moved since planning: say so, and how to re-point the sweep
    check_tokenizer(sweep, sweep_dir)
    check_plan_rows(sweep, plan, sweep_dir)
    # (--cpus-per-task 0 was read as not given, -1 ran with "-1 threads each")
    if cfg.gpus_per_node < 0 or cfg.nodes < 1 or (cfg.max_parallel is not None and cfg.max_parallel < 1) \
            or (cfg.tasks_per_node is not None and cfg.tasks_per_node < 1) \
            or (cfg.cpus_per_task is not None and cfg.cpus_per_task < 1):
        raise UserError("--gpus-per-node must be >= 0; --nodes, --tasks-per-node, --cpus-per-task and --max-parallel >= 1")
    from ehrfm.loggers import check_logger, logger_for

    # a missing package or a misspelt name is said now, not by every job (each failed, launch exited 0);
    # without --logger the jobs take $EHRFM_LOGGER, so check that
    if cfg.logger is not None:
        check_logger(cfg.logger)
    else:
        logger_for()
    if cfg.executor == "local" and cfg.nodes != 1:
        raise UserError("--nodes > 1 needs --executor slurm (the local executor has one machine)")
    if cfg.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(cfg.mem), flags=re.I):
        raise UserError(f"--mem {cfg.mem!r}: expected a size like 16G or 4000M")
    time_min = parse_time_minutes(cfg.time)
    check_signal_delay(cfg.signal_delay_s, time_min, cfg.time)
    if cfg.executor == "local":
        slots = local_slots(cfg, len(os.sched_getaffinity(0)), _visible_gpus() if cfg.gpus_per_node else [],
                            thread_cap=user_threads())

    # One launcher at a time decides and submits: two concurrent relaunches must not both submit
    # a run. A local launch holds the lock until its runs are recorded as queued under its pid.
    trunk_of = _trunks_of(plan)
    with _sweep_lock(sweep_dir, read_only=cfg.dry_run):
        report, jobs = _select_and_prepare(sweep_dir, sweep, plan, cfg)
        if cfg.executor == "slurm":
            _warn_queued_keep_options(sweep_dir, cfg, report)
        if jobs and cfg.executor == "slurm":
            _submit_slurm(sweep_dir, jobs, cfg, time_min, report, trunk_of)
        elif jobs:
            for job in jobs:
                report.previous_records[job.run_id] = _new_record(sweep_dir, job.run_id, "local", launcher_pid=os.getpid())
    # A waiting launch (local, or SLURM with --wait) also waits for the runs an earlier launch left queued or running:
    # it exited 0 at once ("nothing to run (1 running)") and `launch --wait && collect && fit` fitted a partial sweep.
    # (Not when a branch waits for a trunk another launch runs: that launch exits 1 saying to launch again, and waiting
    # here for the trunk would hold a launch that cannot start the branch anyway.)
    earlier = [] if cfg.dry_run or report.skipped.get("waiting for trunk") else \
        [rid for st in (Status.QUEUED, Status.RUNNING) for rid in report.skipped.get(st, [])]
    if not jobs:
        if earlier and (cfg.executor == "local" or cfg.wait):
            summary(f"waiting for {len(earlier)} run(s) an earlier launch left queued or running")
            _wait_and_report(sweep_dir, report, cfg.poll_s, earlier, "SLURM runs" if cfg.executor == "slurm" else "runs")
        return report
    if cfg.executor == "slurm":
        if cfg.wait:
            _wait_and_report(sweep_dir, report, cfg.poll_s, earlier)
    else:
        # Costliest first (the FLOPs it trains, then tokens: at one budget the smaller model trains more tokens
        # and takes longer), so that the last job to end is a short one: greedy longest-first scheduling.
        # A wsd branch trains only its tokens past its branch point.
        cost = {r["run_id"]: _training_cost(r) for r in plan}
        jobs = sorted(jobs, key=lambda job: tuple(-c for c in cost.get(job.run_id, (0.0, 0.0))))
        _run_local(sweep_dir, jobs, cfg, slots, time_min, report, trunk_of)
        if earlier:  # (its own runs were said by _run_local)
            summary(f"waiting for {len(earlier)} run(s) an earlier launch left queued or running")
            extra = LaunchReport(submitted=earlier, job_ids={}, skipped={})
            _wait_and_report(sweep_dir, extra, cfg.poll_s, what="runs")
            report.final_states.update(extra.final_states)
    return report


def _training_cost(r: dict) -> tuple[float, float]:
    """(FLOPs, tokens) a plan row trains: a wsd branch only its tokens past its branch point."""
    own = float(r.get("tokens") or 0) - float(r.get("branch_tokens") or 0)
    return own * float(r.get("flops_per_token") or 0), own


def _trunks_of(plan: list[dict]) -> dict[str, str]:
    """{branch run id: its trunk's run id} of a wsd plan ({} for cosine plans)."""
    return {r["run_id"]: r["trunk_id"] for r in plan if r.get("trunk_id") and r["trunk_id"] != r["run_id"]}


@contextlib.contextmanager
def _sweep_lock(sweep_dir: Path, read_only: bool = False):
    """Hold the sweep's launch lock (SWEEP/.launch.lock): exclusive, or shared for `read_only` (a dry run).

    A dry run waits for a launch in progress, as a launch does, so that it reads whole records, but
    writes nothing, not even the lock file: it opens an existing lock file for reading (an archived,
    read-only sweep can be dry-run) and takes no lock where none was ever written (never launched).
    """
    import fcntl

    from ehrfm.run_lock import flock

    path = sweep_dir / ".launch.lock"
    if read_only and not path.exists():  # never launched: no launch's records to wait for
        yield
        return
    with open(path, encoding="utf-8") if read_only else open(path, "w", encoding="utf-8") as f:
        mode = fcntl.LOCK_SH if read_only else fcntl.LOCK_EX
        try:
            flock(f, mode | fcntl.LOCK_NB, path)
        except BlockingIOError:  # another launch is deciding or submitting: say why nothing happens yet
            print(f"waiting for another `ehrfm sweep launch` of {sweep_dir} to finish submitting ({path})",
                  file=sys.stderr, flush=True)
            flock(f, mode, path)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _select_and_prepare(sweep_dir: Path, sweep, plan: list[dict], cfg: LaunchConfig) -> tuple[LaunchReport, list[TrainJob]]:
    """The runs to submit now (by state), with their train configs written; [] when none."""
    states = run_states(sweep_dir, [r["run_id"] for r in plan], plan=plan, fingerprint=sweep.tokenizer_fingerprint, sweep=sweep,
                        own_launch=True)  # under the launch lock: a record without a job id is an earlier launch's
    to_submit: list[dict] = []
    skipped: dict[str, list[str]] = {}
    for row in plan:
        st = states[row["run_id"]]
        if st.state == Status.LOST and st.executor == "slurm" and _slurm_startup_crash(sweep_dir, row["run_id"], write=not cfg.dry_run):
            if cfg.dry_run:  # reads only: says what a launch would record
                print(f"would record {row['run_id']} failed: its job crashed at start-up {STARTUP_CRASHES_MAX} times in a row")
                if not cfg.retry_failed:
                    skipped.setdefault(Status.FAILED, []).append(row["run_id"])
                    continue
            st = states[row["run_id"]] = run_states(sweep_dir, [row["run_id"]], plan=plan,
                                                    fingerprint=sweep.tokenizer_fingerprint, sweep=sweep, own_launch=True)[row["run_id"]]
        if st.state in _LAUNCHED or (st.state == Status.FAILED and cfg.retry_failed):
            to_submit.append(row)
        else:
            skipped.setdefault(st.state, []).append(row["run_id"])
    trunk_of, now = _trunks_of(plan), {r["run_id"] for r in to_submit}
    for row in plan:  # a branch refused only because its trunk was not there yet goes with (or after) the trunk
        rid = row["run_id"]
        if rid not in now and rid in trunk_of and _refused_for_trunk(sweep_dir, rid, trunk_of[rid], states, now):
            to_submit.append(row)
            skipped[Status.FAILED].remove(rid)
    now = {r["run_id"] for r in to_submit}
    # A branch whose trunk runs under another launch cannot be ordered after it from here.
    waiting = [r for r in to_submit if r["run_id"] in trunk_of and trunk_of[r["run_id"]] not in now
               and states[trunk_of[r["run_id"]]].state in _BUSY]
    for r in waiting:
        to_submit.remove(r)
        skipped.setdefault("waiting for trunk", []).append(r["run_id"])
    report = LaunchReport(submitted=[], job_ids={}, skipped=skipped)
    if not to_submit:
        why = report.reason() if plan else "the plan has no runs"
        summary(f"submitted 0 jobs: nothing to run ({why})")
        return report, []
    if cfg.dry_run:
        for row in to_submit:
            print(f"would submit {row['run_id']} ({states[row['run_id']].state})")
        summary(f"dry run: would submit {len(to_submit)} jobs to {cfg.executor} (not submitted: {report.reason()})")
        return report, []
    jobs = []
    for row in to_submit:
        rid = row["run_id"]
        run_dir = runs_dir(sweep_dir) / rid
        if states[rid].state == Status.FAILED:
            report.archived[rid] = str(_archive_failed(sweep_dir, rid))
        config_path = sweep_dir / "jobs" / f"{rid}.train.json"
        train_cfg = run_train_config(sweep, row, run_dir)
        train_cfg.extra = {"sweep": str(sweep_dir), "run_id": rid, "budget": row["budget"],
                           **({"logger": cfg.logger} if cfg.logger else {})}
        train_cfg.planned_data = sweep.data or None  # a job refuses a token dir re-tokenized since planning
        write_json(config_path, train_cfg)
        jobs.append(
            TrainJob(
                run_id=rid,
                run_dir=str(run_dir),
                log_path=str(log_path(sweep_dir, rid)),
                record_path=str(record_path(sweep_dir, rid)),
                config_path=str(config_path),
                threads=1,
            )
        )
    return report, jobs


def _refused_for_trunk(sweep_dir: Path, run_id: str, trunk_id: str, states: dict, now: set[str]) -> bool:
    """Is branch `run_id` failed only because the trainer refused it (exit 2) before its trunk was there, the trunk now training or done?

    A trunk cancelled, lost to a node failure or preempted before its branch point lets its branch
    start (`afterany`) and be refused ("trunk ... is not a run dir", "has no stable checkpoint"):
    the branch failed for its trunk, not itself. A relaunch that trains the trunk again (or finds
    it running, or completed since the refusal) must train the branch too, not leave it missing
    until a --retry-failed; a trunk that failed or diverged keeps its branch failed.
    """
    st = states[run_id]
    if st.state != Status.FAILED or st.bad_file or st.result is None or st.result.exit_code != _EXIT_REFUSED:
        return False
    trunk = states[trunk_id].state
    if trunk_id in now or trunk in _BUSY:
        return True
    if trunk != Status.COMPLETED:
        return False
    try:  # completed after the branch was refused: the refusal was about the unfinished trunk
        refused_at = (runs_dir(sweep_dir) / run_id / "result.json").stat().st_mtime
        return refused_at < (runs_dir(sweep_dir) / trunk_id / "result.json").stat().st_mtime
    except OSError:
        return False


# The launch options a SLURM job is submitted with (sbatch reads them once: a relaunch cannot change them)
_JOB_OPTIONS = ("partition", "account", "qos", "time", "cpus_per_task", "mem", "gpus_per_node", "tasks_per_node", "nodes",
                "constraint", "exclude", "signal_delay_s", "max_timeouts", "slurm_args", "setup")


def _warn_queued_keep_options(sweep_dir: Path, cfg: LaunchConfig, report: LaunchReport) -> None:
    """Say when this launch asks other options than queued runs' jobs were submitted with.

    A relaunch with other options (more --mem, another --partition for jobs pending forever)
    skipped the queued runs in silence: their jobs keep the options of the launch that submitted
    them (launches.jsonl). Options left at their default are taken as not asked for.
    """
    queued = report.skipped.get(Status.QUEUED, [])
    if not queued:
        return
    by_job: dict[str, dict] = {}  # job id -> the launch (its options) that submitted it
    try:
        with open(sweep_dir / "launches.jsonl", encoding="utf-8") as f:
            for line in filter(str.strip, f):
                launch = json.loads(line)
                by_job.update({jid: launch for jid in launch.get("job_ids", {}).values()})
    except (OSError, ValueError, AttributeError):
        return  # no launch history (or a damaged one): nothing to compare with
    defaults, changed, runs = LaunchConfig(), {}, 0
    for rid in queued:
        record = read_record_file(record_path(sweep_dir, rid), damaged_ok=True) or {}
        before = by_job.get(str(record.get("job_id"))) if record.get("executor") == "slurm" else None
        diffs = {k: before[k] for k in _JOB_OPTIONS if before and k in before and getattr(cfg, k) != getattr(defaults, k)
                 and getattr(cfg, k) != before[k]}
        changed.update(diffs)
        runs += bool(diffs)
    if runs:
        was = ", ".join(f"--{k.replace('_', '-')} {'unset' if v is None else v}" for k, v in changed.items())
        warn(f"{runs} queued runs keep the options their jobs were submitted with ({was}), not this launch's: `scancel` "
             "their jobs and launch again to submit them with these", "sweep")


def _save_launch(sweep_dir: Path, cfg: LaunchConfig, report: LaunchReport) -> None:
    """launch.json: the last launch's config; launches.jsonl: every launch, with its runs and job ids."""
    write_json(sweep_dir / "launch.json", cfg)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open(sweep_dir / "launches.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"at": stamp, "job_ids": report.job_ids, **dataclasses.asdict(cfg)}) + "\n")


@contextlib.contextmanager
def _stderr_captured():
    """Capture file descriptor 2 (sbatch, run by submitit, writes its errors there) into a string."""
    import tempfile

    captured = {"text": ""}
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured["text"] = tmp.read().decode("utf-8", "replace")


def _archive_failed(sweep_dir: Path, run_id: str) -> Path:
    """Move a failed result.json aside (jobs/<id>.failed-<n>.json, returned) so the run starts again."""
    src = runs_dir(sweep_dir) / run_id / "result.json"
    n = 1
    while (dst := sweep_dir / "jobs" / f"{run_id}.failed-{n}.json").exists():
        n += 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    return dst


def _unlaunch(sweep_dir: Path, run_id: str, report: LaunchReport) -> None:
    """Undo the launch of a run whose job was never submitted or started (sbatch refused, Ctrl-C).

    Its record goes back to the one this launch replaced (none: it goes), so the run's earlier jobs and
    its count of crashes at start-up are kept; and a failed result.json that this launch's --retry-failed
    moved aside comes back: the run stays `failed` with its reason, not `planned` with the failure gone
    from status and collect.
    """
    path, previous = record_path(sweep_dir, run_id), report.previous_records.pop(run_id, None)
    with record_lock(path):
        if previous:
            write_json(path, previous)
        else:
            path.unlink(missing_ok=True)
    archived = report.archived.pop(run_id, None)
    result = runs_dir(sweep_dir) / run_id / "result.json"
    if archived and Path(archived).exists() and not result.exists():
        os.replace(archived, result)


def _startup_crash(sweep_dir: Path, run_id: str, job_id: str, how: str, write: bool = True) -> bool:
    """Count job `job_id` as a crash of run `run_id` at start-up; True when that made the run failed.

    With write=False (a dry run) nothing is written: True when counting it would make the run failed.

    The job record keeps the ids of the run's jobs that crashed at start-up in a row (`startup_crashes`;
    each id counted once, so asking again is harmless). At STARTUP_CRASHES_MAX the run's result.json
    says failed, with how often, how it looked and what to do; the count starts again, so
    `--retry-failed` gives the run as many tries again. A job that started its trainer ends the row
    (_new_record_locked carries the count only from a record without a trainer_pid).
    """
    path = record_path(sweep_dir, run_id)
    with record_lock(path):
        record = read_record_file(path, damaged_ok=True)
        if record is None:
            return False  # no record (or a damaged one): nothing to count on
        crashes = [str(j) for j in record.get("startup_crashes") or []]
        if job_id not in crashes:
            crashes.append(job_id)
        failed = len(crashes) >= STARTUP_CRASHES_MAX
        if not write:
            return failed
        if failed:
            error = (f"its job process crashed at start-up {len(crashes)} times in a row (jobs {', '.join(crashes)}: {how}), "
                     "killed before it started the trainer and without a traceback (a segmentation fault in Python or a "
                     f"library, a broken environment: try the job's command by hand); see {log_path(sweep_dir, run_id)} and "
                     f"{sweep_dir / 'submitit'}; after fixing it, `ehrfm sweep launch {sweep_dir} --retry-failed` "
                     f"tries it up to {STARTUP_CRASHES_MAX} times again")
            write_result(runs_dir(sweep_dir) / run_id, RunResult(Status.FAILED, error=error))
        write_json(path, {**record, "startup_crashes": [] if failed else crashes})
    return failed


# srun's line for a task a stop signal killed (SIGTERM, SIGUSR2 before submitit's handler, SIGHUP, SIGINT)
_STOP_SIGNAL_LINE = re.compile(r"srun: error: .*: tasks? [\d,-]+: (Terminated|User defined signal \d|Hangup|Interrupt)")


def _slurm_startup_crash(sweep_dir: Path, run_id: str, write: bool = True) -> bool:
    """For a lost SLURM run: did its last job crash at start-up (counted by _startup_crash)? True when the run is now failed for it.

    With write=False (a dry run) nothing is written: True when the run would be failed for it.

    A crash at start-up: the job ran (its submitit log exists), never started the trainer (no
    trainer_pid on record) and was not stopped (its log has no slurmstepd CANCELLED/TERMINATED line:
    scancel, time limit, node failure, preemption are no crash; a job cancelled while pending has no log).
    """
    from submitit.core.utils import JobPaths

    from sweeps.state import _log_reason

    record = read_record_file(record_path(sweep_dir, run_id), damaged_ok=True) or {}
    jid = record.get("job_id")
    if not jid or record.get("trainer_pid") or str(jid) in (record.get("startup_crashes") or []):
        return False
    paths = JobPaths(sweep_dir / "submitit" / "%j", job_id=str(jid), task_id=0)
    if not (paths.stdout.exists() or paths.stderr.exists()):
        return False
    logged = _log_reason(sweep_dir, str(jid)) or ""
    if re.search(r"\*\*\* JOB .*(CANCELLED|TERMINATED)|Job not requeued because", logged):
        return False
    with contextlib.suppress(OSError):  # killed by a stop signal (srun says which): a stop, not a crash
        if _STOP_SIGNAL_LINE.search(paths.stdout.read_text(encoding="utf-8", errors="replace")[-65536:]):
            return False
    return _startup_crash(sweep_dir, run_id, str(jid), f"SLURM job {jid} ended without a result" + (f"; {logged}" if logged else ""),
                          write=write)


def _write_record(sweep_dir: Path, run_id: str, **fields) -> None:
    path = record_path(sweep_dir, run_id)
    with record_lock(path):  # the job updates the same record (sweeps.job._update_record)
        record = {}
        with contextlib.suppress(OSError, json.JSONDecodeError):
            record = json.loads(path.read_text(encoding="utf-8"))
        record.update(fields)
        write_json(path, record)


def _new_record(sweep_dir: Path, run_id: str, executor: str, **fields) -> dict:
    """A fresh submission record (the previous attempt's fields are dropped); returns the one it replaced ({} if none)."""
    with record_lock(record_path(sweep_dir, run_id)):
        return _new_record_locked(sweep_dir, run_id, executor, **fields)


def _new_record_locked(sweep_dir: Path, run_id: str, executor: str, **fields) -> dict:
    old = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        old = json.loads(record_path(sweep_dir, run_id).read_text(encoding="utf-8"))
    record = {
        "run_id": run_id,
        "executor": executor,
        "job_id": None,
        "host": os.uname().nodename,
        "sweep_dir": str(sweep_dir),  # where its job reads and writes (sweeps.state notes a sweep dir moved since)
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "launches": int(old.get("launches", 0)) + 1,
        "previous_job_ids": (old.get("previous_job_ids") or []) + ([old["job_id"]] if old.get("job_id") else []),
        # the last job crashed at start-up (it never started a trainer): the row of such crashes goes on
        **({"startup_crashes": old["startup_crashes"]} if old.get("startup_crashes") and not old.get("trainer_pid") else {}),
        **fields,
    }
    write_json(record_path(sweep_dir, run_id), record)
    return old


# --- SLURM -------------------------------------------------------------------------------------


def _slurm_waves(jobs: list[TrainJob], trunk_of: dict[str, str]) -> list[tuple[list[TrainJob], str | None]]:
    """The order in which SLURM job arrays are submitted.

    Submission order: every job without a trunk in this launch first (one array), then each
    trunk's branches (one array each, depending on that trunk's job). A run that continues a trunk
    may be a trunk itself: its branches' array comes after its own (each array depends on a job
    already submitted).
    """
    now = {job.run_id for job in jobs}
    first = [job for job in jobs if trunk_of.get(job.run_id) not in now]
    waves: list[tuple[list[TrainJob], str | None]] = [(first, None)] if first else []
    groups: dict[str, list[TrainJob]] = {}
    for job in jobs:
        if trunk_of.get(job.run_id) in now:
            groups.setdefault(trunk_of[job.run_id], []).append(job)

    def depth(run_id: str) -> int:  # trunks above run_id in this launch (plans hold no cycles)
        n = 0
        while trunk_of.get(run_id) in now:
            run_id, n = trunk_of[run_id], n + 1
        return n

    return waves + [(group, trunk) for trunk, group in sorted(groups.items(), key=lambda kv: depth(kv[0]))]


def _submit_slurm(sweep_dir: Path, jobs: list[TrainJob], cfg: LaunchConfig, time_min: int, report: LaunchReport,
                  trunk_of: dict[str, str] | None = None) -> None:
    import submitit

    tasks_per_node = _tasks_per_node(cfg)
    threads = cfg.cpus_per_task or 1
    for job in jobs:
        job.threads = threads
    executor = submitit.SlurmExecutor(folder=str(sweep_dir / "submitit" / "%j"), max_num_timeout=cfg.max_timeouts)
    params = dict(
        job_name=f"ehrfm-{sweep_dir.name}",
        time=time_min,
        nodes=cfg.nodes,
        ntasks_per_node=tasks_per_node,
        signal_delay_s=cfg.signal_delay_s,
        array_parallelism=cfg.max_parallel or 256,
        additional_parameters={"requeue": True, **cfg.slurm_args},
        stderr_to_stdout=True,
    )
    optional = dict(partition=cfg.partition, account=cfg.account, qos=cfg.qos, cpus_per_task=cfg.cpus_per_task,
                    mem=cfg.mem, constraint=cfg.constraint, exclude=cfg.exclude)
    params.update({k: v for k, v in optional.items() if v is not None})
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    executor.update_parameters(**params)
    for job in jobs:
        report.previous_records[job.run_id] = _new_record(sweep_dir, job.run_id, "slurm")
    by_id: dict[str, object] = {}
    # Ctrl-C, SIGTERM or SIGHUP between sbatch and the records killed the launcher with its jobs
    # queued but recorded without a job id ("lost"): a relaunch submitted them a second time. The
    # signal now waits until every submitted job is on record; then the launch stops (130/143).
    with _StopSignals() as stop:
        try:
            with _stderr_captured() as err:
                for wave, trunk in _slurm_waves(jobs, trunk_of or {}):
                    extra = {"dependency": f"afterany:{by_id[trunk].job_id}"} if trunk else {}
                    executor.update_parameters(additional_parameters={**params["additional_parameters"], **extra})
                    with executor.batch():
                        subs = [executor.submit(job) for job in wave]
                    for job, sj in zip(wave, subs, strict=True):  # on record at once, wave by wave
                        by_id[job.run_id] = sj
                        _write_record(sweep_dir, job.run_id, job_id=str(sj.job_id),
                                      **({"after_job": str(by_id[trunk].job_id)} if trunk else {}))
                    if stop.signum:
                        break  # the waves not yet submitted are not queued anywhere
        except Exception as e:  # sbatch refused (bad partition, account, limits): its message says why
            for job in jobs:
                if job.run_id not in by_id:  # the waves that went in stay on record
                    _unlaunch(sweep_dir, job.run_id, report)
            if stop.signum:  # sbatch got the terminal's Ctrl-C too: not a refusal
                raise stop.exception() from None
            raise UserError(f"sbatch refused the sweep's jobs: {sbatch_error(err['text'], e, cfg)}") from None
    if err["text"].strip():
        print(err["text"].rstrip(), file=sys.stderr)  # sbatch warnings, passed on
    for job in jobs:
        if job.run_id not in by_id:
            _unlaunch(sweep_dir, job.run_id, report)
            continue
        report.submitted.append(job.run_id)
        report.job_ids[job.run_id] = str(by_id[job.run_id].job_id)
    _save_launch(sweep_dir, cfg, report)
    if stop.signum:
        print(f"interrupted: {len(report.submitted)} of {len(jobs)} jobs were submitted and are on record; "
              f"`ehrfm sweep launch {sweep_dir}` submits the rest", file=sys.stderr)
        raise stop.exception()
    submitted = [by_id[job.run_id] for job in jobs]
    first = str(submitted[0].job_id)
    where = f"array {first.split('_')[0]}" if "_" in first else f"job {first}"
    summary(f"submitted {len(jobs)} jobs to SLURM as {where} (not submitted: {report.reason()}); "
            f"`ehrfm sweep status {sweep_dir}` to follow")


# sbatch's words for what it refused -> the launch option that set it
_SBATCH_OPTIONS = (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("feature", "constraint"),
                   ("constraint", "constraint"), ("node name", "exclude"), ("gres", "gpus_per_node"), ("gpu", "gpus_per_node"),
                   ("memory", "mem"), ("time limit", "time"), ("node count", "nodes"), ("cpu count", "cpus_per_task"),
                   ("tasks", "tasks_per_node"))
# The launch options that decide which nodes can run a job
_NODE_RESOURCES = ("mem", "cpus_per_task", "gpus_per_node", "tasks_per_node", "nodes", "constraint")


def sbatch_error(stderr: str, exc: BaseException, cfg: LaunchConfig) -> str:
    """One line for an sbatch refusal: sbatch's error line (not its 'Try sbatch --help' hint), and the option it names.

    Args:
        stderr: what sbatch wrote on stderr.
        exc: the exception submitit raised (its text when stderr is empty).
        cfg: the launch config, to name the option sbatch refused, e.g. "(--partition gpu)".
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()] or \
        [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    useful = [ln for ln in lines if not ln.lower().startswith("try ")] or lines
    msg = next((ln for ln in reversed(useful) if "error" in ln.lower() or "unrecognized" in ln.lower()
                or "invalid" in ln.lower()), useful[-1])[:400]
    low = msg.lower()
    unrecognized = re.search(r"(?:unrecognized|invalid) option '?--?([\w-]+)", msg)
    if unrecognized:
        key = unrecognized.group(1)
        given = {k.replace("_", "-"): k for k in cfg.slurm_args}
        return msg + (f" (--slurm-arg {given[key]}=...)" if key in given else "")
    for word, name in _SBATCH_OPTIONS:
        value = getattr(cfg, name)
        if word in low and value not in (None, 0, ""):
            return f"{msg} (--{name.replace('_', '-')} {value})"
    extra = [f"--slurm-arg {k}={v}" if v is not True else f"--slurm-arg {k}" for k, v in cfg.slurm_args.items() if k.lower() in low]
    if not extra and "configuration" in low:
        # "Requested node configuration is not available" names no option: no node has this much
        # memory, CPUs, GPUs, tasks or features; name every one of them that the launch asked for.
        extra = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in _NODE_RESOURCES
                 if getattr(cfg, name) not in (None, 0, "") and not (name == "nodes" and cfg.nodes == 1)]
        return msg + (f" (no node offers what was asked: {', '.join(extra)})" if extra else "")
    return msg + (f" ({', '.join(extra)})" if extra else "")


def _wait_and_report(sweep_dir: Path, report: LaunchReport, poll_s: float, earlier: list[str] = (), what: str = "SLURM runs") -> None:
    """Wait for the submitted runs and `earlier` ones (queued or running under an earlier launch, local or SLURM); say how they ended."""
    report.final_states = wait_for_runs(sweep_dir, [*report.submitted, *earlier], poll_s=poll_s)
    by_state: dict[str, int] = {}
    for st in report.final_states.values():
        by_state[st] = by_state.get(st, 0) + 1
    summary(f"{len(report.final_states)} {what} finished: " + ", ".join(f"{v} {k}" for k, v in sorted(by_state.items())))
    warn_unfinished(sweep_dir, report)


def unfinished_runs(report: LaunchReport) -> list[str]:
    """The waited-for runs that ended without completing (a run another trainer still runs is not one)."""
    return [rid for rid, st in report.final_states.items() if st != Status.COMPLETED and st not in ACTIVE]


def warn_unfinished(sweep_dir: Path, report: LaunchReport) -> None:
    """One warning per waited-for run that did not complete, with why (its error, or how its job ended).

    A run cancelled (`scancel`), timed out or lost ends `interrupted` or `lost`: the launch said only
    its count, and its exit status was 0, so `launch --wait && collect && fit` went on without it.
    """
    unfinished = unfinished_runs(report)
    if not unfinished:
        return
    states = run_states(sweep_dir, unfinished)
    for rid in unfinished:
        st = states[rid]
        why = st.note or (st.result.error if st.result else None) or "no reason recorded"
        warn(f"{rid}: {st.state}: {why}", "sweep")


def wait_for_runs(sweep_dir: Path, run_ids: list[str], poll_s: float = 5.0, timeout_s: float | None = None) -> dict[str, str]:
    """Block until none of `run_ids` is queued or running; returns their final states."""
    from sweeps.plan import load_sweep

    sweep, plan = load_sweep(sweep_dir)
    planned = [r["run_id"] for r in plan]
    start = time.time()
    bar = progress(total=len(run_ids), desc="runs", unit="run")
    done, said = 0, set()
    try:
        while True:
            states = run_states(sweep_dir, planned, plan=plan, fingerprint=sweep.tokenizer_fingerprint, sweep=sweep)
            current = {rid: states[rid].state for rid in run_ids if rid in states}
            for rid in current:
                # a job that may wait forever (held, PartitionConfig, a drained node, SLURM not answering):
                # say so once while waiting, instead of a silent wait
                note = states[rid].note
                if states[rid].state in _BUSY and note and (rid, note) not in said:
                    said.add((rid, note))
                    warn(f"{rid}: {states[rid].state}: {note}", "sweep")
            n_done = sum(1 for s in current.values() if s not in _BUSY)
            bar.update(n_done - done)
            done = n_done
            if n_done == len(run_ids):
                return current
            if timeout_s is not None and time.time() - start > timeout_s:
                raise TimeoutError(f"runs still active after {timeout_s:.0f} s: {[r for r, s in current.items() if s in _BUSY]}")
            time.sleep(poll_s)
    finally:
        bar.close()


# --- local -------------------------------------------------------------------------------------


def _tasks_per_node(cfg: LaunchConfig) -> int:
    return cfg.tasks_per_node or max(1, cfg.gpus_per_node)


def _visible_gpus() -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


@dataclass
class LocalSlots:
    """How a local launch runs its jobs: jobs at once, CPU threads per trainer, GPUs per slot."""
    max_parallel: int  # jobs at once
    threads: int  # CPU threads per trainer
    gpu_groups: list  # one list of GPU indices per slot ([] without GPUs)


def user_threads(environ=None) -> int | None:
    """The thread limit a user set with $OMP_NUM_THREADS (its first level: "4,2" -> 4), or None when unset or not a number."""
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def local_slots(cfg: LaunchConfig, cores: int, gpus: list[int], thread_cap: int | None = None) -> LocalSlots:
    """How a local launch shares this machine's GPUs or cores.

    How a local launch shares this machine: GPU groups when jobs use GPUs, else the cores
    split evenly between jobs (and their DDP tasks) so that they never oversubscribe. Without
    cfg.cpus_per_task, each trainer's threads are at most `thread_cap` (the user's $OMP_NUM_THREADS,
    user_threads()).
    """
    tasks = _tasks_per_node(cfg)
    if cfg.gpus_per_node:
        if len(gpus) < cfg.gpus_per_node:
            raise UserError(f"--gpus-per-node {cfg.gpus_per_node}: this machine has {len(gpus)} visible GPU(s)")
        n_slots = len(gpus) // cfg.gpus_per_node
        max_parallel = min(cfg.max_parallel or n_slots, n_slots)
        groups = [gpus[i * cfg.gpus_per_node:(i + 1) * cfg.gpus_per_node] for i in range(max_parallel)]
    else:
        max_parallel = cfg.max_parallel or max(1, cores // (tasks * (cfg.cpus_per_task or 1)))
        groups = []
    threads = cfg.cpus_per_task or max(1, cores // (max_parallel * tasks))
    if not cfg.cpus_per_task and thread_cap:
        threads = min(threads, thread_cap)
    return LocalSlots(max_parallel=max_parallel, threads=threads, gpu_groups=groups)


def _next_ready(pending: list[TrainJob], running: dict, trunk_of: dict[str, str]) -> TrainJob | None:
    """The first pending job whose trunk (if any) is neither pending nor running in this launch."""
    busy = {job.run_id for job in pending} | set(running)
    for job in pending:
        if trunk_of.get(job.run_id) not in busy:
            return job
    return None


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP turned into a flag for the local launch loop (a context manager).

    The loop stops between steps, never inside one: a KeyboardInterrupt raised anywhere (between
    submitting a job and recording it, or inside a library that installed its own SIGINT hook)
    would leave a running job unrecorded or the stop unseen. A SIGINT that the launcher inherited
    as ignored (a background job of a script) stays ignored, as the shell intended.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                old = signal.getsignal(s)
                if old is not signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        return False

    def _on_signal(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early once a stop signal arrived."""
        deadline = time.monotonic() + seconds
        while self.signum is None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def exception(self) -> KeyboardInterrupt:
        """The exception the CLI turns into its exit code: 143 for SIGTERM, 130 otherwise."""
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


def _run_local(sweep_dir: Path, jobs: list[TrainJob], cfg: LaunchConfig, slots: LocalSlots, time_min: int, report: LaunchReport,
               trunk_of: dict[str, str] | None = None) -> None:
    import submitit

    for job in jobs:
        job.threads = slots.threads
    max_parallel, threads, tasks = slots.max_parallel, slots.threads, _tasks_per_node(cfg)
    gpus = [g for group in slots.gpu_groups for g in group]

    executor = submitit.LocalExecutor(folder=str(sweep_dir / "submitit" / "%j"), max_num_timeout=cfg.max_timeouts)
    executor.update_parameters(timeout_min=time_min, signal_delay_s=cfg.signal_delay_s,
                               tasks_per_node=tasks, stderr_to_stdout=True)
    _save_launch(sweep_dir, cfg, report)
    trunk_of = trunk_of or {}
    now = {job.run_id for job in jobs}
    # runs whose trunk is not in this launch (trunks, cosine runs, runs continuing an earlier stage's trunk) first, stable order
    pending = sorted(jobs, key=lambda job: trunk_of.get(job.run_id) in now)
    running: dict[str, tuple[object, TrainJob, list[int]]] = {}
    free_gpu_groups = [list(g) for g in slots.gpu_groups]
    bar = progress(total=len(jobs), desc="runs", unit="run")
    start = time.time()
    stop = _StopSignals()
    # A job record or result this launcher cannot write (a full disk, a quota): it stopped the launch
    # (exit 2) with its jobs running on, unwatched. Now no more jobs start, the running ones are watched
    # to their end, and the launch then fails with that error (naming the file).
    write_error: list[OSError] = []

    def bookkeeping(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if not write_error:
                write_error.append(e)
                what = f"{e.filename}: " if e.filename else ""
                warn(f"{what}cannot be written ({errno.errorcode.get(e.errno or 0, e.errno)}: {e.strerror or e}): no more jobs "
                     f"start; waiting for the {len(running)} running ones to end", "sweep")
            return None

    try:
        with stop:
            while ((pending and not write_error) or running) and not stop.signum:
                while pending and len(running) < max_parallel and not stop.signum and not write_error:
                    job = _next_ready(pending, running, trunk_of)
                    if job is None:
                        break  # every pending job waits for a trunk still running here
                    pending.remove(job)
                    group = free_gpu_groups.pop(0) if gpus else []
                    if gpus:
                        executor.update_parameters(gpus_per_node=len(group), visible_gpus=tuple(group))
                    with sigint_blocked():  # Ctrl-C is the launcher's to relay: no controller traceback
                        sj = executor.submit(job)
                    running[job.run_id] = (sj, job, group)
                    bookkeeping(_write_record, sweep_dir, job.run_id, job_id=f"local-{sj.job_id}", job_pid=int(sj.job_id))
                    report.submitted.append(job.run_id)
                    report.job_ids[job.run_id] = f"local-{sj.job_id}"
                stop.wait(0.5)
                if stop.signum:
                    break  # the jobs still registered are stopped below, finished or not
                for rid, (sj, job, group) in list(running.items()):
                    if sj.done():
                        del running[rid]
                        if group:
                            free_gpu_groups.append(group)
                        bookkeeping(_local_outcome, sj, job)
                        bookkeeping(_write_record, sweep_dir, rid,
                                    finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
                        bar.update(1)
        if stop.signum:
            raise stop.exception()
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM or SIGHUP: every live job gets SIGTERM, its trainer checkpoints; a
        # relaunch resumes them.
        for sj, _, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(sj.job_id), signal.SIGTERM)
        # Wait for the trainers themselves (they may outlive their job process while they write
        # the checkpoint), so that a relaunch right after this resumes from a complete checkpoint.
        from sweeps.job import STOP_GRACE_S

        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and any(not sj.done() or _live_trainer(record_path(sweep_dir, rid))
                                             for rid, (sj, _, _) in running.items()):
            time.sleep(0.5)
        print(_stopped_line(sweep_dir, [job for _, job, _ in running.values()]), file=sys.stderr)
        raise
    finally:
        bar.close()
        for job in pending:  # not started (Ctrl-C, a write that failed): no longer queued anywhere
            _unlaunch(sweep_dir, job.run_id, report)
    if write_error:  # every job it started has ended: `sweep status` tells each run's state, a relaunch goes on
        raise write_error[0]
    report.final_states = {rid: st.state for rid, st in run_states(sweep_dir, report.submitted).items() if rid in report.submitted}
    by_state: dict[str, int] = {}
    for s in report.final_states.values():
        by_state[s] = by_state.get(s, 0) + 1
    summary(f"ran {len(jobs)} jobs locally (at most {max_parallel} at a time, {threads} threads each) in {time.time() - start:.0f} s: "
            + ", ".join(f"{v} {k}" for k, v in sorted(by_state.items()))
            + f" (not submitted: {report.reason()})")
    warn_unfinished(sweep_dir, report)


# The command said to resume an interrupted local launch; a caller running launches for a larger job (the
# demo) names its own command with `resumed_by`: `sweep launch` finishes only that stage's runs, not the study.
_resume_command: str | None = None


@contextlib.contextmanager
def resumed_by(command: str):
    """Within this block an interrupted local launch says `command` resumes the rest (not `ehrfm sweep launch`)."""
    global _resume_command
    before, _resume_command = _resume_command, command
    try:
        yield
    finally:
        _resume_command = before


def _stopped_line(sweep_dir: Path, stopped: list[TrainJob]) -> str:
    """The local launcher's line after a stop, for the jobs it was running when the stop came.

    A job whose run finished anyway (its result.json written: it completed during the stop's grace,
    or between the last check and the signal) is counted by its result, not as checkpointed: the
    line said "1 running jobs checkpointed" for a run that `sweep status` then showed completed.
    A job stopped before its trainer wrote any checkpoint (still starting up) is counted as such: it
    was called checkpointed, and `sweep status` then showed it lost.
    """
    from ehrfm.results import FINISHED

    finished: dict[str, int] = {}
    checkpointed = unsaved = 0
    for job in stopped:
        try:
            result = read_result(Path(job.run_dir))
        except UserError:  # a damaged result.json: not finished (sweep status names the file)
            result = None
        if result is not None and result.status in FINISHED:
            finished[str(result.status)] = finished.get(str(result.status), 0) + 1
        elif any((saved / "state.json").is_file() for saved in saved_checkpoint_dirs(Path(job.run_dir))):
            checkpointed += 1
        else:
            unsaved += 1
    line = f"interrupted: {checkpointed} running jobs checkpointed"
    if unsaved:
        line += f", {unsaved} stopped before their first checkpoint (trained again from their start)"
    if finished:
        line += "; " + ", ".join(f"{v} {k}" for k, v in sorted(finished.items())) + " before the stop"
    return line + f"; `{_resume_command or f'ehrfm sweep launch {sweep_dir} --executor local'}` resumes the rest"


def _live_trainer(record_file: Path) -> int | None:
    """The pid of the run's trainer (its job record's trainer_pid) while it runs, else None.

    A damaged record reads as no trainer: it must not stop the stopping.
    """
    from sweeps.state import _pid_alive

    pid = (read_record_file(record_file, damaged_ok=True) or {}).get("trainer_pid")
    return pid if _pid_alive(pid, "sweeps.run_one") else None


def _checkpointed_since(sj, job: TrainJob) -> bool:
    """Did the trainer of a job process that died without an outcome checkpoint since this job was submitted?

    A trainer still running (its job process gone before it passed a stop on) is stopped as a Ctrl-C
    would stop it, and given STOP_GRACE_S to write its checkpoint: it must not train beside the next job.
    A checkpoint older than the submission (a resumed run's) says nothing about this job.
    """
    from sweeps.job import STOP_GRACE_S

    pid = _live_trainer(Path(job.record_path))
    if pid is not None:
        with contextlib.suppress(OSError, TypeError, ValueError):
            os.kill(int(pid), signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and _live_trainer(Path(job.record_path)) is not None:
            time.sleep(0.2)
    try:
        submitted = Path(sj.paths.submitted_pickle).stat().st_mtime
    except (OSError, AttributeError):
        submitted = None
    for saved in saved_checkpoint_dirs(Path(job.run_dir)):
        state = saved / "state.json"
        with contextlib.suppress(OSError):
            if submitted is None or state.stat().st_mtime >= submitted:
                return True
    return False


def _local_outcome(sj, job: TrainJob) -> str:
    """Status of a finished local job, recording a failure when the job process itself died.

    A job process killed while its trainer stops (a Ctrl-C to the process group of a script that runs
    the launch in the background: submitit's local controller dies of it and kills the job process
    while the trainer, told to stop, writes its checkpoint) is not a failure: its trainer checkpointed
    since the submission (_checkpointed_since), so the run is interrupted and a plain relaunch resumes
    it. Before, it was recorded failed ("failed outside the trainer: submitit INFO ... Loading pickle").
    A job process killed by a signal before it trained (no traceback in its error stream) records
    nothing either: its run is lost or interrupted, and a plain relaunch submits it. Otherwise the
    job's failure is recorded, as before.
    """
    from submitit.core.utils import UncompletedJobError

    result = read_result(job.run_dir)
    if result is not None:
        return str(result.status)
    try:
        out = sj.result()
        return str(out.get("status", "unknown")) if isinstance(out, dict) else "unknown"
    except Exception as e:  # the wrapper itself failed before the trainer could: record it
        if isinstance(e, UncompletedJobError) and _checkpointed_since(sj, job):  # killed while its trainer stopped
            return str(Status.INTERRUPTED)
        if isinstance(e, UncompletedJobError) and "Traceback (most recent call last)" not in str(e):
            # Killed by a signal, not broken: a SIGTERM while the job process started (Python, submitit,
            # the unpickling: before any handler of submitit's or ours) was recorded failed, so a plain
            # relaunch skipped the run, while the same SIGTERM a moment later checkpointed it. A job that
            # raised leaves its traceback in its error stream and stays failed, as before. Before its trainer
            # started, it counts as a crash at start-up: so many in a row fail the run (_startup_crash).
            record = read_record_file(Path(job.record_path), damaged_ok=True) or {}
            # the job id is a pid, which a new container or a wrapped pid counter gives again: keyed by launch
            crash_id = f"local-{sj.job_id} (launch {record.get('launches', '?')})"
            if not record.get("trainer_pid") and _startup_crash(Path(job.record_path).parent.parent, job.run_id,
                                                                crash_id, "killed by a signal, no traceback"):
                return str(Status.FAILED)
            return str(Status.LOST)
        error = f"job {sj.job_id} failed outside the trainer: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__}"
        write_result(job.run_dir, RunResult(Status.FAILED, error=error))
        return str(Status.FAILED)
