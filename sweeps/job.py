"""The callable each submitit job runs: train one run of a sweep, surviving preemption.

The trainer runs as a child process (`python -m sweeps.run_one CONFIG.json`, which calls ehrfm's
public `train` API), not in the job's own Python:
the job process stays small and responsive to signals, and a crash of the trainer (OOM, CUDA
error) is recorded as a failed run instead of killing the job silently.

Signals, as they really arrive (see submitit/core/job_environment.py and slurm.py):
- SLURM time-out / submitit preemption: `--signal=USR2@<delay>` reaches every task; submitit's
  handler calls `TrainJob.checkpoint()`, which stops the trainer with SIGTERM (the trainer
  checkpoints and exits with code 3), then submitit runs `scontrol requeue` and exits. The
  trainer child ignores USR2 itself (its default action would kill it before it checkpoints).
- `scontrol requeue`, `scancel`, preemption in REQUEUE mode: SLURM sends SIGTERM to all processes
  of the step; the trainer checkpoints and exits 3; SLURM requeues (or cancels) the job and the
  next start resumes from the checkpoint.
- LocalExecutor: its controller sends USR2 at time-out and restarts the job on exit code 144.
- A SIGTERM that reaches the trainer before `train` installs its handlers (while it imports torch)
  is kept by sweeps.run_one (exit 3 before training); a trainer SIGTERM killed anyway is interrupted.
A run dir holding result.json is finished: a requeued job for it returns that result at once.

Multi-GPU runs: submitit starts one task per GPU; each task runs one trainer process with the
torch.distributed environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set, so
the trainer joins one DDP group. Only rank 0 records failures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from ehrfm import fault_points
from ehrfm.errors import UserError
from ehrfm.results import RunResult, Status, read_result, write_result
from sweeps.state import read_record_file, record_lock

# The trainer's exit code after checkpointing on SIGTERM/SIGUSR1 (ehrfm train contract).
EXIT_INTERRUPTED = 3
# sweeps.run_one's exit code when another trainer holds the run dir (ehrfm.run_lock).
EXIT_BUSY = 4
# sweeps.run_one's exit code when the run dir was deleted, moved or replaced while it trained.
EXIT_GONE = 5
# How long a stopping trainer may take to write its checkpoint before it is killed.
STOP_GRACE_S = 120


@dataclass
class TrainJob:
    """One run of a sweep as a submitit callable; plain data, so submitit can pickle it."""

    run_id: str
    run_dir: str
    log_path: str
    record_path: str  # SWEEP/jobs/<run_id>.json: the launcher's record, updated with start times
    config_path: str  # SWEEP/jobs/<run_id>.train.json: the run's TrainConfig
    threads: int = 1  # CPU threads of the trainer (OMP/MKL/torch), so parallel jobs do not oversubscribe

    def __post_init__(self):
        self._proc: subprocess.Popen | None = None
        self._returncode: int | None = None
        self._stopping = False
        self._oom_before: int | None = None

    # --- submitit protocol ----------------------------------------------------------------------
    def __call__(self) -> dict:
        """Run the trainer child for this run and return its result.json content (the job's outcome).

        A run that already finished is not trained again. SIGTERM, SIGINT, SIGHUP (each of the last two
        unless inherited ignored) and SIGUSR2 on ranks other than 0 are forwarded to the trainer so it checkpoints. When the trainer exits
        without result.json, the outcome is interrupted (exit code 3 or a stop), busy (exit code 4:
        another trainer holds the run dir) or failed (recorded with the log's last line).

        Returns:
            The run's result as a dict (ehrfm.results.RunResult JSON).
        """
        result = _finished_result(self.run_dir)
        if result is not None:
            return result  # a requeue of a finished run: nothing to do
        rank, local_rank, world = _ranks()
        # Our own SIGTERM handler (submitit only logs SIGTERM): pass it on so the trainer
        # checkpoints even where SLURM signals only the task's main process.
        signal.signal(signal.SIGTERM, self._forward_stop)
        # Ctrl-C on a local launch, or its terminal closed: checkpoint too. Unless this process inherited
        # the signal ignored: a launch that a script started in the background (SIGINT) or under nohup
        # (SIGHUP) goes on, its runs with it, as the shell meant.
        for s in (signal.SIGINT, signal.SIGHUP):
            if signal.getsignal(s) is not signal.SIG_IGN:
                signal.signal(s, self._forward_stop)
        if rank != 0:  # submitit's USR2 handler acts on rank 0 only; other ranks stop their own trainer
            signal.signal(signal.SIGUSR2, self._forward_stop)
        if getattr(self, "_early_usr2", False):
            # SLURM's time-limit (or preemption) signal came while the job was unpickled, before submitit's
            # handler: kept by _keep_early_usr2, given now to that handler (checkpoint, requeue as a time-out)
            self._early_usr2 = False
            os.kill(os.getpid(), signal.SIGUSR2)
        try:
            if rank == 0:
                self._note_start()
            self._spawn(rank, local_rank, world)
        except Exception as e:  # the trainer could not even start: a failed run, recorded
            if rank == 0:
                write_result(self.run_dir, RunResult(Status.FAILED, error=f"job could not start the trainer: {type(e).__name__}: {e}"))
            raise
        if self._stopping:  # a stop signal arrived while the trainer was starting
            self._forward_stop()
        while self._returncode is None:
            time.sleep(0.2)
        return self._outcome(rank)

    def checkpoint(self):
        """Called by submitit on USR2 (time-out / preemption): stop the trainer, requeue this job."""
        from submitit.helpers import DelayedSubmission

        self._stop_trainer()
        return DelayedSubmission(TrainJob(self.run_id, self.run_dir, self.log_path, self.record_path, self.config_path, self.threads))

    def __getstate__(self):
        # The child process and its watcher thread live only in the running job.
        return {k: v for k, v in self.__dict__.items() if k not in ("_proc", "_returncode", "_stopping", "_watcher", "_oom_before", "_early_usr2")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._proc, self._returncode, self._stopping, self._oom_before = None, None, False, None
        # Unpickled in the job process, before submitit installs its USR2 handler: a USR2 (SLURM's
        # time-limit signal, the local executor's time-out) now killed the job (default action), and the job
        # ended without a requeue. It is kept instead, and passed on in __call__, once submitit handles it.
        self._early_usr2 = False
        if threading.current_thread() is threading.main_thread() and os.environ.get("SUBMITIT_EXECUTOR"):
            signal.signal(signal.SIGUSR2, self._keep_early_usr2)
        # a test holds the job here: unpickled by submitit, none of its or our signal handlers yet
        fault_points.hold("job-start", self.run_id)

    def _keep_early_usr2(self, signum=None, frame=None) -> None:
        self._early_usr2 = True

    # --- the trainer child ----------------------------------------------------------------------
    def _spawn(self, rank: int, local_rank: int, world: int) -> None:
        env = dict(os.environ)
        env["EHRFM_QUIET"] = "1"  # progress bars would flood the log
        threads = str(max(1, int(self.threads)))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "EHRFM_NUM_THREADS"):
            env[name] = threads
        if world > 1:
            env.update(_ddp_env(rank, local_rank, world))
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child process, closed after it)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        log.write(f"--- {stamp} job {_job_id()} rank {rank}/{world}: python -m sweeps.run_one {self.config_path}\n".encode())
        log.flush()
        self._oom_before = oom_kills()  # the cgroup's OOM-kill count, to tell an OOM kill from another SIGKILL
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sweeps.run_one", self.config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_trainer_signals,
        )
        log.close()
        proc = self._proc
        if rank == 0:
            # A relaunch must not start a second trainer while this one may still be writing its
            # checkpoint after its job process is gone (sweeps/state.py checks this pid).
            _update_record(Path(self.record_path), trainer_pid=proc.pid)

        def watch():
            self._returncode = proc.wait()

        # A thread owns the wait, so signal handlers in the main thread only read _returncode
        # (no Popen lock is taken inside a handler).
        self._watcher = threading.Thread(target=watch, daemon=True)
        self._watcher.start()

    def _forward_stop(self, signum=None, frame=None) -> None:
        self._stopping = True
        if self._proc is not None and self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def _stop_trainer(self) -> None:
        self._forward_stop()
        deadline = time.time() + STOP_GRACE_S
        while self._proc is not None and self._returncode is None and time.time() < deadline:
            time.sleep(0.2)
        if self._proc is not None and self._returncode is None:
            self._proc.kill()  # it did not checkpoint in time; it resumes from its last checkpoint

    def _outcome(self, rank: int) -> dict:
        rc = self._returncode
        result = _finished_result(self.run_dir)
        if result is not None:
            return result
        # A trainer that SIGTERM ended was stopped, not broken: the signal came before any handler
        # (interpreter start-up) and it trained nothing since its last checkpoint. Never a failure.
        if rc in (EXIT_INTERRUPTED, -signal.SIGTERM) or self._stopping:
            return RunResult(Status.INTERRUPTED, run_id=self.run_id).to_json()
        if rc == EXIT_BUSY:  # another trainer holds the run dir: its outcome is the run's, never overwritten
            return RunResult(Status.BUSY, run_id=self.run_id).to_json()
        if rc == EXIT_GONE:
            # the run dir was deleted under the trainer, which refused to recreate it: nothing is written
            # there (a lone result.json would recreate it); the run is lost and a relaunch starts it again
            return RunResult(Status.FAILED, run_id=self.run_id, error=_last_line(self.log_path), exit_code=rc).to_json()
        if rank != 0:
            return RunResult(Status.FAILED, run_id=self.run_id, error=f"rank {rank} trainer exited with status {rc}").to_json()
        # The trainer died without writing result.json (killed, crashed, refused its arguments):
        # record the run as failed so it is reported, never silently dropped.
        why = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with status {rc}"
        if rc == -signal.SIGKILL:
            why += self._sigkill_cause()
        last = _last_line(self.log_path)
        if rc is not None and rc < 0:
            # killed, it wrote nothing of its end: its log's last line (a progress bar, a warning) is no cause
            error = f"trainer {why} (log: {self.log_path}" + (f"; its last line before: {last}" if last else "") + ")"
        else:
            error = f"trainer {why}" + (f": {last}" if last else "") + f" (log: {self.log_path})"
        if rc == -signal.SIGKILL:
            # what to do, in the error that status and collect show: a bare "signal 9" left users guessing
            sweep = Path(self.record_path).parent.parent
            # only a run that saved a checkpoint resumes: a sweep's runs save one when stopped (SIGTERM, SLURM's time
            # limit) and every checkpoint_interval steps (0 by default), so a SIGKILL mid-run usually left none
            try:  # a wsd branch starts from its trunk's stable checkpoint, not from step 0
                branch = bool(json.loads(Path(self.config_path).read_text(encoding="utf-8")).get("trunk_dir"))
            except (OSError, ValueError, AttributeError):
                branch = False
            start = "its trunk's stable checkpoint (its branch point)" if branch else "step 0"
            if (Path(self.run_dir) / "checkpoint").is_dir():
                again = "resumes it from its checkpoint"
            elif not branch and any(Path(self.run_dir).glob("stable/*/checkpoint")):
                again = "resumes it from the newest stable-phase checkpoint it kept for its branches"
            else:
                again = (f"trains it again from {start} (it saved no checkpoint: plan the sweep again with --train-opt "
                         "checkpoint_interval=N to save one every N steps, same run ids)")
            error += (f"; to go on: `ehrfm sweep launch {sweep} --retry-failed` {again}; "
                      "give each run more memory (fewer at a time: --max-parallel; on SLURM --mem) or a smaller "
                      "micro-batch (plan the sweep again with --train-opt micro_batch_size=N: same run ids)")
        result = RunResult(Status.FAILED, error=error, exit_code=rc)
        write_result(self.run_dir, result)
        return result.to_json()

    def _sigkill_cause(self) -> str:
        """What a SIGKILL of the trainer most likely was: the kernel's (or SLURM's cgroup) OOM killer.

        Nothing but the OOM killer, SLURM at the end of a stop's grace (then the job was stopping and
        never gets here) or a user's `kill -9` sends SIGKILL; the cgroup's oom_kill count says which.
        """
        after = oom_kills()
        if self._oom_before is not None and after is not None and after > self._oom_before:
            return (f" (SIGKILL, exit status 137) by the out-of-memory killer (its cgroup's oom_kill count rose "
                    f"from {self._oom_before} to {after})")
        pid = self._proc.pid if self._proc is not None else "?"
        return (f" (SIGKILL, exit status 137), most likely by the out-of-memory killer (`dmesg` or `journalctl -k` "
                f"then says \"Killed process {pid}\"; a `kill -9` is the other cause)")

    def _note_start(self) -> None:
        path = Path(self.record_path)
        with record_lock(path):  # read and written back under one lock: `starts` counts every start
            record = _read_record(path)
            # A record damaged (half-written on NFS) or deleted while the job waited is rewritten from
            # nothing here: without its executor a SLURM run read as a local one, and once requeued
            # (its processes gone) a relaunch submitted it again beside its queued job.
            who = {k: v for k, v in (("run_id", self.run_id), ("executor", os.environ.get("SUBMITIT_EXECUTOR"))) if v and not record.get(k)}
            _write_json(path, {
                **record,
                **who,
                "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "job_id": record.get("job_id") or _job_id(),
                "running_job_id": _job_id(),
                "pid": os.getpid(),
                "host": os.uname().nodename,
                "starts": int(record.get("starts", 0)) + 1,
            })


def oom_kills() -> int | None:
    """How many processes the OOM killer has killed in this process's memory cgroup; None where unknown.

    cgroup v2: `oom_kill` of memory.events; v1: `oom_kill` of memory.oom_control (Linux >= 4.13).
    A sweep job's trainer is in its job's cgroup (SLURM's task cgroup, or the launcher's on one machine).
    """
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    files = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "memory":
            files.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control")
        elif controllers == "" and line.startswith("0::"):
            files.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
    for f in files:
        try:
            for row in f.read_text(encoding="utf-8").splitlines():
                key, _, value = row.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def _read_record(path: Path) -> dict:
    # a job keeps going with a damaged record: the launcher, not the job, refuses to guess from it
    return read_record_file(path, damaged_ok=True) or {}


def _update_record(path: Path, **fields) -> None:
    with record_lock(path):  # the launcher updates the same record (sweeps.launch._write_record)
        record = _read_record(path)
        record.update(fields)
        _write_json(path, record)


def _finished_result(run_dir: str | Path) -> dict | None:
    """The run's result.json when it holds a finished run, else None.

    The run's result.json when it holds a finished run (completed, failed, diverged), else None
    (also when damaged: the trainer then names the file and what to do).
    """
    try:
        result = read_result(run_dir)
    except UserError:
        return None
    return result.to_json() if result is not None and result.finished else None


def _trainer_signals() -> None:
    # USR2 is submitit's preemption signal for the job process; SIGINT and SIGHUP (a terminal's
    # Ctrl-C or hang-up) go to the wrapper, which turns them into SIGTERM. The trainer stops only on SIGTERM, after a checkpoint.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _ranks() -> tuple[int, int, int]:
    try:
        import submitit

        env = submitit.JobEnvironment()
        return env.global_rank, env.local_rank, env.num_tasks
    except RuntimeError:  # called outside a submitit job (direct use, tests)
        return 0, 0, 1


def _job_id() -> str:
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except (RuntimeError, KeyError):
        return f"pid{os.getpid()}"


def _ddp_env(rank: int, local_rank: int, world: int) -> dict:
    import submitit

    env = submitit.JobEnvironment()
    # One port per job, the same on every task of it.
    port = 20000 + zlib.crc32(str(env.job_id).encode()) % 20000
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(max(1, world // max(1, env.num_nodes))),
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": str(port),
    }


def _last_line(path: str, limit: int = 600) -> str:  # a trainer's error line names paths: keep it whole
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [ln for ln in lines if not ln.startswith("---")]
    return lines[-1][:limit] if lines else ""


def _write_json(path: Path, obj: dict) -> None:
    from ehrfm.io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)
