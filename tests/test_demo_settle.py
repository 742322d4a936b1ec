"""A resumed demo fits a stage only once every run of it has ended (a break-it helper on the MIMIC-IV demo, 2026-12-07).

The demo was killed (kill -9) during its first stage; its rerun's launch skipped the run the killed launch's
trainer still ran, and the branch waiting for it, and the demo fitted the first stage on the runs that had
ended, centring the larger budgets on that law. `_launch_settled` waits for such runs and launches again.
A real launcher, really killed; its trainer held at a named point (ehrfm.fault_points), never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_sweep_faults3 import wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_resumed_stage_waits_for_the_runs_an_earlier_launch_left_running(synth_tokens, tmp_path, monkeypatch):
    from test_sweep import TINY

    import sweeps.launch
    from ehrfm.app.demo import _launch_settled
    from sweeps.launch import LaunchConfig
    from sweeps.plan import plan_sweep
    from sweeps.state import run_states

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    holds.mkdir()
    _, rows, _ = plan_sweep(synth_tokens, out=out, **TINY)
    ids = [r["run_id"] for r in rows]
    assert len(ids) >= 2
    launcher = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local",
                                 "--max-parallel", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ, EHRFM_QUIET="1", OMP_NUM_THREADS="1",
                                                                 EHRFM_HOLD_AT="step-1", EHRFM_HOLD_DIR=str(holds)))
    try:
        wait_for(lambda: any(holds.glob("*.step-1.held")) or launcher.poll() is not None, "a run to hold at step 1")
        (held_file,) = holds.glob("*.step-1.held")
        held = held_file.name.split(".")[0]
        os.kill(launcher.pid, signal.SIGKILL)  # the demo killed: its launcher only, the trainer it started runs on
        launcher.wait(timeout=60)
        before = {rid: s.state for rid, s in run_states(out, ids).items()}
        assert before[held] == "running" and all(before[r] in ("lost", "planned") for r in ids if r != held), before

        real, waited = sweeps.launch.wait_for_runs, []

        def release_then_wait(sweep_dir, run_ids, **kwargs):
            waited.append(sorted(run_ids))
            (holds / f"{held}.step-1.release").touch()  # the earlier trainer goes on only once the demo waits for it
            return real(sweep_dir, run_ids, poll_s=0.2)

        monkeypatch.setattr(sweeps.launch, "wait_for_runs", release_then_wait)
        monkeypatch.delenv("EHRFM_HOLD_AT", raising=False)
        _launch_settled(out, LaunchConfig(executor="local", wait=True, max_parallel=1, retry_failed=True))
        assert waited == [[held]]  # the run the earlier launch left running, waited for
        assert {rid: s.state for rid, s in run_states(out, ids).items()} == dict.fromkeys(ids, "completed")
    finally:
        for f in holds.glob("*.held"):
            (holds / f.name.replace(".held", ".release")).touch()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
