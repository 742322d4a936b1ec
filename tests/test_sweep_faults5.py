"""Sweep and trainer faults of a fifth break-it pass: signals from a terminal, one test per kind.

- Ctrl-C in a terminal running a script that starts `ehrfm sweep launch --executor local` in the
  background: the launcher ignores SIGINT as the shell meant, but submitit's local controller died of
  it and killed the job process while the trainer wrote its checkpoint; the launcher then recorded
  the run `failed` ("failed outside the trainer: submitit INFO ... Loading pickle"), so a plain
  relaunch skipped it. Then (2026-12-02) the run was `interrupted` and resumed by a relaunch. The
  cause was polars' SIGINT hook, which undid the inherited ignore in every process that imported it
  (ehrfm.io.keep_sigint_ignored): now the Ctrl-C reaches no process of the launch, and its runs
  complete as an uninterrupted launch's do.
- SIGHUP (a closed terminal) to `ehrfm train`: the run ended with no checkpoint (every step lost);
  it now checkpoints and exits 3 like SIGTERM (tests/test_train_resume.py, the SIGHUP case).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_sweep import TINY, ehrfm, plan_rows

from ehrfm.fault_points import release, wait_held


def sigint_ignored(pid: int) -> bool:
    """Whether the kernel ignores SIGINT for process `pid` (and so for the processes it execs)."""
    with open(f"/proc/{pid}/status") as f:
        ignored = next(line for line in f if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) >> (signal.SIGINT - 1) & 1)


def test_ctrl_c_to_a_background_launchs_group_leaves_its_runs_going(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    plan_sweep(synth_tokens, out=out, **TINY)
    rids = [r["run_id"] for r in plan_rows(out)]
    reference = tmp_path / "reference"
    plan_sweep(synth_tokens, out=reference, **TINY)
    assert ehrfm("sweep", "launch", reference, "--executor", "local", "--max-parallel", "1").returncode == 0

    # A script's background job: bash starts it with SIGINT ignored. Its own session, so that the
    # test can send the terminal's Ctrl-C (SIGINT to the whole process group) without hitting pytest.
    pid_file = tmp_path / "launcher.pid"
    env = {**os.environ, "EHRFM_QUIET": "1", "EHRFM_HOLD_AT": "step-2", "EHRFM_HOLD_DIR": str(holds)}
    script = (f"{sys.executable} -m ehrfm sweep launch {out} --executor local --max-parallel 1 > {tmp_path / 'launch.log'} 2>&1 "
              f"& echo $! > {pid_file}; wait")
    shell = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)
    try:
        while not any(holds.glob("*.step-2.held")) if holds.exists() else True:
            assert shell.poll() is None, (tmp_path / "launch.log").read_text()[-2000:]
            time.sleep(0.05)
        held = next(holds.glob("*.step-2.held")).name.split(".")[0]
        trainer = wait_held(holds, held, "step-2")["pid"]
        launcher = int(pid_file.read_text())
        # Every process of the launch ignores SIGINT: the launcher, submitit's controller and job
        # process, the trainer (before: each one that imported polars caught it, so each it exec'd died of it).
        group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == shell.pid and int(p) != shell.pid]
        assert launcher in group and trainer in group and len(group) >= 4, group
        assert all(sigint_ignored(pid) for pid in group), {pid: sigint_ignored(pid) for pid in group}
        os.killpg(shell.pid, signal.SIGINT)
        for rid in rids:
            release(holds, rid, "step-2")
        deadline = time.monotonic() + 600  # a hang guard only
        while os.path.exists(f"/proc/{launcher}") and time.monotonic() < deadline:
            time.sleep(0.2)
        shell.wait(timeout=60)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    log = (tmp_path / "launch.log").read_text()
    status = ehrfm("sweep", "status", out)
    assert f"{len(rids)} runs: {len(rids)} completed" in status.stdout, status.stdout + log[-2000:]
    for rid in rids:  # as the uninterrupted launch's, bit for bit
        ran = json.loads((out / "runs" / rid / "result.json").read_text())
        assert ran["val_loss"] == json.loads((reference / "runs" / rid / "result.json").read_text())["val_loss"], rid


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.parametrize("ignored", [False, True])
def test_sighup_ignored_under_nohup_stays_ignored_by_the_trainer(tok, tmp_path, ignored):
    """Under nohup (SIGHUP ignored) a closed terminal must not stop the run; otherwise SIGHUP stops it as
    SIGTERM does: checkpoint, exit 3."""
    from test_train_resume import run_cmd

    out, holds = tmp_path / "run", tmp_path / "holds"
    env = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1", "EHRFM_HOLD_AT": "step-2", "EHRFM_HOLD_DIR": str(holds)}
    proc = subprocess.Popen(run_cmd(tok, out, tokens=4_000), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL))
    wait_held(holds, out.name, "step-2", is_alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGHUP)
    if ignored:  # a SIGHUP that were not ignored would set the stop flag: exit 3 at the next step check
        release(holds, out.name, "step-2")
    _, err = proc.communicate(timeout=300)
    if ignored:
        assert proc.returncode == 0 and json.loads((out / "result.json").read_text())["status"] == "completed", err.decode()[-800:]
    else:
        assert proc.returncode == 3 and not (out / "result.json").exists(), err.decode()[-800:]
        assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
