"""Sweep and trainer faults of a fifth break-it pass: signals from a terminal, one test per kind.

- Ctrl-C in a terminal running a script that starts `ehrfm sweep launch --executor local` in the
  background: the launcher ignores SIGINT as the shell meant, but submitit's local controller died of
  it and killed the job process while the trainer wrote its checkpoint; the launcher then recorded
  the run `failed` ("failed outside the trainer: submitit INFO ... Loading pickle"), so a plain
  relaunch skipped it. Now the run is `interrupted` and a plain relaunch resumes it bit-identically.
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


def test_ctrl_c_to_a_background_launchs_group_interrupts_its_run_and_a_relaunch_resumes_it(synth_tokens, tmp_path):
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
        wait_held(holds, held, "step-2")
        for rid in rids:  # the runs after it train through
            if rid != held:
                release(holds, rid, "step-2")
        os.killpg(shell.pid, signal.SIGINT)
        launcher = int(pid_file.read_text())
        deadline = time.monotonic() + 600  # a hang guard only
        while os.path.exists(f"/proc/{launcher}") and time.monotonic() < deadline:
            time.sleep(0.2)
        shell.wait(timeout=60)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    log = (tmp_path / "launch.log").read_text()
    assert not (out / "runs" / held / "result.json").exists(), log[-2000:]  # before: failed, outside the trainer
    assert json.loads((out / "runs" / held / "checkpoint" / "state.json").read_text())["step"] == 2
    status = ehrfm("sweep", "status", out)
    assert f"{len(rids)} runs: {len(rids) - 1} completed, 1 interrupted" in status.stdout, status.stdout + log[-2000:]

    again = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "1")  # plain: no --retry-failed
    assert again.returncode == 0 and "ran 1 jobs locally" in again.stdout, again.stdout + again.stderr[-2000:]
    resumed = json.loads((out / "runs" / held / "result.json").read_text())
    whole = json.loads((reference / "runs" / held / "result.json").read_text())
    assert resumed["status"] == "completed" and resumed["val_loss"] == whole["val_loss"]


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
