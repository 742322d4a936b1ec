"""Sweep and trainer faults of a sixth break-it pass (real training, real processes, no mocks).

- A stop signal (SIGTERM: `scancel`, `scontrol requeue`, preemption, systemd stopping a service)
  that reaches a sweep job's trainer while it still imports torch, before `train` installs its
  handlers: the trainer died of it and its job recorded the run `failed` ("trainer killed by signal
  15"), so a plain relaunch skipped it, while the same signal a second later checkpointed it as
  `interrupted`. Now it is `interrupted`, its checkpoint untouched, and a rerun resumes it to the
  uninterrupted run's loss.
- One step earlier, the local job process itself (Python, submitit, unpickling the job: no handler yet):
  SIGTERM killed it and the launcher recorded the run `failed` ("failed outside the trainer"). Now a
  job process killed by a signal without a traceback records nothing: the run is `lost`, relaunched.
- The same for `ehrfm train` itself: SIGTERM while it imports torch exited 143 and SIGUSR1 killed it,
  not the documented 3 ("interrupted, rerun to resume") that job scripts requeue on.
- A trainer killed by SIGKILL (the OOM killer) said only "killed by signal 9"; now it names SIGKILL, exit
  status 137, the likely cause and how to go on, and a re-plan with a smaller micro-batch is accepted.
- `scancel` of a starting run on real SLURM: `lost`, never `failed`, and a plain relaunch submits it
  (the README's rule, checked; old code already did this, since SLURM signals the job wrapper too).
- A run dir deleted (`rm -rf`, a scratch purge) while its trainer ran: the trainer recreated it with a
  checkpoint and a `completed` result.json only (no config.json, no metrics, no lock: a second trainer
  could start beside it). Now the trainer stops without writing into it (one line, exit 2), its sweep
  job records nothing there, the run is `lost` and a plain relaunch trains it again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ehrfm.config import TrainConfig
from ehrfm.fault_points import wait_held
from ehrfm.train import request_stop, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW = dict(n_layer=2, d_model=32, n_head=2, context=64, tokens=6_000, batch_size=4, lr=3e-3, eval_tokens=2048, seed=5)
ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tok, tmp_path_factory) -> dict:
    return train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path_factory.mktemp("ref") / "run"), **KW))


def job_files(tok, tmp_path: Path, name: str = "run") -> list[str]:
    """TrainJob's arguments for one run: (run_id, run_dir, log, record, TrainConfig JSON)."""
    run_dir = tmp_path / name
    config = tmp_path / "jobs" / f"{name}.train.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(TrainConfig(tokens_dir=str(tok), out_dir=str(run_dir), **KW).to_dict()))
    return [name, str(run_dir), str(tmp_path / "logs" / f"{name}.log"), str(tmp_path / "jobs" / f"{name}.json"), str(config)]


def start_job(args: list[str], env: dict) -> subprocess.Popen:
    """The sweep job wrapper (sweeps.job.TrainJob) in its own process, as submitit runs it; prints its outcome."""
    code = "import json, sys; from sweeps.job import TrainJob; print(json.dumps(TrainJob(*sys.argv[1:])()))"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_before_the_trainer_handles_it_interrupts_the_run_and_a_rerun_resumes_it(tok, reference, tmp_path):
    args = job_files(tok, tmp_path)
    request_stop()  # stops after its first step: a run with a checkpoint, as a preempted one has
    first = train(TrainConfig(tokens_dir=str(tok), out_dir=args[1], **KW))
    assert first["status"] == "interrupted"
    ckpt = Path(args[1]) / "checkpoint" / "state.json"
    step = json.loads(ckpt.read_text())["step"]

    holds = tmp_path / "holds"  # the trainer holds before it imports torch: no handler of train() yet
    job = start_job(args, dict(ENV, EHRFM_HOLD_AT="trainer-start", EHRFM_HOLD_DIR=str(holds)))
    held = wait_held(holds, "run", "trainer-start", is_alive=lambda: job.poll() is None)
    os.kill(held["pid"], signal.SIGTERM)  # the trainer alone: as `kill`, or a stop its wrapper has not seen
    out, err = job.communicate(timeout=120)
    log = Path(args[2]).read_text()
    assert job.returncode == 0 and json.loads(out.splitlines()[-1])["status"] == "interrupted", f"{out}\n{err[-2000:]}\n{log[-2000:]}"
    assert not (Path(args[1]) / "result.json").exists(), (Path(args[1]) / "result.json").read_text()
    assert json.loads(ckpt.read_text())["step"] == step and "stopped (signal 15) before training" in log

    again = start_job(args, ENV)  # the requeued job (or a plain relaunch): resumes from the checkpoint
    out, err = again.communicate(timeout=300)
    result = json.loads((Path(args[1]) / "result.json").read_text())
    assert result["status"] == "completed" and result["val_loss"] == reference["val_loss"], f"{out}\n{err[-2000:]}"



def _held_local_launch(tok, tmp_path, hold_at: str):
    """A one-run sweep launched locally in a subprocess, its job held at fault point `hold_at`.

    Returns (sweep dir, holds dir, run id, launcher Popen, the hold's record from wait_held).
    """
    from test_sweep import plan_rows

    from sweeps.plan import plan_sweep

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    plan_sweep(tok, [2e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(ENV, EHRFM_HOLD_AT=hold_at, EHRFM_HOLD_DIR=str(holds)))
    held = wait_held(holds, rid, hold_at, is_alive=lambda: launcher.poll() is None)
    return out, holds, rid, launcher, held

def test_a_trainer_killed_for_memory_says_so_and_how_to_go_on(tok, tmp_path):
    """The OOM killer's SIGKILL on a local launch: the run said only "trainer killed by signal 9". Now its
    error (result.json, status, collect) names SIGKILL, exit status 137 and the likely cause, and how to
    go on; the advice works: a re-plan with a smaller micro-batch keeps the run ids (it was refused as
    "another training recipe") and --retry-failed then completes the run."""
    from test_sweep import ehrfm, plan_rows

    from ehrfm.io import read_parquet

    out, holds, rid, launcher, held = _held_local_launch(tok, tmp_path, "step-2")
    os.kill(held["pid"], signal.SIGKILL)  # what the OOM killer sends
    stdout, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1 and "1 failed" in stdout, err[-2000:]
    error = json.loads((out / "runs" / rid / "result.json").read_text())["error"]
    assert error.startswith("trainer killed by signal 9 (SIGKILL, exit status 137)"), error
    assert "out-of-memory killer" in error and f"`ehrfm sweep launch {out} --retry-failed`" in error, error
    assert "--train-opt micro_batch_size=N" in error, error
    # killed at step 2 with no checkpoint saved: the retry starts over, and says so (it promised a resume: a helper)
    assert "--retry-failed` trains it again from step 0 (it saved no checkpoint" in error, error
    status = ehrfm("sweep", "status", out)
    assert f"{rid}: failed: {error}" in status.stdout, status.stdout
    assert ehrfm("sweep", "collect", out).returncode == 0
    assert read_parquet(out / "results.parquet").to_pylist()[0]["error"] == error

    replan = ehrfm("sweep", "plan", "--tokens", tok, "--budgets", "2e8", "--sizes", "1", "--context", "64", "--min-steps", "1",
                   "--batch-size", "4", "--train-opt", "micro_batch_size=2", "--out", out)
    assert replan.returncode == 0, replan.stderr
    assert [r["run_id"] for r in plan_rows(out)] == [rid]
    retry = ehrfm("sweep", "launch", out, "--executor", "local", "--retry-failed")
    assert retry.returncode == 0 and "1 completed" in retry.stdout, retry.stderr[-2000:]
    assert json.loads((out / "jobs" / f"{rid}.train.json").read_text())["micro_batch_size"] == 2
    assert json.loads((out / "runs" / rid / "result.json").read_text())["status"] == "completed"


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH)")
def test_scancel_of_a_starting_run_is_never_failed_and_a_plain_relaunch_submits_it(tok, tmp_path):
    """The user `scancel`s a run's job while its trainer starts (imports torch, no handler yet): the run
    must not be `failed` (a plain relaunch would skip it): it is `lost` (nothing saved yet) or
    `interrupted`, and a plain relaunch, without --retry-failed, submits it (README: "On SLURM")."""
    from test_sweep import ehrfm, plan_rows, slurm_answered
    from test_sweep_faults3 import squeue_state, wait_for

    from sweeps.plan import plan_sweep

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    plan_sweep(tok, [2e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    launch = ehrfm("sweep", "launch", out, "--executor", "slurm", "--time", "20", "--cpus-per-task", "1", "--mem", "1G",
                   env={"EHRFM_HOLD_AT": "trainer-start", "EHRFM_HOLD_DIR": str(holds)})
    assert launch.returncode == 0, launch.stderr
    jid = json.loads((out / "jobs" / f"{rid}.json").read_text())["job_id"]
    try:
        wait_held(holds, rid, "trainer-start", timeout_s=300)
        subprocess.run(["scancel", jid], check=True, capture_output=True)
        wait_for(lambda: squeue_state(jid) in ("", "CANCELLED"), f"job {jid} to end")
    finally:
        subprocess.run(["scancel", jid.split("_")[0]], capture_output=True)
    assert not (out / "runs" / rid / "result.json").exists(), (out / "runs" / rid / "result.json").read_text()
    status = slurm_answered(ehrfm, "sweep", "status", out)
    assert f"{rid}: lost: SLURM job {jid} ended" in status.stdout and "a relaunch starts it again" in status.stdout, status.stdout
    dry = ehrfm("sweep", "launch", out, "--executor", "slurm", "--dry-run")
    assert dry.returncode == 0 and rid in dry.stdout and "would submit 1" in dry.stdout.lower(), dry.stdout + dry.stderr


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_run_dir_deleted_or_moved_while_it_trains_stops_at_the_next_log_line(tok, tmp_path, how):
    """A deleted run dir is never recreated. A moved one: before, a SLURM job whose sweep dir was moved trained all
    2,784 steps into the moved dir's metrics.jsonl and only then stopped, at its final write, with nothing kept.
    The lock is checked at every metrics line now."""
    out, holds, moved = tmp_path / "run", tmp_path / "holds", tmp_path / "moved"
    cmd = [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "2", "--d-model", "32", "--n-head", "2",
           "--context", "64", "--tokens", "6000", "--batch-size", "4", "--eval-tokens", "2048", "--log-interval", "1"]
    proc = subprocess.Popen(cmd, env=dict(ENV, EHRFM_HOLD_AT="step-3", EHRFM_HOLD_DIR=str(holds)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_held(holds, "run", "step-3", is_alive=lambda: proc.poll() is None)
    shutil.rmtree(out) if how == "deleted" else out.rename(moved)
    (holds / "run.step-3.release").touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip() == (
        f"ehrfm train: error: run dir {out} was deleted, moved or replaced while this trainer ran (.train.lock is gone): "
        "stopped without writing into it; rerun to train it again"), err[-2000:]
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    if how == "moved":
        steps = [json.loads(line)["step"] for line in (moved / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) <= 3 and 6000 // (4 * 64) > 20, steps  # of 23 steps: none logged after the move


def test_a_sweep_run_dir_deleted_while_its_job_runs_is_lost_and_relaunched(tok, tmp_path):
    from test_sweep import ehrfm


    out, holds, rid, launcher, held = _held_local_launch(tok, tmp_path, "step-2")
    shutil.rmtree(out / "runs" / rid)
    (holds / f"{rid}.step-2.release").touch()
    stdout, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1 and "1 lost" in stdout, stdout + err[-2000:]
    assert not (out / "runs" / rid).exists(), sorted(p.name for p in (out / "runs" / rid).iterdir())
    assert "was deleted, moved or replaced while this trainer ran" in (out / "logs" / f"{rid}.log").read_text()
    again = ehrfm("sweep", "launch", out, "--executor", "local")
    assert again.returncode == 0 and "1 completed" in again.stdout, again.stdout + again.stderr[-2000:]
    assert (out / "runs" / rid / "config.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_ehrfm_train_stopped_before_its_handlers_exits_3_and_resumes(tok, reference, tmp_path, sig):
    out, holds = tmp_path / "run", tmp_path / "holds"
    request_stop()  # a checkpoint at step 1, as a preempted run has
    assert train(TrainConfig(tokens_dir=str(tok), out_dir=str(out), **KW))["status"] == "interrupted"
    step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    cmd = [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), *(f"--{k.replace('_', '-')}={v}" for k, v in KW.items())]
    proc = subprocess.Popen(cmd, env=dict(ENV, EHRFM_HOLD_AT="train-start", EHRFM_HOLD_DIR=str(holds)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_held(holds, "run", "train-start", is_alive=lambda: proc.poll() is None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert err.strip() == "ehrfm train: stopped by a signal before training began; rerun the same command to resume", err
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == step
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "result.json").read_text())["val_loss"] == reference["val_loss"]


def test_a_local_job_killed_by_sigterm_before_its_handlers_is_not_failed(tok, tmp_path):
    from test_sweep import ehrfm


    out, holds, rid, launcher, held = _held_local_launch(tok, tmp_path, "job-start")
    os.kill(held["pid"], signal.SIGTERM)  # the job process alone (`kill`, systemd stopping it), in its start-up
    stdout, err = launcher.communicate(timeout=300)
    assert not (out / "runs" / rid / "result.json").exists(), (out / "runs" / rid / "result.json").read_text()
    assert launcher.returncode == 1 and "1 lost" in stdout, stdout + err[-2000:]
    dry = ehrfm("sweep", "launch", out, "--executor", "local", "--dry-run")  # a plain relaunch submits it
    assert dry.returncode == 0 and rid in dry.stdout and "would submit 1" in dry.stdout.lower(), dry.stdout + dry.stderr


def test_a_killed_wsd_branch_is_said_to_start_again_from_its_trunks_checkpoint(tmp_path):
    """A SIGKILLed run without a checkpoint was said to train again "from step 0"; a wsd branch starts from its
    trunk's stable checkpoint (its branch point), and says so. Its job's outcome, as the launcher records it."""
    from sweeps.job import TrainJob

    sweep = tmp_path / "sweep"
    for sub in ("runs/b", "jobs", "logs"):
        (sweep / sub).mkdir(parents=True)
    outcomes = {}
    for name, train_cfg in (("branch", {"trunk_dir": str(sweep / "runs" / "t"), "schedule": "wsd"}), ("plain", {})):
        config = sweep / "jobs" / f"{name}.train.json"
        config.write_text(json.dumps({"tokens_dir": "x", "out_dir": str(sweep / "runs" / "b"), "tokens": 1, **train_cfg}))
        job = TrainJob(run_id="b", run_dir=str(sweep / "runs" / "b"), log_path=str(sweep / "logs" / "b.log"),
                       record_path=str(sweep / "jobs" / "b.json"), config_path=str(config))
        job._returncode = -signal.SIGKILL
        outcomes[name] = job._outcome(0)["error"]
        (sweep / "runs" / "b" / "result.json").unlink()
    assert "--retry-failed` trains it again from its trunk's stable checkpoint (its branch point) (it saved no " \
           "checkpoint" in outcomes["branch"], outcomes["branch"]
    assert "--retry-failed` trains it again from step 0 (it saved no checkpoint" in outcomes["plain"], outcomes["plain"]
    # a wsd trunk that kept a stable-phase checkpoint for its branches resumes from it (ehrfm.train)
    (sweep / "runs" / "b" / "stable" / "tokens-4096" / "checkpoint").mkdir(parents=True)
    job._returncode = -signal.SIGKILL
    assert "--retry-failed` resumes it from the newest stable-phase checkpoint it kept for its branches;" in job._outcome(0)["error"]


def test_a_waiting_launch_waits_for_the_runs_an_earlier_launch_still_runs(tok, tmp_path):
    """Before: a second launch while the first one's run trained said "submitted 0 jobs: nothing to run (1 running)"
    and exited 0 at once, so `launch --wait && collect && fit` collected the run as running and fitted without it
    (a helper, on SLURM). A waiting launch (local, or SLURM --wait) now waits for it and exits by how it ended; then
    `collect` has it completed."""
    from test_sweep import ehrfm
    from test_sweep_faults3 import wait_for

    out, holds, rid, first, _ = _held_local_launch(tok, tmp_path, "step-1")
    log = tmp_path / "second.out"
    with open(log, "w") as f:
        second = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                                  stdout=f, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        # it is waiting, not done: it says so while the run is still held (its output, not a sleep, tells)
        wait_for(lambda: second.poll() is not None or "waiting for 1 run(s) an earlier launch" in log.read_text(),
                 "the second launch to say it waits", timeout_s=120)
        assert second.poll() is None, log.read_text()
        early = ehrfm("sweep", "collect", out)  # a collect now says the table is partial
        assert early.returncode == 0 and "ehrfm sweep collect: warning: 1 run(s) are still queued or running" in early.stderr, \
            early.stderr
    finally:
        (holds / f"{rid}.step-1.release").touch()
    second.wait(timeout=300)
    said = log.read_text()
    assert second.returncode == 0 and "1 runs finished: 1 completed" in said, said[-3000:]
    first.communicate(timeout=300)
    assert first.returncode == 0
    collect = ehrfm("sweep", "collect", out)
    assert collect.returncode == 0 and "1 completed" in collect.stdout, collect.stdout + collect.stderr


def test_a_job_file_deleted_before_its_job_starts_is_one_line_with_the_remedy(tmp_path, capsys):
    """Before: `rm SWEEP/jobs/<run>.train.json` while its job queued failed the run with a FileNotFoundError
    traceback in its log and no remedy (--retry-failed writes it again)."""
    from sweeps.run_one import main

    job = tmp_path / "sweep" / "jobs" / "C1e9_L1_D32_x.train.json"
    job.parent.mkdir(parents=True)
    assert main([str(job)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ehrfm train: error: job file {job} cannot be read (No such file or directory; deleted or edited after the "
        f"launch?): write it again with `ehrfm sweep launch {tmp_path / 'sweep'} --retry-failed`")
    job.write_text("{not json")
    assert main([str(job)]) == 2
    assert "cannot be read (not valid JSON; deleted or edited after the launch?)" in capsys.readouterr().err
