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


def wait_for_state(job_id: str, state: str, timeout_s: float = 300) -> None:
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
        special = sbatch("-o", str(tmp_path / "%j.out"), "--wrap", "echo started; exec sleep 600")
        running = sbatch("--wrap", "sleep 600")
        jobs = [held, special, running]
        # squeue says RUNNING once the node is allocated; the job's first line says its batch step runs
        deadline = time.monotonic() + 300  # a hang guard only: a CPU may be freed late by an earlier test's job
        while not (tmp_path / f"{special}.out").exists() or not (tmp_path / f"{special}.out").read_text().startswith("started"):
            assert time.monotonic() < deadline, f"job {special}'s batch step never started (now {squeue_state(special)!r})"
            time.sleep(0.3)
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


def test_a_run_that_finishes_while_its_state_is_read_is_completed_not_interrupted(tmp_path, monkeypatch):
    """run_states reads result.json, then asks whether the job still runs (squeue, or its pid). A job
    that ends in between wrote result.json after the first read: it was reported interrupted (it
    has a checkpoint) and a `launch --wait` whose last run it was stopped on that. No SLURM: the
    local executor's pid check is the moment the run ends."""
    from test_train import make_token_dir

    import sweeps.state as state
    from sweeps.plan import plan_sweep

    tok = make_token_dir(tmp_path / "tok")
    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [1e9], out, sizes=2, context=64, train={"batch_size": 8})
    rid = rows[0]["run_id"]
    run = out / "runs" / rid
    (run / "checkpoint").mkdir(parents=True)  # the final checkpoint is written before result.json
    (out / "jobs").mkdir(exist_ok=True)
    (out / "jobs" / f"{rid}.json").write_text(json.dumps({"run_id": rid, "executor": "local", "job_pid": 1}))

    own = {k: rows[0][k] for k in ("tokens", "n_layer", "d_model", "n_head", "context", "seed")}
    fingerprint = json.loads((out / "sweep.json").read_text())["tokenizer_fingerprint"]

    from test_sweep_faults import write_run_config

    write_run_config(run)  # the trainer writes its config first

    def job_ends_now(record, run_dir=None):  # the trainer writes its result and exits while run_states asks about it
        (run / "result.json").write_text(json.dumps({"status": "completed", "val_loss": 2.5, **own,
                                                     "tokenizer_fingerprint": fingerprint}))
        return None

    monkeypatch.setattr(state, "_local_state", job_ends_now)
    st = run_states(out, [r["run_id"] for r in rows])[rid]
    assert st.state == "completed", (st.state, st.note)
    assert st.result.val_loss == 2.5


def test_both_writers_of_a_job_record_hold_its_lock_while_they_write(tmp_path, monkeypatch):
    """The launcher (job id, pid) and the job (start, trainer pid) both read-modify-write one record;
    unlocked, one's write dropped the other's fields. Each must hold SWEEP/jobs/<run_id>.lock from
    its read to its write: checked at the write, where another open of the lock must not get it."""
    import fcntl

    import sweeps.job as job
    import sweeps.launch as launch
    from sweeps.state import record_path

    sweep = tmp_path / "sweep"
    path = record_path(sweep, "r1")
    held = []

    def lock_is_held() -> bool:
        with open(path.with_suffix(".lock"), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    real_launch_write, real_job_write = launch.write_json, job._write_json
    monkeypatch.setattr(launch, "write_json", lambda p, obj: (held.append(("launcher", lock_is_held())), real_launch_write(p, obj)))
    monkeypatch.setattr(job, "_write_json", lambda p, obj: (held.append(("job", lock_is_held())), real_job_write(p, obj)))
    launch._new_record(sweep, "r1", "local")
    launch._write_record(sweep, "r1", job_id="local-1", job_pid=1)
    job._update_record(path, trainer_pid=42)
    assert held == [("launcher", True), ("launcher", True), ("job", True)]
    record = json.loads(path.read_text())
    assert (record["job_id"], record["job_pid"], record["trainer_pid"], record["executor"]) == ("local-1", 1, 42, "local")


def test_a_slurm_record_without_a_job_id_is_queued_while_its_launch_submits(tmp_path):
    """A SLURM launch writes each run's record before its sbatch and the job id after it (a wsd
    sweep: a whole wave at a time). `sweep status` or `collect` in between read the record as
    `lost` ("its launch stopped before it recorded a job id") while the launch was alive. The
    launch holds SWEEP/.launch.lock all that time; here this test holds it, as a launch would."""
    import fcntl

    from test_train import make_token_dir

    from ehrfm.results import Status
    from sweeps.plan import plan_sweep

    tok = make_token_dir(tmp_path / "tok")
    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [1e9], out, sizes=2, context=64, train={"batch_size": 8})
    rid = rows[0]["run_id"]
    (out / "jobs").mkdir(exist_ok=True)
    (out / "jobs" / f"{rid}.json").write_text(json.dumps({"run_id": rid, "executor": "slurm", "job_id": None}))
    with open(out / ".launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = run_states(out, [rid])[rid]
        assert (st.state, st.note) == (Status.QUEUED, f"being submitted by a running `ehrfm sweep launch` (it holds {out / '.launch.lock'})")
        # the launch itself (under that lock) sees an earlier launch's record: one to submit again
        assert run_states(out, [rid], own_launch=True)[rid].state == Status.LOST
    st = run_states(out, [rid])[rid]  # the launch is gone: lost, and why
    assert st.state == Status.LOST and st.note.startswith("its launch stopped before it recorded a job id"), st.note


def test_a_local_run_lost_with_its_launch_says_why_and_what_a_relaunch_does(synth_tokens, tmp_path):
    """After `kill -9` of a local `sweep launch`, the runs it had queued but not started showed "lost"
    with no word of why (a SIGTERM'd launch sets them back to planned)."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, out=out, **TINY)
    queued, started = rows[0]["run_id"], rows[1]["run_id"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # a process that has ended: its pid is no launcher's now
    (out / "jobs").mkdir()
    for rid, record in ((queued, {"launcher_pid": pid}), (started, {"launcher_pid": pid, "job_pid": pid})):
        (out / "jobs" / f"{rid}.json").write_text(json.dumps({"run_id": rid, "executor": "local", **record}))
    states = run_states(out, [queued, started])
    assert states[queued].state == "lost" and states[queued].note == (
        f"queued by a `sweep launch` (pid {pid}) that ended before starting it (killed?); `ehrfm sweep launch` trains it")
    assert states[started].state == "lost" and states[started].note.startswith("its job ended with no result and no checkpoint")


def test_a_local_run_stopped_after_a_checkpoint_says_why_and_what_a_relaunch_does(synth_tokens, tmp_path):
    """A trainer stopped by a signal from outside its launch (a `kill`, a shutdown) left a checkpoint and no
    result: `sweep status` and the launch's warning said "interrupted: no reason recorded"."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, out=out, **TINY)
    rid = rows[0]["run_id"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    (out / "jobs").mkdir()
    (out / "jobs" / f"{rid}.json").write_text(json.dumps({"run_id": rid, "executor": "local", "launcher_pid": pid,
                                                            "job_pid": pid, "trainer_pid": pid}))
    (out / "runs" / rid / "checkpoint").mkdir(parents=True)
    (out / "runs" / rid / "checkpoint" / "state.json").write_text(json.dumps({"step": 7, "status": "interrupted"}))
    st = run_states(out, [rid])[rid]
    assert st.state == "interrupted" and st.note == (
        "its trainer ended without a result, after its last checkpoint at step 7 (stopped by a signal: a `kill`, "
        "Ctrl-C, a shutdown?); `ehrfm sweep launch` resumes it from that checkpoint")
